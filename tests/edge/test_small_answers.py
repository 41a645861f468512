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


def ask(port: int, method: str, path: str, host: str = "localhost",
        address: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request; (status, headers by lower-case name, the bytes after the head until closed)."""
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
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
        await close_edge(registry_port, upstream, cache, reporter, edge_port)


async def close_edge(registry_port, upstream, cache, reporter, edge_port=None) -> None:
    """Stop what L{stand_in_edge} and the edge's listener started."""
    await reporter.flush_writes()
    await upstream.close()
    if edge_port is not None:
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
    status, headers, body = await deferToThread(ask, edge, "GET", "/", f"containers.local:{edge}")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert headers["x-content-type-options"] == "nosniff"
    text = body.decode()
    assert "izreg edge" in text and f"docker pull containers.local:{edge}/<account_id>/<app>:<tag>" in text
    assert "/healthz" in text
    assert "/tmp" not in text  # nothing of its own but where it serves: not the registry's address, not its cache
    status, headers, body = await deferToThread(ask, edge, "HEAD", "/", f"containers.local:{edge}")
    assert status == 200 and int(headers["content-length"]) == len(text.encode()) and body == b""
    status, headers, body = await deferToThread(ask, edge, "POST", "/")
    assert status == 405 and headers["content-type"] == "application/json"


def pull_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("Pull through it:")]
    return line.split("docker pull ", 1)[1].split("/<account_id>", 1)[0]


HOSTS = [  # the request's Host -> the address C{/} says to pull by ({port}: the edge's)
    ("localhost:{port}", "localhost:{port}"),
    ("Containers.Local:{port}", "containers.local:{port}"),
    ("127.0.0.1:{port}", "127.0.0.1:{port}"),
    (f"{socket.gethostname()}:{{port}}", f"{socket.gethostname().lower()}:{{port}}"),
    # not this edge's, or not its port: the address and port the request came to
    ("localhost", "127.0.0.1:{port}"),
    ("containers.local:1", "127.0.0.1:{port}"),
    ("containers.local:", "127.0.0.1:{port}"),
    ("evil.example:{port}", "127.0.0.1:{port}"),
    ("127.0.0.2:{port}", "127.0.0.1:{port}"),
    ("[::1]:{port}", "127.0.0.1:{port}"),
    ("%3Cscript%3E:{port}", "127.0.0.1:{port}"),
    ("a'b(c)*d:{port}", "127.0.0.1:{port}"),
]


@pytest_twisted.ensureDeferred
async def test_the_root_names_the_address_the_edge_was_reached_on(edge):
    """
    Not always containers.local:8080: the request's Host when it names this edge (its own names, the address the
    request came to, and its port), else the address and port the request came to; nothing else of the Host.
    """
    said = {}
    for host, _ in HOSTS:
        status, headers, body = await deferToThread(ask, edge, "GET", "/", host.format(port=edge))
        assert status == 200 and int(headers["content-length"]) == len(body)
        said[host] = pull_line(body.decode())
        assert "evil" not in body.decode() and "script" not in body.decode() and "'" not in body.decode()
    assert said == {host: named.format(port=edge) for host, named in HOSTS}
    # an absolute-form target's host is the request's Host (RFC 9112 3.2.2): the same rules
    status, _, body = await deferToThread(ask, edge, "GET", f"http://containers.local:{edge}/", "x")
    assert (status, pull_line(body.decode())) == (200, f"containers.local:{edge}")


@pytest.mark.parametrize("interface, reach", [("0.0.0.0", "127.0.0.1"), ("::1", "::1")])
@pytest_twisted.ensureDeferred
async def test_the_root_names_the_address_a_wildcard_or_ipv6_listener_was_reached_on(tmp_path, interface, reach):
    """A listener on every address says the one the client reached; an IPv6 one says it in brackets."""
    from twisted.internet.endpoints import TCP6ServerEndpoint

    if ":" in interface and not socket.has_ipv6:
        pytest.skip("no IPv6")
    registry_port, upstream, cache, reporter, api = await stand_in_edge(tmp_path)
    endpoint = (TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint)(reactor, 0, interface=interface)
    try:
        listening = await endpoint.listen(EdgeSite(api.resource()))
    except Exception as e:  # no IPv6 loopback here
        await close_edge(registry_port, upstream, cache, reporter)
        pytest.skip(f"cannot listen on {interface}: {e}")
    port = listening.getHost().port
    try:
        _, _, body = await deferToThread(ask, port, "GET", "/", "somewhere.example", reach)
        assert pull_line(body.decode()) == (f"[{reach}]:{port}" if ":" in reach else f"{reach}:{port}")
        _, _, body = await deferToThread(ask, port, "GET", "/", f"[{reach}]:{port}" if ":" in reach else
                                         f"{reach}:{port}", reach)
        assert pull_line(body.decode()) == (f"[{reach}]:{port}" if ":" in reach else f"{reach}:{port}")
    finally:
        await close_edge(registry_port, upstream, cache, reporter, listening)
