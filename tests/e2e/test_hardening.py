"""
Hardening, end to end on the real ``twistd izreg`` process: what
unauthenticated clients can cost the server.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time

import pytest

from tests.helpers.ociclient import OCIClient, expect, sha256_digest

MIB = 1024 * 1024
#: connections in the attack (hundreds), per kind of request below
PER_KIND = 100


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "izreg.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def izreg_registry(start_registry, tmp_path):
    def start(config: str = ""):
        registry = start_registry("--config", _config(tmp_path, config))
        if registry.backend != "izreg":
            pytest.skip("izreg-specific behaviour")
        return registry
    return start


def test_slow_unauthenticated_large_bodies_cost_no_memory(izreg_registry, tmp_path):
    """
    Hundreds of unauthenticated connections each start a large body (a 4 MiB
    manifest, a blob, a body for a path that is no route), send a first MiB
    fast and then trickle; the server's RSS stays under 150 MiB and an
    authenticated pull works all along.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * PER_KIND + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    registry = izreg_registry("[connections]\nmax_connections = 2000\nmax_per_address = 0\n")
    account = registry.account
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{account}/hardening/app"
    layer = os.urandom(256 * 1024)
    config = b'{"architecture":"amd64","os":"linux"}'
    for blob in (layer, config):
        expect(client.push_blob_monolithic(repo, blob), 201)
    manifest = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},'
        b'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}'
        % (sha256_digest(config).encode(), len(config), sha256_digest(layer).encode(), len(layer))
    )
    expect(client.put_manifest(repo, "v1", manifest), 201)
    before = _rss(registry.pid)

    heads = [
        b"PUT /v2/%s/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (account.encode(), 4 * MIB),
        b"POST /v2/%s/app/blobs/uploads/?digest=sha256:%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % (account.encode(), b"0" * 64, 64 * MIB),
        b"PUT /no/such/route HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (64 * MIB),
        b"PUT /v2/%s/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic S0VZOm5vcGU=\r\n"
        b"Content-Length: %d\r\n\r\n" % (account.encode(), 4 * MIB),
    ]
    sockets = []
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], _rss(registry.pid))
            except (OSError, AssertionError):
                return
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers: dict[int, bytes] = {}
    try:
        first = b"{" * MIB
        for i in range(PER_KIND):
            for head in heads:
                s = socket.create_connection(("127.0.0.1", registry.port), timeout=10)
                s.setblocking(False)
                sockets.append(s)
                _send(s, head + first)
        # trickle for a while, as an attacker keeping its connections alive
        pulls = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            for s in sockets:
                _send(s, b"x")
                _read(s, answers)
            expect(client.get_manifest(repo, "v1"), 200)
            assert client.get_blob(repo, sha256_digest(layer)).content == layer
            pulls += 1
            time.sleep(0.3)
    finally:
        stop.set()
        sampler.join(5)
        for s in sockets:
            s.close()
    assert pulls >= 3
    statuses = {answer.split(b" ", 2)[1] for answer in answers.values()}
    assert statuses <= {b"401", b"404", b"429"} and len(answers) == len(sockets), statuses
    print(f"server RSS: {before / MIB:.0f} MiB before, {peak[0] / MIB:.0f} MiB at most during the attack")
    assert peak[0] < 150 * MIB, f"RSS went from {before // MIB} MiB to {peak[0] // MIB} MiB"


def _send(s: socket.socket, data: bytes) -> None:
    try:
        s.send(data)
    except (BlockingIOError, OSError):
        pass


def _read(s: socket.socket, answers: dict[int, bytes]) -> None:
    try:
        data = s.recv(65536)
    except (BlockingIOError, OSError):
        return
    if data:
        answers[s.fileno()] = answers.get(s.fileno(), b"") + data


def test_a_slow_authenticated_body_is_cut_off(izreg_registry):
    """Authenticated or not, a body that trickles is closed once the grace time is over."""
    registry = izreg_registry("[connections]\nbody_grace = 1\nbody_min_rate = 1000\n")
    head = (b"PUT /v2/%s/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n"
            b"Content-Length: 100000\r\n\r\n{" % (registry.account.encode(), _basic(registry.creds)))
    mark = registry.log_mark()
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as s:
        s.sendall(head)
        answer = b""
        while True:
            data = s.recv(65536)  # the server closes; a timeout fails the test
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 408 ")
    registry.wait_for_log(r"closed a connection from 127\.0\.0\.1: the request body came slower", mark)


def _basic(creds: str) -> bytes:
    import base64

    return base64.b64encode(creds.encode())
