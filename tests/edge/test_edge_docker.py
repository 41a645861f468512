"""
The clients a gateway runs, pulling through the edge without credentials:
the Docker engine (``docker pull 127.0.0.1:PORT/<account>/<app>:<tag>``)
and containerd's ``ctr images pull --plain-http``.

Uses the shared C{docker_engine} fixture (tests/helpers/dockerd.py) when it
is there; until then a minimal engine of its own (dockerd with vfs, no
networking, on private sockets), stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.edge, pytest.mark.docker]

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
CTR = "/usr/bin/ctr"


class _Engine:
    """dockerd on private sockets (the shape of tests/helpers/dockerd.py's DockerEngine)."""

    def __init__(self, tmp) -> None:
        # unix socket paths must stay short
        self.root = str(tmp)
        self.sock = os.path.join(self.root, "d.sock")
        self.exec_root = os.path.join(self.root, "x")
        self.config = os.path.join(self.root, "cfg")
        self.proc = None

    def start(self) -> None:
        os.makedirs(self.config, exist_ok=True)
        self.log = open(os.path.join(self.root, "dockerd.log"), "w")
        self.proc = subprocess.Popen(
            [DOCKERD, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
             "--data-root", os.path.join(self.root, "data"), "--exec-root", self.exec_root,
             "--pidfile", os.path.join(self.root, "dockerd.pid"), "-H", f"unix://{self.sock}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited: {open(self.log.name).read()[-2000:]}")
            if os.path.exists(self.sock) and self.docker("info").returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("dockerd did not answer within 90 s")

    def docker(self, *args, input=None, env=None) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], input=input, capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, DOCKER_CONFIG=self.config, **(env or {})))

    def ctr(self, *args) -> subprocess.CompletedProcess:
        address = os.path.join(self.exec_root, "containerd", "containerd.sock")
        return subprocess.run([CTR, "--address", address, *args], capture_output=True, timeout=300)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def engine(request, tmp_path_factory):
    try:
        shared = request.getfixturevalue("docker_engine")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    if not os.path.exists(DOCKERD):
        if os.environ.get("CI"):
            pytest.fail("dockerd is missing (apt-get install -y docker.io)")
        pytest.skip("dockerd is not installed")
    import tempfile

    tmp = tempfile.mkdtemp(prefix="izd", dir="/tmp")
    engine = _Engine(tmp)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_docker_and_ctr_pull_through_the_edge(stack, engine):
    repo = stack.repo()
    image = stack.push(repo, seed=61)
    ref = f"{stack.edge.host}/{repo}:v1"

    pulled = engine.docker("pull", ref)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    digests = engine.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    assert f"{stack.edge.host}/{repo}@{image['manifest_digest']}" in digests.stdout
    by_digest = engine.docker("pull", f"{stack.edge.host}/{repo}@{image['manifest_digest']}")
    assert by_digest.returncode == 0, by_digest.stderr

    namespace = "edge-e2e"
    proc = engine.ctr("-n", namespace, "images", "pull", "--plain-http", ref)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = engine.ctr("-n", namespace, "images", "ls")
    assert image["manifest_digest"].encode() in listed.stdout
    for digest, data in image["blobs"].items():
        content = engine.ctr("-n", namespace, "content", "get", digest)
        assert content.returncode == 0 and content.stdout == data, digest
