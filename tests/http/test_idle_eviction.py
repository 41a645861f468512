"""
At C{[connections] max_connections}, an idle connection is closed for a newcomer (L{IdleConnections}):
on the in-process server over loopback (plain HTTP, the real site and authentication), and the
order and bounds of the choice alone. The TLS side (devices, handshakes) against a real
C{twistd izreg}: tests/e2e/test_tls_admission.py.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from izreg.core.errors import ErrorCode
from izreg.http.limits import (AUTHENTICATED, EVICT_SCAN, NEW, UNAUTHENTICATED, ConnectionLimits, IdleConnections,
                               sending)
from tests.http.authhelpers import UPLOAD, Keys, basic, push_blob, uploading
from tests.http.conftest import start_server
from tests.http.helpers import parse_raw
from tests.http.test_bodies import connect
from tests.service.test_admission import until

pytestmark = pytest.mark.socket

#: a request line and header lines, never the blank line after them (slowloris): not a request in progress,
#: the connection stays idle in its tier (header_timeout, 30 s, would close it)
TRICKLING = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\n"


def get_v2(authorization: str = "") -> bytes:
    extra = f"Authorization: {authorization}\r\n" if authorization else ""
    return f"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


async def close_in_order(server, keys: Keys, order, held: list) -> None:
    """
    Newcomers, each a request in progress (L{uploading}), close C{order}'s clients one each, in that order
    (one a tier: C{(client, its tier)}); the table stays full.
    """
    limits = server.service.site.connections
    idle = limits.idle
    left = len(idle)
    for n, (closed, tier) in enumerate(order, 1):
        newcomer = await connect(server, uploading(keys))
        held.append(newcomer)
        await closed.closed.addTimeout(20, reactor)
        assert idle.evicted[tier] == 1 and sum(idle.evicted) == n
        await until(lambda: limits.total == limits.max_total and len(idle) == left - n,
                    "the newcomer counted, its request started")


@pytest_twisted.ensureDeferred
async def test_idle_connections_make_room_the_least_welcome_first_and_a_request_in_progress_never(tmp_path):
    """
    Four connections open (the cap): one that got a 401 and stays, one whose request authenticated,
    one that sent nothing, one in the middle of its request (an upload, its body coming). Each newcomer
    (an upload too) gets in, closing the one that sent nothing, then the 401's, then the authenticated
    one; then none is idle: 503. The request in progress is answered in full at the end.
    """
    server = await start_server(tmp_path, socket=True, max_connections=4, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    idle = limits.idle

    def tiers() -> tuple[int, ...]:
        return tuple(map(len, idle.tiers))

    held = []
    try:
        asked = await connect(server, get_v2())
        assert parse_raw(await asked.done)[0] == 401
        signed = await connect(server, get_v2(basic(keys.a_key)))
        assert parse_raw(await signed.done)[0] == 200
        silent = await connect(server, b"")
        working = await connect(server, uploading(keys))
        held = [asked, signed, silent, working]
        await until(lambda: limits.total == 4 and tiers() == (1, 1, 1), "three idle, one request in progress")
        await close_in_order(server, keys, ((silent, NEW), (asked, UNAUTHENTICATED), (signed, AUTHENTICATED)), held)
        assert not working.closed.called
        refused = await connect(server, b"")
        answer = await refused.closed.addTimeout(20, reactor)
        assert parse_raw(answer)[0] == 503 and sum(idle.evicted) == 3
        working.transport.write(UPLOAD[10:])
        assert parse_raw(await working.done.addTimeout(20, reactor))[0] == 201  # answered, never cut
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_keep_alive_connection_is_idle_again_between_requests(tmp_path):
    """Busy while its second request is in progress, idle (and last in line) once it is answered."""
    server = await start_server(tmp_path, socket=True, max_connections=2, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    idle = limits.idle
    try:
        first = await connect(server, get_v2())
        assert parse_raw(await first.done)[0] == 401
        other = await connect(server, b"")
        await until(lambda: list(map(len, idle.tiers)) == [1, 1, 0], "both idle")
        first.transport.write(uploading(keys))
        await until(lambda: list(map(len, idle.tiers)) == [1, 0, 0], "the second request in progress")
        newcomer = await connect(server, b"")  # the one that sent nothing goes
        await other.closed.addTimeout(20, reactor)
        assert not first.closed.called
        await until(lambda: limits.total == 2, "the newcomer counted")
        newcomer.transport.abortConnection()
        await until(lambda: limits.total == 1, "the newcomer gone")
    finally:
        first.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_still_sending_its_headers_is_idle_in_its_tier_and_closed_for_a_newcomer(tmp_path):
    """
    A request line and header lines with no end (slowloris) are no request in progress: the connection
    stays idle in its tier, where it was. One that has completed no request is new; one that trickles
    its second request's headers, pipelined right behind its first, is unauthenticated after a 401 and
    authenticated after a key's pull (its headers read once the blob is sent, as Twisted holds a
    pipelined request until the one before it is answered). Newcomers close them in that order,
    whatever more header lines they send. (Busy from their request line, they held their place until
    header_timeout.)
    """
    server = await start_server(tmp_path, socket=True, max_connections=3, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    held = []
    try:
        digest = await push_blob(server, f"{keys.a}/app", UPLOAD * 256, keys.a_key)
        pull = (f"GET /v2/{keys.a}/app/blobs/{digest} HTTP/1.1\r\nHost: localhost\r\n"
                f"Authorization: {basic(keys.a_key)}")
        signed = await connect(server, f"{pull}\r\n\r\n".encode() + TRICKLING)  # (read once the blob is sent)
        assert parse_raw(await signed.done)[0] == 200
        asked = await connect(server, get_v2() + TRICKLING)
        assert parse_raw(await asked.done)[0] == 401
        trickling = await connect(server, TRICKLING)
        held = [signed, asked, trickling]
        await until(lambda: limits.total == 3 and tuple(map(len, limits.idle.tiers)) == (1, 1, 1),
                    "all three idle, one a tier")
        for client in held:
            client.transport.write(b"X-Slow: 1\r\n")
        await close_in_order(server, keys, ((trickling, NEW), (asked, UNAUTHENTICATED), (signed, AUTHENTICATED)),
                             held)
        assert trickling.received == b""  # closed with no answer: its request never came whole
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_slowloris_flood_does_not_keep_a_client_with_a_key_out(tmp_path):
    """
    The whole table trickling request headers: clients with an access key get in and are answered, each
    closing the longest idle of the flood; the flood reconnecting closes its own, never the keys'
    connections. (Busy from their request line, the flood had every newcomer refused, 503, until
    header_timeout closed it, and reconnected.)
    """
    cap = 8
    server = await start_server(tmp_path, socket=True, max_connections=cap, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    flood, signed = [], []
    try:
        for _ in range(cap):
            flood.append(await connect(server, TRICKLING))
        watched = server.service.site.slow.watched  # (header_timeout's watch: each one's request line read)
        await until(lambda: limits.total == cap and len(watched) == cap, "the table full of slowloris")
        for client in flood:
            client.transport.write(b"X-Slow: 1\r\n")
        for n in range(1, 4):
            signed.append(await connect(server, get_v2(basic(keys.a_key))))
            assert parse_raw(await signed[-1].done.addTimeout(20, reactor))[0] == 200
            await flood[n - 1].closed.addTimeout(20, reactor)  # the longest idle
            assert limits.idle.evicted == [n, 0, 0]
        for _ in range(cap):
            flood.append(await connect(server, TRICKLING))
        await until(lambda: limits.idle.evicted == [3 + cap, 0, 0] and limits.total == cap,
                    "each reconnection closed one of the flood")
        assert len(limits.idle.tiers[AUTHENTICATED]) == 3 and not any(client.closed.called for client in signed)
    finally:
        for client in flood + signed:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_request_refused_in_its_headers_is_not_closed_for_a_newcomer_while_its_answer_lingers(tmp_path):
    """A header line over 16 KiB: 431, then the connection reads and drops for LINGER seconds, busy as every refusal."""
    server = await start_server(tmp_path, socket=True, max_connections=2, max_connections_per_address=0)
    limits = server.service.site.connections
    refused = None
    try:
        refused = await connect(server, TRICKLING + b"X-Long: " + b"a" * 17000 + b"\r\n")
        assert parse_raw(await refused.done.addTimeout(20, reactor))[0] == 431
        assert limits.total == 1 and len(limits.idle) == 0 and not refused.closed.called
    finally:
        if refused is not None:
            refused.transport.abortConnection()
        await server.service.stopService()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (blocking: run in a thread)."""
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_a_response_still_to_be_sent_is_not_closed_until_it_is_delivered(tmp_path):
    """
    A pull whose request is done on the server, its last bytes still waiting for the client (which reads
    nothing for now: a small receive window), is not idle yet: with the other connection in the middle
    of a request, the newcomer is refused (503). Once the client has read it all, the next newcomer
    closes it, after its last byte.
    """
    server = await start_server(tmp_path, socket=True, max_connections=2, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    blob = bytes(range(256)) * 4096  # 1 MiB: the response is handed to the transport whole, not sent whole
    digest = await push_blob(server, f"{keys.a}/app", blob, keys.a_key)
    port = int(server.url.rsplit(":", 1)[1])
    pull = socket.socket()
    pull.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the connect: the window stays small
    pull.connect(("127.0.0.1", port))
    working = None
    try:
        pull.sendall(f"GET /v2/{keys.a}/app/blobs/{digest} HTTP/1.1\r\nHost: localhost\r\n"
                     f"Authorization: {basic(keys.a_key)}\r\n\r\n".encode())
        await until(lambda: len(limits.idle.tiers[AUTHENTICATED]) == 1, "the pull answered, on the server's side")
        [channel] = limits.idle.tiers[AUTHENTICATED]
        assert sending(channel.transport)
        working = await connect(server, uploading(keys))
        await until(lambda: limits.total == 2 and len(limits.idle) == 1, "a request in progress beside it")
        refused = await connect(server, b"")
        assert parse_raw(await refused.closed.addTimeout(20, reactor))[0] == 503
        reading = deferToThread(read_all, pull)
        await until(lambda: not sending(channel.transport), "the pull delivered")
        newcomer = await connect(server, b"")
        received = await reading.addTimeout(20, reactor)  # the server closed it: every byte first
        assert hashlib.sha256(received.partition(b"\r\n\r\n")[2]).hexdigest() == digest.split(":")[1]
        assert limits.idle.evicted == [0, 0, 1]
        newcomer.transport.abortConnection()
    finally:
        pull.close()
        if working is not None:
            working.transport.abortConnection()
        await server.service.stopService()


class _Transport:
    """A TCP transport as L{IdleConnections} sees it: closing or not, bytes buffered or not, no socket."""

    disconnected = False
    socket = None

    def __init__(self, buffered: int = 0) -> None:
        self.disconnecting = False
        self._tempDataLen = buffered


class _Channel:
    idle_tier = None
    address = "192.0.2.1"

    def __init__(self, buffered: int = 0) -> None:
        self.transport = _Transport(buffered)
        self.closed = False

    def evicted(self) -> None:
        self.closed = True
        self.transport.disconnecting = True


def test_the_choice_is_the_first_of_the_lowest_tier_and_bounded():
    """
    New first, then unauthenticated, then authenticated; the longest idle first in each; one still
    sending is passed over (to the end of its tier), one closing already dropped; at most EVICT_SCAN
    looked at per newcomer.
    """
    idle = IdleConnections()
    device, key = _Channel(), _Channel()
    asked = [_Channel() for _ in range(2)]
    new = [_Channel() for _ in range(3)]
    for channel in (device, key):
        idle.idle(channel, AUTHENTICATED)
    for channel in asked:
        idle.idle(channel, UNAUTHENTICATED)
    for channel in new:
        idle.idle(channel, NEW)
    idle.idle(new[0], NEW)  # idle again: now the last of its tier
    new[1].transport.disconnecting = True  # closing already (an idle timeout, a half-close)
    sending = _Channel(buffered=10)
    idle.idle(sending, NEW)
    order = []
    while idle.evict():
        order.append(next(c for c in (device, key, *asked, *new, sending) if c.closed and c not in order))
    assert order == [new[2], new[0], *asked, device, key]
    assert idle.evicted == [2, 2, 2] and list(idle.tiers[NEW]) == [sending] and sending.idle_tier == NEW
    assert new[1].idle_tier is None and not new[1].closed
    sending.transport._tempDataLen = 0  # delivered: its turn
    assert idle.evict() and sending.closed and not len(idle)

    busy = [_Channel(buffered=1) for _ in range(EVICT_SCAN + 1)]
    for channel in busy:
        idle.idle(channel, NEW)
    assert not idle.evict()  # the first EVICT_SCAN looked at, each passed over to the end
    assert list(idle.tiers[NEW]) == busy[EVICT_SCAN:] + busy[:EVICT_SCAN]
    busy[EVICT_SCAN].transport._tempDataLen = 0
    assert idle.evict() and busy[EVICT_SCAN].closed


def test_at_max_connections_a_newcomer_closes_an_idle_connection_when_no_handshake_is_left():
    limits = ConnectionLimits(2, 0)
    handshakes = [True]
    limits.evict = lambda: handshakes.pop() if handshakes else False
    channel = _Channel()
    assert limits.admit("192.0.2.1") is None and limits.admit("192.0.2.2") is None
    limits.idle.idle(channel, AUTHENTICATED)
    assert limits.admit("192.0.2.3") is None and not channel.closed  # a handshake cut short first
    assert limits.admit("192.0.2.4") is None and channel.closed  # then the idle one
    error, line = limits.admit("192.0.2.5")  # nothing left: refused
    assert error.code is ErrorCode.UNAVAILABLE and "max_connections = 2" in line
