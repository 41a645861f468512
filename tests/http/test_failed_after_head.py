"""
A handler that fails after its response has begun (its head, and part of
its body, written) has its connection cut (a reset), never an OCI error
body written into the body it began (and the next pipelined answer read
after it): on every way a handler is run, the repository routes' fast path
(L{izreg.http.fastpath}: a handler that fails at once, one that fails after
a wait, an answer whose resource fails as it renders) and Klein's routes
(the API's error handler, L{izreg.http.app.RegistryAPI._error}).

The real service (L{izreg.tap.make_server}) on a loopback port, with a
handler of our own on a real route; a client that sends two pipelined GETs
and reads nothing (L{tests.http.test_cut_bodies}).
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.helpers.openguard import OpenGuard
from tests.http.conftest import ACCOUNT, start_server
from tests.http.test_cut_bodies import GIVEN, LENGTH, assert_cut, stalled_get

pytestmark = pytest.mark.socket

BLOB = f"/v2/{ACCOUNT}/app/blobs/sha256:{'ab' * 32}".encode()


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    started = await start_server(tmp_path, OpenGuard(), socket=True, max_connections_per_address=0)
    started.port = int(started.url.rsplit(":", 1)[1])
    started.access = []  # the access log's events

    def observe(event):
        if event.get("log_namespace") == "izreg.access":
            started.access.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield started
    finally:
        globalLogPublisher.removeObserver(observe)
        await started.service.stopService()


def assert_logged_cut(server, route: str) -> None:
    """One access line, with the 200 its client was sent and cut=failed (not 499: its client did not go)."""
    [event] = server.access
    assert (event["route"], event["status"], event["cut"]) == (route, 200, "failed")
    assert event["access_line"].endswith(" cut=failed")


def begin(request, given: bytes) -> None:
    """The head of an 8 MiB answer, and C{given} of its body."""
    request.setHeader(b"Content-Type", b"application/octet-stream")
    request.setHeader(b"Content-Length", b"%d" % LENGTH)
    request.write(given)


@pytest.mark.parametrize("waits", [False, True], ids=["at-once", "after-a-wait"])
@pytest_twisted.ensureDeferred
async def test_a_repository_handler_that_fails_after_its_head_is_cut(server, waits):
    given = os.urandom(GIVEN)

    async def get_blob(request, route):
        begin(request, given)
        if waits:
            await deferLater(reactor, 0.01)
        raise RuntimeError("a handler's bug, after its first bytes")

    server.api.get_blob = get_blob
    await assert_cut(stalled_get(server.port, requests=2, path=BLOB), given)
    assert_logged_cut(server, "/v2/{name}/blobs/{digest}")


@pytest_twisted.ensureDeferred
async def test_an_answer_whose_resource_fails_as_it_renders_is_cut(server):
    """Before, the failure was only logged ("Unhandled error writing response"): the connection hung."""
    given = os.urandom(GIVEN)

    class Failing(Resource):
        isLeaf = True

        def render(self, request):
            begin(request, given)
            raise RuntimeError("a resource's bug, after its first bytes")

    async def get_blob(request, route):
        await deferLater(reactor, 0.01)
        return Failing()

    server.api.get_blob = get_blob
    await assert_cut(stalled_get(server.port, requests=2, path=BLOB), given)
    assert_logged_cut(server, "/v2/{name}/blobs/{digest}")


@pytest.mark.parametrize("waits", [False, True], ids=["at-once", "after-a-wait"])
@pytest_twisted.ensureDeferred
async def test_a_klein_route_that_fails_after_its_head_is_cut(server, waits):
    """The browse page's route (/ui/), through Klein and the API's error handler."""
    given = os.urandom(GIVEN)

    class Page:
        def render(self, request, name):
            begin(request, given)
            if not waits:
                raise RuntimeError("a page's bug, after its first bytes")
            failed = defer.Deferred()
            reactor.callLater(0.01, failed.errback, RuntimeError("a page's bug, after a wait"))
            return failed

    server.api.ui = Page()
    await assert_cut(stalled_get(server.port, requests=2, path=b"/ui/"), given)
    assert_logged_cut(server, "/ui/")
