"""Metrics from request facts and the index (in memory; the e2e test scrapes a real server)."""

from __future__ import annotations

import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from izreg.core.digest import Digest
from izreg.http.refusals import RefusalLog
from izreg.http.accesslog import CUT_FAILED, CUT_REASONS, CUT_SLOW_READER, CUT_UNREADABLE, RequestInfo
from izreg.service.metrics import Metrics, ScrapeSite
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import Index


def info(**fields) -> RequestInfo:
    base = dict(request_id="r", method="GET", route="/v2/{name}/manifests/{reference}", repository="a/b",
                status=200, bytes_in=0, bytes_out=10, duration=0.01, client="127.0.0.1", account="a" * 32,
                principal="device", key_id=None, device_id="gw-1", authorization=False)
    return RequestInfo(**{**base, **fields})


def test_requests_auth_failures_and_device_pulls():
    metrics = Metrics()
    metrics.observe_request(info())
    metrics.observe_request(info(method="HEAD"))
    metrics.observe_request(info(status=401, principal=None, authorization=True))
    metrics.observe_request(info(status=429, principal=None))
    value = metrics.registry.get_sample_value
    assert value("izreg_device_pulls_total") == 1
    assert value("izreg_auth_failures_total", {"kind": "invalid_credentials"}) == 1
    assert value("izreg_auth_failures_total", {"kind": "rate_limited"}) == 1
    assert value("izreg_http_requests_total", {"route": "/v2/{name}/manifests/{reference}", "method": "GET",
                                               "status": "200"}) == 1
    assert value("izreg_http_response_bytes_total", {"route": "/v2/{name}/manifests/{reference}", "method": "GET"}) == 30
    metrics.observe_request(info(method="BREW", status=405))
    assert value("izreg_http_requests_total", {"route": "/v2/{name}/manifests/{reference}", "method": "OTHER",
                                               "status": "405"}) == 1
    assert b"a/b" not in generate_latest(metrics.registry) and b"BREW" not in generate_latest(metrics.registry)


def test_cut_responses_are_counted_by_reason_and_with_the_status_sent():
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    assert [value("izreg_http_responses_cut_total", {"reason": r}) for r in CUT_REASONS] == [0, 0, 0]
    metrics.observe_request(info(cut=CUT_SLOW_READER))
    metrics.observe_request(info(cut=CUT_UNREADABLE))
    metrics.observe_request(info(cut=CUT_SLOW_READER))
    metrics.observe_request(info())
    assert value("izreg_http_responses_cut_total", {"reason": CUT_SLOW_READER}) == 2
    assert value("izreg_http_responses_cut_total", {"reason": CUT_UNREADABLE}) == 1
    assert value("izreg_http_responses_cut_total", {"reason": CUT_FAILED}) == 0
    assert value("izreg_http_requests_total", {"route": "/v2/{name}/manifests/{reference}", "method": "GET",
                                               "status": "200"}) == 4


def test_storage_gauges(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    try:
        metrics = Metrics()
        metrics.watch_storage(env)
        Index(env).commit_blob("a" * 32 + "/app", Digest.of(b"x" * 100, "sha256"), 100, 0.0, None)
        value = metrics.registry.get_sample_value
        assert value("izreg_blobs") == 1 and value("izreg_blobs_bytes") == 100
        assert value("izreg_manifests") == 0 and value("izreg_upload_sessions") == 0
        assert value("izreg_lmdb_map_used_bytes") + value("izreg_lmdb_map_free_bytes") == value("izreg_lmdb_map_size_bytes")
    finally:
        env.close()


def test_refused_certificates_are_counted_from_the_logs_of_what_refused_them():
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    assert value("izreg_device_certificates_refused_total", {"stage": "tls"}) == 0
    tls, http = (RefusalLog(Logger(), what, clock=Clock()) for what in ("TLS client certificates", "device certificates"))
    metrics.refusals.watch("tls", tls)
    metrics.refusals.watch("http", http)
    for _ in range(7):  # past the burst: counted all the same
        tls.warn("refused {reason}", reason="expired")
    http.warn("refused {reason}", reason="revoked-serial")
    assert value("izreg_device_certificates_refused_total", {"stage": "tls"}) == 7
    assert value("izreg_device_certificates_refused_total", {"stage": "http"}) == 1
    assert Metrics().registry.get_sample_value("izreg_device_certificates_refused_total", {"stage": "tls"}) == 0


def test_response_memory_is_read_from_the_budget_at_scrape_time():
    from izreg.http.limits import BodyBudget

    metrics, budget = Metrics(), BodyBudget(1000)
    metrics.watch_responses(BodyBudget(5))  # an earlier start's, replaced
    metrics.watch_responses(budget)
    value = metrics.registry.get_sample_value
    assert (value("izreg_response_memory_bytes"), value("izreg_response_memory_limit_bytes")) == (0, 1000)
    assert budget.reserve(600) and not budget.reserve(600) and not budget.reserve(401)
    assert value("izreg_response_memory_bytes") == 600
    assert value("izreg_response_memory_refused_total") == 2
    budget.release(600)
    assert budget.reserve(1000)
    assert (value("izreg_response_memory_bytes"), value("izreg_response_memory_refused_total")) == (1000, 2)


def test_body_memory_is_read_from_the_budget_at_scrape_time():
    from izreg.http.limits import BodyBudget

    metrics, budget = Metrics(), BodyBudget(1000, share=400)
    metrics.watch_bodies(BodyBudget(5))  # an earlier start's, replaced
    metrics.watch_bodies(budget)
    value = metrics.registry.get_sample_value
    assert (value("izreg_body_memory_bytes"), value("izreg_body_memory_limit_bytes")) == (0, 1000)
    assert budget.reserve(300, "account:a") and not budget.reserve(200, "account:a")  # past its share
    assert budget.reserve(400, "account:b") and not budget.reserve(400, "account:c")  # past the whole budget
    assert (value("izreg_body_memory_bytes"), value("izreg_body_memory_refused_total")) == (700, 2)
    assert value("izreg_response_memory_bytes") is None  # each budget its own metrics


class _Held(Resource):
    """A root whose every request waits until the test finishes it (C{arrived}: a Deferred per request)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[Deferred] = [Deferred(), Deferred()]

    def render(self, request):
        self.arrived[[d.called for d in self.arrived].index(False)].callback(request)
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_scrape_connection_answering_a_pipelined_request_is_not_idle():
    """The metrics listener closes its longest idle connection for a newcomer, never one whose answer is in progress."""
    root = _Held()
    site = ScrapeSite(root)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = Protocol()
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        client.transport.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await root.arrived[0]
        assert not site.idle_channels and len(site.busy_channels) == 1
        await deferLater(reactor, 0, lambda: None)  # (out of the channel's read: it has both requests then)
        first.finish()  # the pipelined request is read on at once (within finish), and is being answered
        assert root.arrived[1].called
        assert not site.idle_channels and len(site.busy_channels) == 1
        (await root.arrived[1]).finish()
        assert len(site.idle_channels) == 1 and not site.busy_channels
    finally:
        client.transport.abortConnection()
        await port.stopListening()


def test_disk_space_is_read_at_scrape_time(tmp_path):
    # /readyz's disk check answers anyone, without figures: the operator's are here
    import os

    from izreg.storage.capacity import DiskFloor, parse_floor

    metrics, disk = Metrics(), DiskFloor(str(tmp_path), parse_floor("5%"))
    metrics.watch_disk(DiskFloor(str(tmp_path / "an-earlier-start")))  # replaced
    metrics.watch_disk(disk)
    value = metrics.registry.get_sample_value
    st = os.statvfs(tmp_path)
    assert value("izreg_disk_size_bytes") == st.f_blocks * st.f_frsize
    assert 0 < value("izreg_disk_free_bytes") <= value("izreg_disk_size_bytes")
    assert value("izreg_disk_floor_bytes") == int(st.f_blocks * st.f_frsize * 5 / 100)
    disk.floor = parse_floor("0")  # SIGHUP
    assert value("izreg_disk_floor_bytes") == 0
    disk.path = str(tmp_path / "gone")  # statvfs fails: no figures, not wrong ones (nor a failed scrape)
    assert value("izreg_disk_free_bytes") is None and b"izreg_disk" not in generate_latest(metrics.registry)
