"""
L{HandshakeAdmission} in-process, over real sockets: a connection that waits for a slot and
is closed meanwhile gives its place in the connection caps back; a silent one in a slot is
closed after the handshake timeout and its slot goes to the next.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater

from izreg.http.bodies import RegistrySite
from izreg.http.limits import ConnectionLimits
from izreg.service.tls import ServerTLS, TLSEndpoint
from izreg.service.tls.admission import HandshakeAdmission
from tests.service.test_tls import Certs


async def until(condition, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{what}: not true after {timeout} s")


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest_twisted.ensureDeferred
async def test_waiting_connections_time_out_and_give_their_count_back(tmp_path):
    limits = ConnectionLimits(100, 0)
    site = RegistrySite(None, None, connections=limits)
    admission = HandshakeAdmission(reactor, 1, handshake_timeout=1.0, wait_timeout=0.3)
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), ServerTLS(Certs(tmp_path).files()),
                           clock=reactor, admission=admission)
    port = await endpoint.listen(site)
    address = ("127.0.0.1", port.getHost().port)
    clients = [socket.create_connection(address) for _ in range(3)]
    try:
        await until(lambda: limits.total == 3, "three connections counted")
        assert admission.in_progress == 1 and len(admission.waiting) == 2
        # the two waiting time out first (0.3 s), giving their count back without ever having been TLS
        await until(lambda: limits.total == 1 and not admission.waiting, "the waiting ones closed")
        assert admission.in_progress == 1 and admission.timed_out == 2
        assert [closed_by_server(c) for c in clients[1:]] == [True, True]
        # the silent one in the slot: closed after the handshake timeout
        await until(lambda: limits.total == 0 and admission.in_progress == 0, "the silent one closed")
        assert admission.timed_out == 3
    finally:
        for c in clients:
            c.close()
        await port.stopListening()
