"""
The edge's check of the registry (izreg.edge.upstream.Upstream.check): a
C{GET /v2/} that keeps /healthz's state current when nothing else asks the
registry, and is not sent when something else did. A real Upstream over
loopback HTTP to a real server standing in for the registry, which counts
its requests, answers C{/v2/} with a chosen status and can hold one answer.
tests/edge/test_edge_e2e.py has it from the real edge before a real registry.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from izreg.edge.config import load
from izreg.edge.service import make_edge
from izreg.edge.upstream import Upstream, collect


class Registry(Resource):
    """C{/v2/}: C{code} (a 401 with the registry's words); C{/v2/held}: held until C{release}; requests by path."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.paths: list[str] = []
        self.asked, self.release = defer.Deferred(), defer.Deferred()

    def render(self, request):
        path = request.path.decode()
        self.paths.append(path)
        if path == "/v2/held":
            self.asked.callback(None)
            self.release.addCallback(lambda _: (request.write(b"{}"), request.finish()))
            return NOT_DONE_YET
        request.setResponseCode(self.code if path == "/v2/" else 200)
        if request.code == 401:
            return b'{"errors": [{"code": "UNAUTHORIZED", "message": "device certificate rejected: revoked"}]}'
        return b"{}"

    @property
    def checks(self) -> int:
        return self.paths.count("/v2/")


async def answered(upstream: Upstream, path: str) -> None:
    await collect(await upstream.request("GET", path), 1024)


@pytest_twisted.ensureDeferred
async def test_the_check_asks_only_when_nothing_else_did():
    registry = Registry()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(registry))
    upstream = Upstream(reactor, f"http://127.0.0.1:{port.getHost().port}", BrowserLikePolicyForHTTPS(), 5, 10)
    try:
        await upstream.check()
        await upstream.check()  # its own request is not "another": an idle edge checks every time
        assert registry.checks == 2
        await answered(upstream, "/v2/a/manifests/v1")  # a pull since the last check: no check
        await upstream.check()
        assert registry.checks == 2
        await upstream.check()
        assert registry.checks == 3
        # a request awaiting its answer: its outcome will tell, no check; nor at the next run (it was answered)
        held = defer.ensureDeferred(answered(upstream, "/v2/held"))
        await registry.asked
        await upstream.check()
        registry.release.callback(None)
        await held
        await upstream.check()
        assert registry.checks == 3
        await upstream.check()
        assert registry.paths == ["/v2/", "/v2/", "/v2/a/manifests/v1", "/v2/", "/v2/held", "/v2/"]
        # what it hears is /healthz's state: a 401 refuses the gateway, a 2xx accepts it again
        registry.code = 401
        await upstream.check()
        assert upstream.refused is not None and "device certificate rejected: revoked" in upstream.refused
        registry.code = 200
        await upstream.check()
        assert upstream.refused is None and upstream.unreachable is None
        await port.stopListening()  # the registry goes away
        await upstream.close()
        await upstream.check()
        assert upstream.unreachable is not None and "refused the connection" in upstream.unreachable
    finally:
        await upstream.close()
        await defer.maybeDeferred(port.stopListening)  # a second stop is a no-op


REQUIRED = {"upstream": "https://registry.example:5443", "device_cert": "c.pem", "device_key": "k.pem"}


@pytest.mark.parametrize("interval", [0, 7])
def test_the_check_timer_is_there_unless_the_interval_is_0(tmp_path, interval):
    path = tmp_path / "edge.toml"
    path.write_text(f"[edge]\nupstream_check_interval = {interval}\n")
    top = make_edge(load(str(path), REQUIRED), reactor, None)
    timers = [s for s in top if s.name == "upstream-check"]
    assert [t.step for t in timers] == ([interval] if interval else [])


@pytest_twisted.ensureDeferred
async def test_a_request_cancelled_for_a_client_gone_is_no_outage():
    # a local client that closes while its miss awaits the registry cancels the request: the registry did not
    # fail, so /healthz stays "ok" (was upstream_unreachable, "could not be reached (CancelledError)") and the
    # handler ends cancelled (was an Unavailable error logged as unhandled for a request already gone)
    registry = Registry()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(registry))
    upstream = Upstream(reactor, f"http://127.0.0.1:{port.getHost().port}", BrowserLikePolicyForHTTPS(), 5, 10)
    try:
        held = defer.ensureDeferred(upstream.request("GET", "/v2/held"))
        await registry.asked
        held.cancel()
        with pytest.raises(defer.CancelledError):
            await held
        assert upstream.unreachable is None
        registry.release.callback(None)
        await answered(upstream, "/v2/a/manifests/v1")  # and the next request is sent as usual
        assert upstream.unreachable is None
    finally:
        await upstream.close()
        await port.stopListening()
