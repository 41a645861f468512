"""
One routing per request (izreg.http.routing notes the repository route it
matched, the access log reuses it): the access log still names every route
as L{route_of} would from the path, for known, unknown, refused and
not-allowed requests alike, and a repository path is matched once.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from izreg.core import routes
from izreg.http.accesslog import route_of
from tests.http.conftest import ACCOUNT
from tests.http.helpers import parse_raw, raw_answer, repo

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

NAME = repo("app")
DIGEST = "sha256:" + "a" * 64

REQUESTS = [
    ("GET", f"/v2/{NAME}/manifests/v1"), ("HEAD", f"/v2/{NAME}/manifests/{DIGEST}"),
    ("DELETE", f"/v2/{NAME}/manifests/v1"), ("PUT", f"/v2/{NAME}/manifests/v1"),
    ("GET", f"/v2/{NAME}/blobs/{DIGEST}"), ("HEAD", f"/v2/{NAME}/blobs/{DIGEST}"),
    ("DELETE", f"/v2/{NAME}/blobs/{DIGEST}"), ("POST", f"/v2/{NAME}/blobs/uploads/"),
    ("GET", f"/v2/{NAME}/blobs/uploads/0f0f"), ("PATCH", f"/v2/{NAME}/blobs/uploads/0f0f"),
    ("PUT", f"/v2/{NAME}/blobs/uploads/0f0f?digest={DIGEST}"), ("DELETE", f"/v2/{NAME}/blobs/uploads/0f0f"),
    ("GET", f"/v2/{NAME}/tags/list?n=2"), ("HEAD", f"/v2/{NAME}/tags/list"),
    ("GET", f"/v2/{NAME}/referrers/{DIGEST}"), ("GET", f"/v2/{NAME}/_izreg/manifests"),
    ("GET", f"/v2/{ACCOUNT}/a%2Fb/tags/list"),  # percent-encoded
    ("POST", f"/v2/{NAME}/tags/list"), ("PATCH", f"/v2/{NAME}/manifests/v1"),  # 405
    ("POST", "/v2/_catalog"), ("GET", "/v2/_catalog"), ("GET", "/v2/"), ("GET", "/v2"), ("GET", "/healthz"),
    ("GET", "/readyz"), ("GET", "/v2/token"), ("GET", "/ui/"), ("GET", "/ui/app.js"), ("GET", "/metrics"),
    ("GET", "/v2/nope"), ("GET", "/etc/passwd"), ("GET", "/v2/%ff"), ("GET", f"/v2/{NAME}/manifests/v1/extra"),
    ("GET", f"/v2/{ACCOUNT}/UPPER/tags/list"), ("GET", f"/v2/{ACCOUNT}/{'a' * 300}/tags/list"),  # invalid names
    ("OPTIONS", f"/v2/{NAME}/tags/list"),
]


@pytest_twisted.ensureDeferred
async def test_the_access_log_names_the_route_the_router_matched(server, monkeypatch):
    events, matched = [], []
    real_match = routes.match

    def counting(path):
        matched.append(path)
        return real_match(path)

    def observe(event):
        if event.get("log_namespace") == "izreg.access":
            events.append(event)

    monkeypatch.setattr(routes, "match", counting)
    globalLogPublisher.addObserver(observe)
    try:
        for method, target in REQUESTS:
            body = b"{}" if method in ("PUT", "PATCH", "POST") else b""
            head = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            status, headers, _ = parse_raw(await raw_answer(server, head + body, head=method == "HEAD"))
            assert status < 500, (method, target, status)
            events_of = [e for e in events if e["request_id"] == headers["x-request-id"]]
            path = target.partition("?")[0].encode()
            assert [(e["route"], e["repository"]) for e in events_of] == [route_of(path)], (method, target, status)
    finally:
        globalLogPublisher.removeObserver(observe)
    monkeypatch.setattr(routes, "match", real_match)
    # a request to a repository route is matched once, not again by the access log
    matched.clear()
    head = f"GET /v2/{NAME}/tags/list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    monkeypatch.setattr(routes, "match", counting)
    status, _, _ = parse_raw(await raw_answer(server, head))
    assert status in (200, 404) and matched == [f"{NAME}/tags/list"]


# -- the fast path to the repository routes (izreg.http.fastpath) -------------------------------


def test_which_requests_take_the_fast_path():
    from izreg.http.app import ALL_METHODS, RegistryAPI
    from izreg.http.fastpath import RepositoryFastPath, fixed_paths

    fast = RepositoryFastPath(None, None, None, fixed_paths(RegistryAPI.app.url_map), ALL_METHODS)

    class Request:
        def __init__(self, method, path):
            self.method, self.path = method, path

    assert fast.rest_of(Request(b"GET", f"/v2/{NAME}/tags/list".encode())) == f"{NAME}/tags/list"
    assert fast.rest_of(Request(b"PATCH", b"/v2/a%2Fb/blobs/uploads/x")) == "a/b/blobs/uploads/x"
    assert fast.rest_of(Request(b"GET", b"/v2/_catalog/")) == "_catalog/"
    # a fixed route's path, whatever the method (Klein's map decides), odd paths, other methods: through Klein
    for method, path in [(b"GET", b"/v2/"), (b"POST", b"/v2/_catalog"), (b"GET", b"/v2/_catalog"), (b"GET", b"/v2/token"), (b"POST", b"/v2/token"),
                         (b"GET", b"/v2/_izreg/repositories"), (b"POST", b"/v2/_izreg/pulls"), (b"GET", b"/v2"),
                         (b"GET", b"/v2//x/tags/list"), (b"GET", b"/v2/a%0a/tags/list"), (b"GET", b"/v2/a b/tags/list"),
                         (b"GET", b"/v2/%ff/tags/list"), (b"OPTIONS", f"/v2/{NAME}/tags/list".encode()),
                         (b"GET", b"/healthz"), (b"GET", b"/ui/app.js")]:
        assert fast.rest_of(Request(method, path)) is None, (method, path)


FUZZ_PARTS = ["v2", ACCOUNT, "app", "", "manifests", "blobs", "uploads", "tags", "list", "referrers", "_catalog",
              "sha256:" + "0" * 64, "%ff", "%00", "%2F", "..", "_izreg", "a" * 300, "UPPER", "token", "v1", "x y"]


@pytest_twisted.ensureDeferred
async def test_the_fast_path_answers_as_klein_does(server):
    """The same requests, through the fast path and through Klein alone: the same status, error code and Allow."""
    import json
    import random

    rng = random.Random(13)
    requests = [(m, t) for m, t in REQUESTS]
    for _ in range(120):
        path = "/" + "/".join(rng.choice(FUZZ_PARTS) for _ in range(rng.randint(1, 6)))
        requests.append((rng.choice(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]), path.replace(" ", "%20")))
    fast = server.service.site.resource

    async def answers():
        got = []
        for method, target in requests:
            body = b"{}" if method in ("PUT", "PATCH", "POST") else b""
            head = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            status, headers, content = parse_raw(await raw_answer(server, head + body, head=method == "HEAD"))
            code = json.loads(content)["errors"][0]["code"] if status >= 400 and method != "HEAD" else None
            got.append((method, target, status, code, headers.get("allow"), headers.get("content-type")))
        return got

    through_fast = await answers()
    methods, fast.methods = fast.methods, frozenset()  # every request through Klein
    try:
        through_klein = await answers()
    finally:
        fast.methods = methods
    assert through_fast == through_klein


# -- a handler that waits goes on under a Deferred from where it stopped (izreg.http.fastpath._resume) ------------


def _started(coroutine):
    """C{coroutine} run to its first wait: (the coroutine, what it waits on)."""
    return coroutine, coroutine.send(None)


def test_a_handler_that_waits_goes_on_where_it_stopped():
    from twisted.internet.defer import Deferred, ensureDeferred

    from izreg.http.fastpath import _resume

    first, second = Deferred(), Deferred()
    steps = []

    async def handler():
        steps.append(await first)
        try:
            await second
        except ValueError as e:
            steps.append(f"caught {e}")
        return "answer"

    d = ensureDeferred(_resume(*_started(handler())))
    assert steps == [] and not d.called
    first.callback("one")
    assert steps == ["one"] and not d.called
    second.errback(ValueError("two"))
    assert steps == ["one", "caught two"] and d.result == "answer"


def test_a_waiting_handler_is_cancelled_and_its_errors_come_out():
    from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

    from izreg.http.fastpath import _resume

    seen = []

    async def handler(waited):
        try:
            await waited
        except CancelledError:
            seen.append("cancelled")
            raise

    d = ensureDeferred(_resume(*_started(handler(Deferred()))))
    d.cancel()  # as the fast path does when the client goes away
    assert seen == ["cancelled"]
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(CancelledError)

    async def failing(waited):
        await waited
        raise KeyError("boom")

    waited = Deferred()
    d = ensureDeferred(_resume(*_started(failing(waited))))
    waited.callback(None)
    d.addErrback(failures.append)
    assert failures[1].check(KeyError)


# -- the response's head: the headers twisted.web's own process would set, in its order (izreg.http.bodies) ------


def test_the_date_is_formatted_once_a_second_as_twisted_would():
    from twisted.web.http import datetimeToString

    from izreg.http.bodies import _HTTPDate

    now = [1700000000.25]
    date = _HTTPDate(lambda: now[0])
    first = date()
    assert first == datetimeToString(1700000000.25) == b"Tue, 14 Nov 2023 22:13:20 GMT"
    now[0] = 1700000000.99
    assert date() is first  # the same second: the same bytes, not formatted again
    now[0] = 1700000001.0
    assert date() == datetimeToString(1700000001.0) == b"Tue, 14 Nov 2023 22:13:21 GMT"


@pytest_twisted.ensureDeferred
async def test_a_repository_answer_has_twisted_webs_headers_in_its_order(server):
    import email.utils
    import time

    from twisted.web.server import version

    from tests.http.helpers import raw_get

    for path in [f"/v2/{NAME}/tags/list", f"/v2/{NAME}/manifests/v1", "/v2/"]:  # the fast path, and Klein
        answer = await raw_answer(server, raw_get(path.encode()))
        lines = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        headers = [tuple(line.split(b": ", 1)) for line in lines]
        assert [name for name, _ in headers] == [
            b"Connection", b"Docker-Distribution-Api-Version", b"X-Request-Id", b"Server", b"Date",
            b"Content-Type", b"Content-Length"], path
        values = dict(headers)
        assert values[b"Server"] == version
        sent = email.utils.parsedate_to_datetime(values[b"Date"].decode()).timestamp()
        assert time.time() - 2 <= sent <= time.time()


def test_a_connection_asks_its_addresses_once():
    """Every request asks its channel for both addresses; TCP's getHost is a getsockname(2) each time."""
    from twisted.internet.testing import StringTransport

    from izreg.http.bodies import RegistryChannel

    class Counting(StringTransport):
        asked = 0

        def getHost(self):
            self.asked += 1
            return super().getHost()

        def getPeer(self):
            self.asked += 1
            return super().getPeer()

    transport = Counting()
    channel = RegistryChannel()
    channel.transport = transport
    hosts = {id(channel.getHost()) for _ in range(3)}
    peers = {id(channel.getPeer()) for _ in range(3)}
    assert len(hosts) == len(peers) == 1 and transport.asked == 2
    assert channel.getHost() == transport.getHost() and channel.getPeer() == transport.getPeer()
