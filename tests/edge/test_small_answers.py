"""
Every answer the edge makes itself, small ones too (``/healthz``, ``/v2/``,
its errors, a manifest or blob HEAD), says its length: a Content-Length,
never a chunked body (or, for a HEAD, no length at all). The real edge API
(L{izreg.edge.proxy.EdgeAPI}) on its site on a loopback port, before a real
HTTP server standing in for the registry (tests/edge/test_metrics.py's: a
manifest and its layer, a 404 for anything else), asked with raw HTTP/1.1.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from izreg.core.digest import Digest
from izreg.edge.proxy import EdgeSite

from tests.edge.test_metrics import ACCOUNT, LAYER_DIGEST, MANIFEST_DIGEST, REPO, stand_in_edge


def ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request; (status, headers by lower-case name, the bytes after the head until closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest_twisted.async_yield_fixture
async def edge(tmp_path):
    registry_port, upstream, cache, reporter, api = await stand_in_edge(tmp_path)
    edge_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(EdgeSite(api.resource()))
    try:
        yield edge_port.getHost().port
    finally:
        await reporter.flush_writes()
        await upstream.close()
        await edge_port.stopListening()
        await registry_port.stopListening()
        cache.close()


PATHS = [
    "/", "/healthz", "/v2/", "/v2", f"/v2/{REPO}/manifests/v1", f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}",
    f"/v2/{REPO}/blobs/{LAYER_DIGEST}", f"/v2/{REPO}/tags/list", f"/v2/{ACCOUNT}/gone/manifests/v1",
    f"/v2/{REPO}/blobs/{str(Digest.of(b'other'))}", f"/v2/{REPO}/blobs/uploads/x", "/nothing", "/v2/_catalog",
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest_twisted.ensureDeferred
async def test_every_answer_has_a_content_length(edge, method):
    unsaid = []
    for _ in range(2):  # a miss, then a hit
        for path in PATHS:
            status, headers, body = await deferToThread(ask, edge, method, path)
            length = headers.get("content-length")
            if "transfer-encoding" in headers or length is None or method != "HEAD" and len(body) != int(length):
                unsaid.append((path, status, headers.get("transfer-encoding"), length, len(body)))
    assert unsaid == []


@pytest_twisted.ensureDeferred
async def test_the_root_says_what_the_edge_is(edge):
    """Opened in a browser, C{/} says how to pull through the edge and where its health is (OCI JSON 404 before)."""
    status, headers, body = await deferToThread(ask, edge, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "izreg edge" in text and "docker pull containers.local:8080/<account_id>/<app>:<tag>" in text
    assert "/healthz" in text
    assert "127.0.0.1" not in text and "/tmp" not in text  # nothing of its own: the registry's address, its cache
    status, headers, body = await deferToThread(ask, edge, "HEAD", "/")
    assert status == 200 and int(headers["content-length"]) == len(text.encode()) and body == b""
    status, headers, body = await deferToThread(ask, edge, "POST", "/")
    assert status == 405 and headers["content-type"] == "application/json"
