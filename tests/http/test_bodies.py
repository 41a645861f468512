"""
Requests refused before their body, the memory budget of bodies, slow
senders, connection caps and over-long lines (izreg.http.bodies, .limits,
.routing), on the in-process server with the real authentication.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread

from izreg.http.routing import Access, RouteTable
from tests.http.authhelpers import Keys, basic, push_image, uploading
from tests.http.conftest import start_server
from tests.http.helpers import FirstAnswer, parse_raw
from tests.service.test_admission import until

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

MIB = 1024 * 1024


async def connect(server, head: bytes) -> FirstAnswer:
    port = int(server.url.rsplit(":", 1)[1])
    client = FirstAnswer(head, hang_up=False)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


async def answer_before_body(server, head: bytes, timeout: float = 20.0):
    """Send only the request head (the body never comes); the (status, headers, body) answered."""
    client = await connect(server, head)
    answer = await client.done.addTimeout(timeout, reactor)
    client.transport.abortConnection()
    assert answer, "the server closed without an answer"
    return parse_raw(answer)


def put_head(path: str, length: int | None, authorization: str | None = None, extra: str = "") -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: localhost", "Content-Type: application/vnd.oci.image.manifest.v1+json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if authorization:
        lines.append(f"Authorization: {authorization}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest_twisted.async_yield_fixture
async def secured(tmp_path):
    server = await start_server(tmp_path, socket=True, body_memory=3 * MIB, max_connections_per_address=0)
    server.keys = Keys.make(server)
    yield server
    await server.service.stopService()


def _code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


# -- refused at the headers, the body never read ----------------------------------------------


@pytest.mark.parametrize("length", [4 * MIB, None])
@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("PUT", "/v2/{a}/app/manifests/v1", 401, "UNAUTHORIZED"),
        ("POST", "/v2/{a}/app/blobs/uploads/", 401, "UNAUTHORIZED"),
        ("PATCH", "/v2/{a}/app/blobs/uploads/0f0f", 401, "UNAUTHORIZED"),
        ("PUT", "/not/a/route", 404, "UNSUPPORTED"),
        ("POST", "/v2/", 405, "UNSUPPORTED"),
        ("PUT", "/v2//x/manifests/v1", 404, "UNSUPPORTED"),
        ("PUT", "/v2/NOT-A-NAME/manifests/v1", 400, "NAME_INVALID"),
        ("PUT", "/v2/app/manifests/v1", 401, "UNAUTHORIZED"),  # a name outside the accounts: the caller first
        ("POST", "/v2/app/blobs/uploads/", 401, "UNAUTHORIZED"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_request_that_will_be_refused_is_answered_before_its_body(secured, method, path, status, code, length):
    head = put_head(path.format(a=secured.keys.a), length).replace(b"PUT ", method.encode() + b" ", 1)
    got, headers, body = await answer_before_body(secured, head)
    assert got == status and _code(body) == code
    assert headers["connection"] == "close"
    assert secured.api.budget.used == 0


@pytest.mark.parametrize("caller, status", [("a_ro", 403), ("b_key", 403), ("a_revoked", 401)])
@pytest_twisted.ensureDeferred
async def test_a_key_without_the_right_is_refused_before_the_body(secured, caller, status):
    keys = secured.keys
    got, _, body = await answer_before_body(
        secured, put_head(f"/v2/{keys.a}/app/manifests/v1", 4 * MIB, basic(getattr(keys, caller))))
    assert got == status


@pytest.mark.parametrize("method, path", [("PUT", "/v2/app/manifests/v1"), ("POST", "/v2/library/app/blobs/uploads/"),
                                          ("PATCH", "/v2/app/blobs/uploads/0f0f")])
@pytest.mark.parametrize("length", [4 * MIB, None])
@pytest_twisted.ensureDeferred
async def test_a_name_outside_the_accounts_is_denied_before_the_body(secured, method, path, length):
    keys = secured.keys
    head = put_head(path, length, basic(keys.a_key)).replace(b"PUT ", method.encode() + b" ", 1)
    got, headers, body = await answer_before_body(secured, head)
    assert got == 403 and _code(body) == "DENIED"
    assert keys.a in json.loads(body)["errors"][0]["message"]
    assert headers["connection"] == "close"
    assert secured.api.budget.used == 0


@pytest_twisted.ensureDeferred
async def test_a_manifest_over_the_limit_is_refused_before_its_body(secured):
    keys = secured.keys
    got, _, body = await answer_before_body(
        secured, put_head(f"/v2/{keys.a}/app/manifests/v1", 4 * MIB + 1, basic(keys.a_key)))
    assert got == 413 and _code(body) == "SIZE_INVALID"


@pytest_twisted.ensureDeferred
async def test_a_large_body_on_a_route_that_reads_none_is_refused_not_read_for_as_long_as_it_comes(secured):
    """
    GET /healthz is open to anyone: its body was counted and dropped for as long as the client sent it,
    so 100 MB announced and trickled at body_min_rate held a connection (busy: never closed for a newcomer
    at max_connections) for a day. Now a body past 64 KiB is 413 at the headers (Content-Length) or as its
    bytes pass 64 KiB (chunked); a small one is still dropped and the request answered.
    """
    status, _, body = await answer_before_body(
        secured, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\nab")
    assert (status, _code(body)) == (413, "SIZE_INVALID")
    chunk = b"%x\r\n%s\r\n" % (8192, b"x" * 8192)
    status, _, body = await answer_before_body(
        secured, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 9)
    assert (status, _code(body)) == (413, "SIZE_INVALID")
    client = await connect(secured, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
    answer = await client.done.addTimeout(20, reactor)
    client.transport.abortConnection()
    assert parse_raw(answer)[0] == 200


@pytest.mark.parametrize("length", [60000, 100, None])
@pytest_twisted.ensureDeferred
async def test_the_token_endpoint_when_off_is_404_at_the_headers_nothing_reserved(secured, length):
    """
    The token service off ([auth] token_service = false): POST /v2/token is answered 404 (as the handler says)
    at its headers, before a byte of its body. (It reserved its whole Content-Length, up to 64 KiB of the shared
    body_memory, before anyone was authenticated, and said 404 only once the body had come, however slowly.)
    """
    head = put_head("/v2/token", length).replace(b"PUT ", b"POST ", 1)
    got, headers, body = await answer_before_body(secured, head, timeout=10)
    assert (got, _code(body)) == (404, "UNSUPPORTED") and "not enabled" in json.loads(body)["errors"][0]["message"]
    assert headers["connection"] == "close" and secured.api.budget.used == 0


@pytest_twisted.ensureDeferred
async def test_bodies_in_memory_have_a_global_budget(secured):
    """Past limits.body_memory, 503 at once; the budget comes back when the requests end."""
    keys = secured.keys
    head = put_head(f"/v2/{keys.a}/app/manifests/v1", 2 * MIB, basic(keys.a_key))
    first = await connect(secured, head)
    # the first request holds 2 MiB of the 3 MiB budget while its body is awaited
    deadline = reactor.seconds() + 20
    while secured.api.budget.used < 2 * MIB:
        assert reactor.seconds() < deadline
        await _tick()
    got, headers, body = await answer_before_body(secured, head)
    assert got == 503 and _code(body) == "UNAVAILABLE" and "body_memory" in json.loads(body)["errors"][0]["message"]
    assert headers["retry-after"]
    # a chunked body is counted as it comes
    chunked = await connect(secured, put_head(f"/v2/{keys.a}/app/manifests/v2", None, basic(keys.a_key)))
    chunked.transport.write(b"%x\r\n" % (MIB + 1) + b"x" * (MIB + 1) + b"\r\n")
    answer = await chunked.done.addTimeout(20, reactor)
    assert parse_raw(answer)[0] == 503
    first.transport.abortConnection()
    chunked.transport.abortConnection()
    await first.closed
    deadline = reactor.seconds() + 20
    while secured.api.budget.used:
        assert reactor.seconds() < deadline
        await _tick()


@pytest_twisted.async_yield_fixture
async def shared(tmp_path):
    """body_memory 8 MiB, manifests up to 1 MiB: one owner's share is 2 MiB (a quarter)."""
    server = await start_server(tmp_path, socket=True, body_memory=8 * MIB, max_manifest_size=MIB,
                                max_connections_per_address=0)
    server.keys = Keys.make(server)
    yield server
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_one_account_holds_at_most_its_share_of_body_memory_and_the_others_push(shared):
    """
    One account whose clients send a manifest's first bytes and stall held all of limits.body_memory (each
    connection its whole Content-Length), and every other account's manifest PUTs were 503 for as long as it
    kept it up. Now it holds a quarter (at least one max_manifest_size): its next body is 503, naming its share.
    """
    keys, budget = shared.keys, shared.api.budget
    owner = "account:" + keys.a
    head = put_head(f"/v2/{keys.a}/app/manifests/v1", MIB, basic(keys.a_key))
    stalled = []
    for held in (MIB, 2 * MIB):  # its share: two stalled bodies
        stalled.append(await connect(shared, head + b"{"))
        await until(lambda: budget.used == held, f"{held} bytes held by the stalled bodies")
    for _ in range(6):  # the rest of the budget, tried for: each answered 503 at once
        got, headers, body = await answer_before_body(shared, head + b"{", timeout=10)
        error = json.loads(body)["errors"][0]
        assert (got, error["code"], headers["retry-after"]) == (503, "UNAVAILABLE", "1")
        assert "share of limits.body_memory" in error["message"] and error["detail"]["share"] == 2 * MIB
    assert budget.used == 2 * MIB and budget.by_owner == {owner: 2 * MIB}
    await push_image(shared, f"{keys.b}/app", keys.b_key, "b")  # another account's manifest PUT: 201
    for client in stalled:
        assert not client.done.called  # still held, never answered
        client.transport.abortConnection()
        await client.closed
    await until(lambda: budget.used == 0 and budget.by_owner == {}, "the share given back")


async def _tick():
    d = defer.Deferred()
    reactor.callLater(0.02, d.callback, None)
    await d


# -- slow senders -----------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def strict(tmp_path):
    server = await start_server(tmp_path, socket=True, header_timeout=1, body_grace=1, body_min_rate=100_000,
                                max_connections=0, max_connections_per_address=0)
    server.keys = Keys.make(server)
    yield server
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_body_that_comes_too_slowly_closes_the_connection(strict):
    keys = strict.keys
    client = await connect(strict, put_head(f"/v2/{keys.a}/app/manifests/v1", MIB, basic(keys.a_key)) + b"{")
    answer = await client.closed.addTimeout(30, reactor)
    status, _, body = parse_raw(answer)
    assert status == 408 and "slower than" in json.loads(body)["errors"][0]["message"]


@pytest.mark.parametrize("head", [
    b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n",
    # the request line not yet whole: its bytes, one every minute, restarted Twisted's idle timeout, and the
    # header timeout began at the first whole line, so a client trickling 16 KiB of it held its connection for days
    b"GET /v2/ HTTP/1.1",
    b"\r\n",  # empty lines before a request (RFC 9112 2.2: ignored), for ever
])
@pytest_twisted.ensureDeferred
async def test_headers_that_come_too_slowly_close_the_connection(strict, head):
    client = await connect(strict, head)
    answer = await client.closed.addTimeout(30, reactor)
    assert parse_raw(answer)[0] == 408


# -- connection caps ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap, status", [("max_connections_per_address", 429), ("max_connections", 503)])
@pytest_twisted.ensureDeferred
async def test_connections_are_capped(tmp_path, cap, status):
    """Three connections each in the middle of a request: the fourth is refused (none is idle to close for it)."""
    server = await start_server(tmp_path, socket=True, **{"max_connections": 0, "max_connections_per_address": 0, cap: 3})
    limits = server.service.site.connections
    try:
        keys = Keys.make(server)
        held = [await connect(server, uploading(keys)) for _ in range(3)]  # each its body still coming
        await until(lambda: limits.total == 3 and not len(limits.idle), "three requests in progress")
        refused = await connect(server, b"")
        answer = await refused.closed.addTimeout(20, reactor)
        got, _, body = parse_raw(answer)
        assert got == status
        for client in held:
            client.transport.loseConnection()
            await client.closed
        # the slots come back: a request goes through again
        client = await connect(server, b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await client.closed.addTimeout(20, reactor)
        assert parse_raw(answer)[0] == 401
    finally:
        await server.service.stopService()


# -- over-long lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, status",
    [
        (b"GET /v2/" + b"a" * 17000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET /v2/" + b"a" * 17000, 414),  # no line end yet
        (b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n" + b"X-Many: " + b"a" * 8000 + b"\r\nX-More: " + b"b" * 8000
         + b"\r\nX-Most: " + b"c" * 8000 + b"\r\n\r\n", 431),
        (b"GET /v2/ HTTP/1.1\r\nthis is no header\r\n\r\n", 400),
        (b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 600 + b"\r\n", 431),  # (was 400 'malformed')
    ],
)
@pytest_twisted.ensureDeferred
async def test_overlong_and_malformed_request_heads_get_an_answer(secured, head, status):
    client = await connect(secured, head)
    answer = await client.done.addTimeout(20, reactor)  # the close comes after the linger: not waited for
    client.transport.abortConnection()
    got, headers, body = parse_raw(answer)
    assert got == status and headers["content-type"] == "application/json", (got, body)
    assert headers["connection"] == "close"
    assert set(json.loads(body)["errors"][0]) == {"code", "message", "detail"}


# -- the route table --------------------------------------------------------------------------


def test_a_route_without_a_declared_access_cannot_be_served():
    app = Klein()
    table = RouteTable(app)

    @table.route("/declared", methods=["GET"], access=Access.PUBLIC)
    def declared(self, request):
        return b""

    table.check_complete()

    @app.route("/forgotten")
    def forgotten(self, request):
        return b""

    with pytest.raises(RuntimeError, match="forgotten"):
        table.check_complete()


def test_every_route_of_the_api_declares_its_access():
    from izreg.http.app import RegistryAPI

    RegistryAPI.table.check_complete()
    for name, endpoint in RegistryAPI.table.endpoints.items():
        assert endpoint is None or isinstance(endpoint.access, Access), name
    assert [name for name, endpoint in RegistryAPI.table.endpoints.items() if endpoint is None] == ["repository"]
    for endpoint in RegistryAPI.table.repository_routes.values():
        assert isinstance(endpoint.access, Access)
        assert callable(getattr(RegistryAPI, endpoint.handler))


# -- the server as a whole: OPTIONS * ---------------------------------------------------------


@pytest.mark.parametrize(
    "head, status",
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 200),
        (b"GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 405),
        (b"PUT * HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_asterisk_target_is_options_only(secured, head, status):
    """RFC 9110 9.3.7: OPTIONS * is 200 with no content; another method on * an OCI error, never a route's answer."""
    client = await connect(secured, head)
    answer = await client.done.addTimeout(20, reactor)
    client.transport.abortConnection()
    got, headers, body = parse_raw(answer)
    assert got == status
    if status == 200:
        assert headers["content-length"] == "0" and body == b""
    else:
        assert headers["allow"] == "OPTIONS"
        assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"


# -- the Host header (RFC 9112 3.2) -----------------------------------------------------------


def _get(path: str, version: str, hosts: list[str], authorization: str) -> bytes:
    lines = [f"GET {path} {version}", *(f"Host: {host}" for host in hosts), f"Authorization: {authorization}",
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "version, hosts, status",
    [
        ("HTTP/1.1", [], 400),
        ("HTTP/1.1", ["localhost", "elsewhere.example"], 400),
        ("HTTP/1.1", ["localhost", "localhost"], 400),
        ("HTTP/1.0", ["localhost", "elsewhere.example"], 400),
        ("HTTP/1.1", ["localhost"], 404),  # the route's own answer
        ("HTTP/1.0", [], 404),  # HTTP/1.0 needs none
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_request_without_its_one_host_header_is_400(secured, version, hosts, status):
    """An HTTP/1.1 request without Host, or any with two, is never served (the route never runs): 400, an OCI error."""
    keys = secured.keys
    head = _get(f"/v2/{keys.a}/app/manifests/v1", version, hosts, basic(keys.a_key))
    client = await connect(secured, head)
    answer = await client.closed.addTimeout(20, reactor)
    got, headers, body = parse_raw(answer)
    error = json.loads(body)["errors"][0]
    assert got == status, body
    if status == 400:
        assert error["code"] == "UNSUPPORTED" and "Host header" in error["message"], error
    else:
        assert error["code"] == "NAME_UNKNOWN"  # (a repository never pushed)


@pytest.mark.parametrize("length", [4 * MIB, None])
@pytest_twisted.ensureDeferred
async def test_a_body_without_a_host_header_is_refused_before_it_is_read(secured, length):
    keys = secured.keys
    head = put_head(f"/v2/{keys.a}/app/manifests/v1", length, basic(keys.a_key)).replace(b"Host: localhost\r\n", b"")
    got, headers, body = await answer_before_body(secured, head)
    assert got == 400 and "Host header" in json.loads(body)["errors"][0]["message"]
    assert headers["connection"] == "close"
    assert secured.api.budget.used == 0


# -- Expect: 100-continue ---------------------------------------------------------------------


@pytest.mark.parametrize("caller, status", [(None, 401), ("b_key", 403), ("a_ro", 403)])
@pytest_twisted.ensureDeferred
async def test_a_request_refused_at_its_headers_gets_no_100_continue(secured, caller, status):
    """RFC 9110 10.1.1: the final answer, then nothing: no "100 Continue" after it on the closing connection."""
    keys = secured.keys
    authorization = basic(getattr(keys, caller)) if caller else None
    head = put_head(f"/v2/{keys.a}/app/manifests/v1", 100, authorization, "Expect: 100-continue")
    client = await connect(secured, head)
    answer = await client.closed.addTimeout(20, reactor)  # the whole stream, until the server closes
    got, headers, body = parse_raw(answer)
    assert got == status and headers["connection"] == "close"
    assert b"100 Continue" not in answer, answer


@pytest_twisted.ensureDeferred
async def test_an_accepted_request_is_told_to_continue(secured):
    keys = secured.keys
    client = await connect(secured, put_head(f"/v2/{keys.a}/app/manifests/v1", 100, basic(keys.a_key),
                                             "Expect: 100-continue"))
    answer = await client.done.addTimeout(20, reactor)
    client.transport.abortConnection()
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), answer


def _channels(server):
    """The site's open channels (every one is in a tier of the connection table between its requests)."""
    return [channel for tier in server.service.site.connections.idle.tiers for channel in tier
            if channel.transport is not None]


@pytest.mark.parametrize("half_close", [False, True])
@pytest_twisted.ensureDeferred
async def test_pipelined_requests_wait_while_their_client_reads_no_answer(secured, half_close):
    """
    A client that pipelines requests (anyone: GET /healthz) and reads none of the answers: the server stops
    reading them once its send buffer is full, so what it holds for the client stays bounded. It answered every
    request it had read (the rest of a read, up to 64 KiB, then more answers) into memory: one connection that
    sent 40 MB of requests held 590 MB. The requests held are answered, in order, once the client reads; after
    a half-close too, and then the connection is closed.
    """
    from izreg.http.limits import _buffered, tcp_under

    port = int(secured.url.rsplit(":", 1)[1])
    count = 10_000  # ~350 KiB of requests, ~3 MB of answers
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.settimeout(30)

    def send() -> None:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * count)
        if half_close:  # all sent: the answers are still read, then the server closes
            client.shutdown(socket.SHUT_WR)

    sending = deferToThread(send)

    def held() -> int | None:
        """Bytes of answers the server holds for the client, once it has stopped (or 1 MiB past the bound)."""
        for channel in _channels(secured):
            buffered = _buffered(tcp_under(channel.transport))
            if channel.paused or buffered > 1024 * 1024:
                return buffered
        return None

    try:
        await until(lambda: held() is not None, "the server stopped reading, or held over 1 MiB")
        assert held() < 256 * 1024

        def read_all() -> int:
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < count:
                data = client.recv(1 << 20)
                assert data, "the server closed"
                received += data
            if half_close:
                while data:
                    data = client.recv(1 << 20)
                    received += data  # nothing more, then the end
            return received.count(b"HTTP/1.1 200 OK")

        assert await deferToThread(read_all) == count
        await sending
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_requests_pipelined_behind_one_answered_later_are_all_answered_after_a_half_close(secured):
    """
    A request answered later (an upload's start: a write off the reactor), requests pipelined behind it and
    the client's half-close, which arrives while the first is in progress: every request is answered, then
    the connection closed. The server closed as soon as the first request after it was answered (the rest,
    still to be parsed, silently dropped: 2 answers of 11).
    """
    keys = secured.keys
    port = int(secured.url.rsplit(":", 1)[1])
    count = 10
    head = (f"POST /v2/{keys.a}/app/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: {basic(keys.a_key)}\r\nContent-Length: 0\r\n\r\n").encode()
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(30)

    def exchange() -> bytes:
        client.sendall(head + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * count)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while data := client.recv(1 << 16):
            received += data
        return received

    try:
        received = await deferToThread(exchange)
    finally:
        client.close()
    assert received.count(b"HTTP/1.1 202 Accepted") == 1, received[:300]
    assert received.count(b"HTTP/1.1 200 OK") == count, received.count(b"HTTP/1.1 ")
