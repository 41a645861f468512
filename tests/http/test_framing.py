"""
Request framing that a proxy in front (haproxy) and izreg could read two ways
(request smuggling) is refused with a 400 and the connection closed (RFC 9112
6.1, 6.3, 5.2: izreg.http.bodies.RegistryChannel): a Transfer-Encoding that is
not chunked alone, one with a Content-Length, one on HTTP/1.0, a header folded
over two lines (obs-fold). On the in-process server over a real loopback
connection; each answer is an OCI error, and nothing sent after the refused
head is answered.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from izreg.http import bodies
from tests.http.conftest import start_server
from tests.http.helpers import parse_raw
from tests.http.test_bodies import connect

pytestmark = pytest.mark.socket

#: a whole second request, which must never be answered when it comes after a refused head
SMUGGLED = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    started = await start_server(tmp_path, socket=True, max_connections_per_address=0)
    yield started
    await started.service.stopService()


def head(*lines: str, version: str = "HTTP/1.1", method: str = "POST") -> bytes:
    return (f"{method} /v2/a/b/blobs/uploads/ {version}\r\nHost: localhost\r\n"
            + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


async def refused(server, request: bytes) -> tuple[dict, dict]:
    """The one answer to C{request}, once the server has closed the connection (headers, the error)."""
    client = await connect(server, request)
    received = await client.closed.addTimeout(20, reactor)  # (after the refusal's linger, 2 s)
    assert received.count(b"HTTP/1.1 ") == 1, received  # nothing after the refused head is answered
    status, headers, body = parse_raw(received)
    assert status == 400, received
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    errors = json.loads(body)["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}
    return headers, errors[0]


@pytest.mark.parametrize(
    "request_, says",
    [
        # Twisted ignored "identity": no body, and what follows was read as the next request
        (head("Transfer-Encoding: identity") + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: identity", "Content-Length: 38") + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: IDENTITY", method="GET") + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n" + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: chunked, identity") + b"0\r\n\r\n" + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED, "not chunked"),
        (head("Transfer-Encoding: chunked", "Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED, "both"),
        (head("Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED, "both"),
        (head("Transfer-Encoding: chunked", version="HTTP/1.0") + b"0\r\n\r\n" + SMUGGLED, "HTTP/1.0"),
    ],
    ids=["identity", "identity-length", "identity-get", "gzip-chunked", "chunked-identity", "chunked-twice",
         "chunked-then-length", "length-then-chunked", "http10-chunked"],
)
@pytest_twisted.ensureDeferred
async def test_a_transfer_encoding_that_leaves_the_length_uncertain_is_400_and_closed(server, request_, says):
    _, error = await refused(server, request_)
    assert "Transfer-Encoding" in error["message"] and says in error["message"], error


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded", b"  "])
@pytest_twisted.ensureDeferred
async def test_a_folded_header_line_is_400_and_closed(server, fold):
    request = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Note: one\r\n" + fold + b"\r\n\r\n" + SMUGGLED
    _, error = await refused(server, request)
    assert "obs-fold" in error["message"], error


@pytest_twisted.ensureDeferred
async def test_chunked_alone_is_still_read(server):
    """The framing izreg takes: a chunked body (here a GET's, dropped), then the next request on the connection."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    client = await connect(server, request + request.replace(b"chunked\r\n", b"chunked\r\nConnection: close\r\n"))
    received = await client.closed.addTimeout(20, reactor)
    assert received.count(b"HTTP/1.1 200 ") == 2, received


class _Counted:
    """A compiled pattern that counts its C{fullmatch} calls."""

    def __init__(self, pattern) -> None:
        self.pattern, self.calls = pattern, 0

    def fullmatch(self, text):
        self.calls += 1
        return self.pattern.fullmatch(text)


@pytest_twisted.ensureDeferred
async def test_the_host_header_is_checked_once_a_request(server, monkeypatch):
    counted = _Counted(bodies._HOST_SYNTAX)
    monkeypatch.setattr(bodies, "_HOST_SYNTAX", counted)
    client = await connect(server, b"GET /v2/ HTTP/1.1\r\nHost: registry.example:5000\r\n\r\n")
    answer = await client.done.addTimeout(20, reactor)
    client.transport.abortConnection()
    assert parse_raw(answer)[0] == 401
    assert counted.calls == 1


@pytest_twisted.ensureDeferred
async def test_a_chunked_bodys_trailer_past_16_kib_is_400_and_closed(server):
    """
    A trailer is held whole until its end, as headers are: at most as much as the headers (16 KiB), not
    Twisted's 64 KiB, on any connection, before anyone is known (here a GET /healthz, open to anyone).
    """
    trailer = b"".join(b"X-Note-%d: %s\r\n" % (i, b"t" * 1000) for i in range(17))
    request = (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n" + SMUGGLED)
    _, error = await refused(server, request)
    assert error["code"] == "UNSUPPORTED", error
