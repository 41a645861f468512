"""
L{izreg.service.proxyheader} in-process, over real sockets: a plain site behind a C{haproxy:} endpoint counts
the address its PROXY header names (v1 and v2, the header split over reads), the proxy's only until then;
a connection whose header never comes, or is not one, is closed and gives its count back.
"""

from __future__ import annotations

import select
import socket
import struct

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from izreg.http.bodies import RegistrySite
from izreg.http.limits import ConnectionLimits
from izreg.service.proxyheader import ProxyHeaderEndpoint, ProxyHeaders
from tests.service.test_admission import closed_by_server, until

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(source: str) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 5000)
    return V2 + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


async def listening(timeout: float = 5.0):
    limits = ConnectionLimits(100, 2)
    headers = ProxyHeaders(reactor, limits, timeout=timeout)
    endpoint = ProxyHeaderEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), headers)
    port = await endpoint.listen(RegistrySite(None, None, connections=limits))
    return limits, headers, port, ("127.0.0.1", port.getHost().port)


async def answer(sock: socket.socket) -> bytes:
    """The first bytes the server answers (waited for on the reactor, which serves them)."""
    await until(lambda: select.select([sock], [], [], 0)[0], "an answer")
    return sock.recv(100)


@pytest_twisted.ensureDeferred
async def test_the_site_counts_the_address_the_header_names_not_the_proxy():
    limits, headers, port, address = await listening()
    clients = []
    try:
        split = socket.create_connection(address)
        clients.append(split)
        split.sendall(v2_header("192.0.2.5")[:10])  # fewer than v2's 16 fixed bytes: Twisted's own wrapper closes
        await until(lambda: [len(p._buffer) for p in headers.watched] == [10], "its first bytes read")
        assert limits.by_address == {"127.0.0.1": 1}  # the proxy's, until the header is in
        split.sendall(v2_header("192.0.2.5")[10:])
        await until(lambda: limits.by_address == {"192.0.2.5": 1}, "counted as the client its header names")
        v1 = socket.create_connection(address)
        clients.append(v1)
        v1.sendall(b"PROXY TCP4 192.0.2.6 127.0.0.1 40000 5000\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(v1)).startswith(b"HTTP/1.1 503")  # the site's (no API here): the request after the header
        assert limits.by_address == {"192.0.2.5": 1, "192.0.2.6": 1}
        for _ in range(2):  # the cap of 2 is 192.0.2.5's own
            clients.append(socket.create_connection(address))
            clients[-1].sendall(v2_header("192.0.2.5") + b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(clients[-1])).startswith(b"HTTP/1.1 429")
        assert (await answer(clients[-2])).startswith(b"HTTP/1.1 503")
    finally:
        for sock in clients:
            sock.close()
        await until(lambda: limits.total == 0 and not headers.watched, "every count given back")
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_header_or_not_a_header_is_closed_and_gives_its_count_back():
    limits, headers, port, address = await listening(timeout=0.5)
    silent, wrong, huge, long_v1 = (socket.create_connection(address) for _ in range(4))
    try:
        wrong.sendall(b"GET / HTTP/1.1\r\n\r\n")
        huge.sendall(V2 + bytes([0x21, 0x11]) + struct.pack("!H", 60000))  # a 60 KB header: never buffered
        long_v1.sendall(b"PROXY TCP4 " + b"1" * 200)  # no CRLF within a v1 line's 107 bytes
        await until(lambda: all(map(closed_by_server, (wrong, huge, long_v1))), "not a header: closed at once")
        assert headers.timed_out == 0
        await until(lambda: closed_by_server(silent), "no header: closed after its timeout")
        assert headers.timed_out == 1
        await until(lambda: limits.total == 0 and not headers.watched, "every count given back")
    finally:
        for sock in (silent, wrong, huge, long_v1):
            sock.close()
        await port.stopListening()

