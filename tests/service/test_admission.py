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



class _Stub:
    """A gate as L{HandshakeAdmission} sees it: an address, started or waiting."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.state = "new"

    def _wait(self) -> None:
        self.state = "waiting"

    def _start(self) -> None:
        self.state = "shaking"

    def _expired(self) -> None:
        self.state = "expired"


def test_one_address_cannot_hold_every_slot():
    """
    A client that fills the slots with silent handshakes (and reconnects as they time out) holds
    at most half of them: another address's connection gets a slot at once, not after all of its.
    """
    from twisted.internet.task import Clock

    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    attacker = [_Stub("192.0.2.1") for _ in range(20)]
    for gate in attacker:
        admission._arrived(gate)
    assert [g.state for g in attacker[:3]] == ["shaking", "shaking", "waiting"] and admission.in_progress == 2
    device = _Stub("198.51.100.7")
    admission._arrived(device)
    assert device.state == "shaking"
    # a slot of the attacker's frees: its next connection, in arrival order, gets it
    admission._release(attacker[0])
    assert attacker[2].state == "shaking" and attacker[3].state == "waiting"
    assert admission.holding == {"192.0.2.1": 2, "198.51.100.7": 1}
    # every slot taken: a freed one goes to the first waiting connection whose address is under its share
    others = [_Stub("203.0.113.1"), _Stub("203.0.113.2")]
    for gate in others:
        admission._arrived(gate)
    assert [g.state for g in others] == ["shaking", "waiting"]
    admission._release(device)
    assert others[1].state == "shaking" and attacker[3].state == "waiting"
    assert admission.in_progress == 4 and admission.holding == {"192.0.2.1": 2, "203.0.113.1": 1, "203.0.113.2": 1}
    # the attacker's connections gone, its waiting ones are admitted in order as its share allows
    admission._release(attacker[1])
    admission._release(attacker[2])
    assert [g.state for g in attacker[3:6]] == ["shaking", "shaking", "waiting"]
