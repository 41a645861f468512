"""
The edge's log while the registry is away (izreg/edge/upstream.py): one
warning when it stops answering, one info line when it answers again, and
the lines repeated meanwhile (pull reports every interval, a cache hit per
request, pin refreshes) at their own level once an outage, then at debug.
The real pull reports (izreg.edge.reports) over a real edge cache, to a real
HTTP server on loopback that stops listening and comes back. Debug lines
reach the file twistd logs to only at ``[edge] log_level = "debug"``.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import ILogObserver, Logger, capturedLogs, formatEvent
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site

from izreg.edge.cache import EdgeCache
from izreg.edge.config import load
from izreg.edge.reports import Reporter
from izreg.edge.service import make_edge
from izreg.edge.upstream import Upstream, collect


class Registry(Resource):
    """GET: {}; POST (the pull reports): 202."""

    isLeaf = True

    def render_GET(self, request):
        return b"{}"

    def render_POST(self, request):
        request.setResponseCode(202)
        return b""


def edge_lines(events) -> list[tuple[str, str]]:
    """(level, text) of izreg.edge's log events."""
    return [(e["log_level"].name, formatEvent(e)) for e in events if e.get("log_namespace", "").startswith("izreg.edge")]


@pytest_twisted.ensureDeferred
async def test_an_outage_is_two_lines_and_the_repeated_ones_are_debug(tmp_path):
    site = Site(Registry())
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    number = port.getHost().port
    upstream = Upstream(reactor, f"http://127.0.0.1:{number}", BrowserLikePolicyForHTTPS(), 5, 10)
    cache = EdgeCache(str(tmp_path), limit=10_000)
    reports = Reporter(cache, upstream, time.time)
    cache.queue_reports([{"repository": "a/app", "digest": "sha256:" + "1" * 64, "time": 1}], time.time())
    try:
        with capturedLogs() as events:
            assert await collect(await upstream.request("GET", "/v2/"), 64) == b"{}"  # online: nothing logged
            await upstream.close()  # the read response's connection too: the next request connects
            await port.stopListening()
            for _ in range(3):  # the reports' timer, three ticks offline
                assert await reports.send() == 0
            assert [upstream.first_offline("cache") for _ in range(2)] == [True, False]  # a cache hit per request
            port = await TCP4ServerEndpoint(reactor, number, interface="127.0.0.1").listen(site)
            assert await reports.send() == 1
            await upstream.close()
            await port.stopListening()
            cache.queue_reports([{"repository": "a/app", "digest": "sha256:" + "2" * 64, "time": 2}], time.time())
            for _ in range(2):  # a new outage: told once again
                assert await reports.send() == 0
            assert upstream.first_offline("cache")
        lines = edge_lines(events)
        assert [(level, text.split(":")[0]) for level, text in lines] == [
            ("warn", f"the registry http"),
            ("info", "1 pull report waiting"),
            ("debug", "1 pull report waiting"),
            ("debug", "1 pull report waiting"),
            ("info", f"the registry http"),
            ("info", "reported 1 pull served from the cache"),
            ("warn", f"the registry http"),
            ("info", "1 pull report waiting"),
            ("debug", "1 pull report waiting"),
        ], lines
        assert "is unreachable" in lines[0][1] and "refused" in lines[0][1]
        assert "answers again" in lines[4][1] and "is unreachable" in lines[6][1]
    finally:
        await upstream.close()
        if port.connected:
            await port.stopListening()
        cache.close()


@pytest.mark.parametrize("level, written", [("info", ["went away"]), ("debug", ["still away", "went away"])])
def test_debug_lines_reach_the_log_file_only_at_log_level_debug(tmp_path, level, written):
    config = load(None, {"upstream": "https://registry.example:5443", "device_cert": "c.pem",
                         "device_key": "k.pem", "log_level": level})
    path = tmp_path / "edge.log"
    edge = make_edge(config, reactor, None, twistd_options={"logfile": str(path), "nodaemon": False})
    application = Application("izreg-edge")
    edge.setServiceParent(application)
    observer = application.getComponent(ILogObserver)  # what twistd then logs through, instead of its own
    assert observer is edge.log_observer is not None
    log = Logger(namespace="izreg.edge.upstream", observer=observer)
    log.debug("the registry is still away")
    log.warn("the registry went away")
    text = path.read_text()
    assert [line for line in ("still away", "went away") if line in text] == written
