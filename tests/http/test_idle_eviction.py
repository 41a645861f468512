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
from izreg.http.limits import (AUTHENTICATED, EVICT_SCAN, NEW, PUBLIC_REQUEST, REFUSED, UNAUTHENTICATED,
                               ConnectionLimits, IdleConnections, sending)
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


async def key_holder(server, keys: Keys):
    """A connection on which a request authenticated with an access key (200), idle again: authenticated."""
    signed = await connect(server, get_v2(basic(keys.a_key)))
    assert parse_raw(await signed.done)[0] == 200
    return signed


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
        assert idle.evicted[tier] == sum(t == tier for _, t in order[:n]) and sum(idle.evicted) == n
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
        signed = await key_holder(server, keys)
        silent = await connect(server, b"")
        working = await connect(server, uploading(keys))
        held = [asked, signed, silent, working]
        await until(lambda: limits.total == 4 and tiers() == (0, 1, 1, 0, 1), "three idle, one request in progress")
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
        await until(lambda: list(map(len, idle.tiers)) == [0, 1, 1, 0, 0], "both idle")
        first.transport.write(uploading(keys))
        await until(lambda: list(map(len, idle.tiers)) == [0, 1, 0, 0, 0], "the second request in progress")
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
        await until(lambda: limits.total == 3 and tuple(map(len, limits.idle.tiers)) == (0, 1, 1, 0, 1),
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
            assert limits.idle.evicted == [0, n, 0, 0, 0]
        for _ in range(cap):
            flood.append(await connect(server, TRICKLING))
        await until(lambda: limits.idle.evicted == [0, 3 + cap, 0, 0, 0] and limits.total == cap,
                    "each reconnection closed one of the flood")
        assert len(limits.idle.tiers[AUTHENTICATED]) == 3 and not any(client.closed.called for client in signed)
    finally:
        for client in flood + signed:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_refused_request_lingering_is_the_first_closed_for_a_newcomer(tmp_path):
    """
    A request refused before its body (an upload without credentials: 401; a header line over 16 KiB: 431)
    is answered, then its connection reads and drops the rest for LINGER seconds before it closes: the
    first closed for a newcomer, before older connections that sent nothing or got a 401 and stay. (Busy,
    as it was, anyone could hold every slot against newcomers with one refused request per slot every
    LINGER seconds.) Its answer was delivered first.
    """
    server = await start_server(tmp_path, socket=True, max_connections=4, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    idle = limits.idle
    held = []
    try:
        asked = await connect(server, get_v2())
        assert parse_raw(await asked.done)[0] == 401
        silent = await connect(server, b"")
        held = [asked, silent]
        await until(lambda: tuple(map(len, idle.tiers)) == (0, 1, 1, 0, 0), "one new, one unauthenticated")
        no_key = await connect(server, trickled("POST", f"/v2/{keys.a}/app/blobs/uploads/", 100000))
        held.append(no_key)
        too_long = await connect(server, TRICKLING + b"X-Long: " + b"a" * 17000 + b"\r\n")
        held.append(too_long)
        assert parse_raw(await no_key.done.addTimeout(20, reactor))[0] == 401
        assert parse_raw(await too_long.done.addTimeout(20, reactor))[0] == 431
        await until(lambda: tuple(map(len, idle.tiers)) == (2, 1, 1, 0, 0), "two refused, lingering")
        await close_in_order(server, keys, ((no_key, REFUSED), (too_long, REFUSED), (silent, NEW),
                                            (asked, UNAUTHENTICATED)), held)
        assert idle.evicted == [2, 1, 1, 0, 0]
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


def trickled(method: str, path: str, length: int, sent: bytes = b"x" * 100, extra: str = "") -> bytes:
    """A request on C{path} announcing a body of C{length} bytes, of which C{sent} comes (the rest never does)."""
    return (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n{extra}"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n").encode() + sent


@pytest_twisted.ensureDeferred
async def test_a_request_on_a_public_route_is_closed_for_a_newcomer_after_the_idle_unauthenticated_ones(tmp_path):
    """
    A body trickled to GET /healthz and a form trickled to POST /v2/token (open to anyone: nobody is
    authenticated) are requests in progress that each newcomer may close: after the connection that got a
    401, before the key holder's idle one. (Busy, never closed, they held their slots for body_grace plus
    64 s at body_min_rate, each arrival closing a device's or a key holder's idle connection.) The form's
    reserved memory goes with it; an upload with a key, in progress, is never closed: then 503.
    """
    server = await start_server(tmp_path, socket=True, max_connections=5, max_connections_per_address=0,
                                token_service=True)
    keys = Keys.make(server)
    limits = server.service.site.connections
    idle, budget = limits.idle, server.api.budget
    held = []
    try:
        signed = await key_holder(server, keys)
        asked = await connect(server, get_v2())
        assert parse_raw(await asked.done)[0] == 401
        health = await connect(server, trickled("GET", "/healthz", 60000))
        await until(lambda: len(idle.tiers[PUBLIC_REQUEST]) == 1, "the health check's body coming")
        form = await connect(server, trickled("POST", "/v2/token", 8000))
        working = await connect(server, uploading(keys))
        held = [signed, asked, health, form, working]
        await until(lambda: limits.total == 5 and tuple(map(len, idle.tiers)) == (0, 0, 1, 2, 1) and budget.used == 8000,
                    "two public requests in progress, the form's 8000 bytes reserved")
        for n, (closed, tier) in enumerate(((asked, UNAUTHENTICATED), (health, PUBLIC_REQUEST),
                                            (form, PUBLIC_REQUEST), (signed, AUTHENTICATED)), 1):
            held.append(await connect(server, uploading(keys)))
            await closed.closed.addTimeout(20, reactor)
            assert sum(idle.evicted) == n and idle.evicted[tier] >= 1
        assert idle.evicted == [0, 0, 1, 2, 1]
        await until(lambda: budget.used == 0, "the form's memory given back")
        refused = await connect(server, b"")
        assert parse_raw(await refused.closed.addTimeout(20, reactor))[0] == 503
        assert not working.closed.called
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_public_request_answered_leaves_its_tier(tmp_path):
    """
    Once answered, a public request's connection is idle (unauthenticated, or authenticated as it was), or
    gone if it asked to close: never left in PUBLIC_REQUEST. (The key holder's, in progress, is in its
    caller's tier.)
    """
    server = await start_server(tmp_path, socket=True, max_connections=4, max_connections_per_address=0)
    keys = Keys.make(server)
    idle = server.service.site.connections.idle
    held = []
    try:
        signed = await key_holder(server, keys)
        first = await connect(server, trickled("GET", "/healthz", 5, b"he"))
        closing = await connect(server, trickled("GET", "/readyz", 5, b"he", extra="Connection: close\r\n"))
        held = [signed, first, closing]
        signed.transport.write(trickled("GET", "/healthz", 5, b"he"))
        await until(lambda: tuple(map(len, idle.tiers)) == (0, 0, 0, 2, 1), "three public requests in progress")
        for client in held:
            client.transport.write(b"llo")
        await closing.closed.addTimeout(20, reactor)
        await until(lambda: tuple(map(len, idle.tiers)) == (0, 0, 1, 0, 1), "answered: idle in their tiers, or gone")
        assert parse_raw(first.received)[0] == 200 and parse_raw(closing.received)[0] == 200
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_public_request_of_a_known_caller_is_ranked_with_its_caller(tmp_path):
    """
    A key holder's connection trickling a body to GET /healthz (a route open to anyone) is the key
    holder's: closed after a stranger's public request that started later, with the idle connections of
    key holders. (Ranked by its route, it was closed first: the longest in PUBLIC_REQUEST.)
    """
    server = await start_server(tmp_path, socket=True, max_connections=3, max_connections_per_address=0)
    keys = Keys.make(server)
    idle = server.service.site.connections.idle
    held = []
    try:
        signed = await key_holder(server, keys)
        held.append(signed)
        signed.transport.write(trickled("GET", "/healthz", 60000))
        await until(lambda: tuple(map(len, idle.tiers)) == (0, 0, 0, 0, 1), "the key holder's health check in progress")
        stranger = await connect(server, trickled("GET", "/healthz", 60000))
        held.append(stranger)
        working = await connect(server, uploading(keys))
        held.append(working)
        await until(lambda: tuple(map(len, idle.tiers)) == (0, 0, 0, 1, 1), "a stranger's health check too")
        await close_in_order(server, keys, ((stranger, PUBLIC_REQUEST), (signed, AUTHENTICATED)), held)
        assert not working.closed.called
    finally:
        for client in held:
            client.transport.abortConnection()
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_connection_whose_request_is_refused_authentication_is_no_longer_ranked_authenticated(tmp_path):
    """
    A 401 with no caller (a key revoked since, as a device whose certificate is revoked in the database, not
    in a CRL) drops the connection to the unauthenticated tier: closed before the key holders' connections.
    A request that authenticates again raises it. (Authenticated once, it ranked so for good.)
    """
    server = await start_server(tmp_path, socket=True, max_connections=4, max_connections_per_address=0)
    keys = Keys.make(server)
    idle = server.service.site.connections.idle
    client = None
    try:
        client = await connect(server, get_v2(basic(keys.a_key)))
        assert parse_raw(await client.done)[0] == 200
        assert client.transport is not None and tuple(map(len, idle.tiers)) == (0, 0, 0, 0, 1)
        client.transport.write(get_v2(basic(keys.a_revoked)))
        await until(lambda: client.received.count(b"HTTP/1.1 401") == 1 and len(idle.tiers[UNAUTHENTICATED]) == 1,
                    "refused authentication: unauthenticated")
        client.transport.write(get_v2(basic(keys.a_key)))
        await until(lambda: client.received.count(b"HTTP/1.1 200") == 2 and len(idle.tiers[AUTHENTICATED]) == 1,
                    "authenticated again")
    finally:
        if client is not None:
            client.transport.abortConnection()
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
        assert limits.idle.evicted == [0, 0, 0, 0, 1]
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
    Refused first, then new, then unauthenticated, then public requests, then authenticated; the longest
    idle first in each; one closing already dropped. One still sending is passed over (to the end of its
    tier) among public requests and authenticated callers only: a stranger's answer is cut. At most
    EVICT_SCAN looked at per newcomer.
    """
    idle = IdleConnections()
    device, key, public = _Channel(), _Channel(), _Channel()
    asked = [_Channel() for _ in range(2)]
    new = [_Channel() for _ in range(3)]
    refused = _Channel(buffered=10)  # its answer not all sent: cut all the same
    for channel in (device, key):
        idle.idle(channel, AUTHENTICATED)
    for channel in asked:
        idle.idle(channel, UNAUTHENTICATED)
    for channel in new:
        idle.idle(channel, NEW)
    idle.idle(public, PUBLIC_REQUEST)
    idle.idle(refused, REFUSED)
    idle.idle(new[0], NEW)  # idle again: now the last of its tier
    new[1].transport.disconnecting = True  # closing already (an idle timeout, a half-close)
    asked[0].transport._tempDataLen = 5  # a stranger's 401 not read: cut all the same
    sending = _Channel(buffered=10)
    idle.idle(sending, AUTHENTICATED)  # a key holder's pull on its way: waited for
    everyone = (device, key, public, refused, *asked, *new, sending)
    order = []
    while idle.evict():
        order.append(next(c for c in everyone if c.closed and c not in order))
    assert order == [refused, new[2], new[0], *asked, public, device, key]
    assert idle.evicted == [1, 2, 2, 1, 2] and list(idle.tiers[AUTHENTICATED]) == [sending]
    assert sending.idle_tier == AUTHENTICATED
    assert new[1].idle_tier is None and not new[1].closed
    sending.transport._tempDataLen = 0  # delivered: its turn
    assert idle.evict() and sending.closed and not len(idle)

    for tier in (PUBLIC_REQUEST, AUTHENTICATED):
        busy = [_Channel(buffered=1) for _ in range(EVICT_SCAN + 1)]
        for channel in busy:
            idle.idle(channel, tier)
        assert not idle.evict()  # the first EVICT_SCAN looked at, each passed over to the end
        assert list(idle.tiers[tier]) == busy[EVICT_SCAN:] + busy[:EVICT_SCAN]
        busy[EVICT_SCAN].transport._tempDataLen = 0
        assert idle.evict() and busy[EVICT_SCAN].closed
        for channel in busy[:EVICT_SCAN]:
            idle.busy(channel)


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


@pytest_twisted.ensureDeferred
async def test_a_stranger_that_reads_no_answer_is_closed_for_a_newcomer(tmp_path):
    """
    A client with no credentials that sends requests and reads none of its 401s (a small receive window,
    pipelined requests) has answers still to be sent, idle, unauthenticated: the newcomer closes it all the
    same, at once. (Every answer still on its way was waited for, whoever it was for: such a client held
    its slot against every newcomer until idle_timeout.) A key holder's pull is still waited for: the
    test above.
    """
    server = await start_server(tmp_path, socket=True, max_connections=2, max_connections_per_address=0)
    keys = Keys.make(server)
    limits = server.service.site.connections
    port = int(server.url.rsplit(":", 1)[1])
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the connect: the window stays small
    stuck.connect(("127.0.0.1", port))
    working = newcomer = None
    try:
        stuck.sendall(get_v2() * 64)  # 64 401s, more than the window and the server's socket buffer take

        def unread() -> bool:
            channels = limits.idle.tiers[UNAUTHENTICATED]
            return len(channels) == 1 and sending(next(iter(channels)).transport)

        await until(unread, "answered on the server's side, not read")
        working = await connect(server, uploading(keys))
        await until(lambda: limits.total == 2 and len(limits.idle) == 1, "a request in progress beside it")
        newcomer = await connect(server, b"")
        await until(lambda: limits.idle.evicted == [0, 0, 1, 0, 0], "the stranger closed for the newcomer")
        assert not working.closed.called and not newcomer.closed.called
    finally:
        stuck.close()
        for client in (working, newcomer):
            if client is not None:
                client.transport.abortConnection()
        await server.service.stopService()
