"""
A real Docker engine for end-to-end tests: our own ``dockerd`` (Debian's
``docker.io``) with the vfs storage driver, no iptables and no bridge, on a
socket of its own under a temp dir, and its containerd for ``ctr``.

    engine = DockerEngine(tmp_dir)
    engine.start()
    engine.docker("login", host, "-u", "KEY", "--password-stdin", input=key)
    engine.ctr("-n", "test", "images", "pull", "--plain-http", "--user", f"KEY:{key}", ref)
    engine.stop()

``docker`` runs ``/usr/bin/docker -H unix://SOCK`` (the Debian CLI: a newer
one may sit first on PATH) with ``DOCKER_CONFIG`` in the engine's temp dir,
so logins never touch the user's ``~/.docker``. Docker treats every registry
on 127.0.0.0/8 as insecure (plain HTTP) and then ignores ``certs.d``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

DOCKER = "/usr/bin/docker"
CTR = "/usr/bin/ctr"
#: seconds to wait for the daemon to answer after start
START_TIMEOUT = 90.0


def dockerd_path() -> str | None:
    for candidate in (shutil.which("dockerd"), "/usr/sbin/dockerd", "/usr/bin/dockerd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class DockerEngineError(AssertionError):
    pass


class DockerEngine:
    def __init__(self, tmpdir) -> None:
        self.root = os.fspath(tmpdir)
        self.data_root = os.path.join(self.root, "data")
        # unix socket paths are limited to 108 bytes: keep the exec root short
        self.exec_root = os.path.join(self.root, "x")
        self.socket = os.path.join(self.root, "docker.sock")
        self.pidfile = os.path.join(self.root, "dockerd.pid")
        self.config = os.path.join(self.root, "docker-config")
        self.log_path = os.path.join(self.root, "dockerd.log")
        self.containerd_socket = os.path.join(self.exec_root, "containerd", "containerd.sock")
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        dockerd = dockerd_path()
        if dockerd is None:
            raise DockerEngineError("dockerd is not installed (apt-get install docker.io)")
        for path in (self.data_root, self.exec_root, self.config):
            os.makedirs(path, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
             "--data-root", self.data_root, "--exec-root", self.exec_root, "--pidfile", self.pidfile,
             "-H", f"unix://{self.socket}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # an external process: poll its readiness with a deadline
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise DockerEngineError(f"dockerd exited with {self._proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(self.socket) and self.docker("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DockerEngineError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def docker(self, *args: str, input: str | None = None, env: dict | None = None, check: bool = False,
               timeout: float = 300) -> subprocess.CompletedProcess:
        """C{docker -H unix://SOCK ARGS} with the engine's DOCKER_CONFIG; the completed process (text)."""
        full_env = dict(os.environ, DOCKER_CONFIG=self.config, DOCKER_BUILDKIT="0")
        full_env.update(env or {})
        return subprocess.run([DOCKER, "-H", f"unix://{self.socket}", *args], input=input, env=full_env,
                              capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """containerd's C{ctr --address SOCK ARGS} on the engine's containerd; output as bytes (content get)."""
        return subprocess.run([CTR, "--address", self.containerd_socket, *args], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<DockerEngine {self.socket} running={self._proc is not None}>"
