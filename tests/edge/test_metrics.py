"""
The edge's Prometheus metrics (izreg/edge/metrics.py): the real edge API
(L{izreg.edge.proxy.EdgeAPI}, its site and cache) on a loopback port,
before a real HTTP server standing in for the registry, pulled from by a
real client; C{/metrics} scraped from its own loopback listener (the
library's WSGI exposition) and parsed by prometheus-client's parser.
tests/edge/test_edge_e2e.py scrapes the real ``twistd izreg edge``.
"""

from __future__ import annotations

import json
import time

import pytest_twisted
from treq.client import HTTPClient
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from izreg.core.digest import Digest
from izreg.edge.cache import EdgeCache
from izreg.edge.config import load
from izreg.edge.metrics import EdgeMetrics
from izreg.edge.pins import Pinner
from izreg.edge.proxy import EdgeAPI, EdgeSite
from izreg.edge.reports import Reporter
from izreg.edge.service import EdgeOptions, make_edge
from izreg.edge.upstream import Upstream
from izreg.http.accesslog import CUT_REASONS
from izreg.http.limits import BodyBudget
from izreg.service.metrics import ScrapeSite

ACCOUNT = "0123456789abcdef0123456789abcdef"
REPO = f"{ACCOUNT}/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = b"layer bytes " * 1000
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [
    {"mediaType": "application/octet-stream", "digest": str(Digest.of(LAYER)), "size": len(LAYER)}]}).encode()
MANIFEST_DIGEST, LAYER_DIGEST = str(Digest.of(MANIFEST)), str(Digest.of(LAYER))


class Registry(Resource):
    """C{REPO}'s manifest (by tag v1 and digest) and its layer; any other repository: 404."""

    isLeaf = True

    def render(self, request):
        path = request.path.decode()
        if path == f"/v2/{REPO}/blobs/{LAYER_DIGEST}":
            data, media_type = LAYER, "application/octet-stream"
        elif path in (f"/v2/{REPO}/manifests/v1", f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}"):
            data, media_type = MANIFEST, OCI_MANIFEST
        else:
            request.setResponseCode(404)
            return b'{"errors": [{"code": "NAME_UNKNOWN"}]}'
        request.setHeader(b"Content-Type", media_type.encode())
        request.setHeader(b"Docker-Content-Digest", str(Digest.of(data)).encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        return b"" if request.method == b"HEAD" else data


async def stand_in_edge(tmp_path, cache_limit: int = 10_000_000):
    """The stand-in registry on loopback and an edge API bound to it: (registry port, upstream, cache, reporter, api)."""
    registry_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Registry()))
    upstream = Upstream(reactor, f"http://127.0.0.1:{registry_port.getHost().port}", BrowserLikePolicyForHTTPS(), 5, 10)
    cache = EdgeCache(str(tmp_path / "cache"), limit=cache_limit)
    reporter = Reporter(cache, upstream, time.time)
    api = EdgeAPI()
    api.bind(upstream, cache, reporter, time.time, 4 * 1024 * 1024, BodyBudget(8 * 1024 * 1024))
    return registry_port, upstream, cache, reporter, api


def samples(text: str) -> dict:
    """(name, labels as sorted tuples) -> value, of every sample of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest_twisted.ensureDeferred
async def test_requests_bytes_registry_state_cache_budget_and_pins_are_scraped(tmp_path):
    registry_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Registry()))
    upstream = Upstream(reactor, f"http://127.0.0.1:{registry_port.getHost().port}", BrowserLikePolicyForHTTPS(), 5, 10)
    cache = EdgeCache(str(tmp_path / "cache"), limit=10_000_000)
    reporter = Reporter(cache, upstream, time.time)
    api = EdgeAPI()
    api.bind(upstream, cache, reporter, time.time, 4 * 1024 * 1024, BodyBudget(8 * 1024 * 1024))
    pinner = Pinner(api, (f"{REPO}:v1", f"{ACCOUNT}/gone:v1"))
    pinner.adopt_config_pins()
    metrics = EdgeMetrics()
    metrics.watch(api, pinner)
    edge_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        EdgeSite(api.resource(), metrics=metrics))
    scrape_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ScrapeSite(metrics.resource(reactor, reactor.getThreadPool())))
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    edge = f"http://127.0.0.1:{edge_port.getHost().port}"

    async def get(path: str) -> tuple[int, bytes]:
        response = await client.get(edge + path)
        return response.code, await response.content()

    async def scrape() -> dict:
        response = await client.get(f"http://127.0.0.1:{scrape_port.getHost().port}/metrics")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        return samples((await response.content()).decode())

    manifest_path, layer_path = f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}", f"/v2/{REPO}/blobs/{LAYER_DIGEST}"
    try:
        before = await scrape()
        assert before[("izreg_edge_upstream_reachable", ())] == 1
        assert before[("izreg_edge_cache_bytes", ())] == 0
        assert before[("izreg_edge_cache_limit_bytes", ())] == 10_000_000
        assert before[("izreg_edge_response_memory_limit_bytes", ())] == 8 * 1024 * 1024
        assert before[("izreg_edge_response_memory_refused_total", ())] == 0
        assert before[("izreg_edge_pins", (("state", "pending"),))] == 2
        assert not [key for key in before if key[0] == "izreg_edge_requests_total"]
        cuts = [("izreg_edge_responses_cut_total", (("reason", reason),)) for reason in CUT_REASONS]
        assert [before[key] for key in cuts] == [0, 0, 0]  # each reason there from the start

        assert await get(manifest_path) == (200, MANIFEST)
        assert await get(layer_path) == (200, LAYER)
        download = api.downloads.get(LAYER_DIGEST)
        if download is not None:  # the client can have the whole body before the blob is verified and counted
            assert await download.done()
        missed = await scrape()
        assert missed[("izreg_edge_requests_total", (("source", "miss"), ("status", "200")))] == 2
        assert missed[("izreg_edge_response_bytes_total", (("source", "miss"),))] == len(MANIFEST) + len(LAYER)
        assert missed[("izreg_edge_fetched_bytes_total", (("kind", "manifest"),))] == len(MANIFEST)
        assert missed[("izreg_edge_fetched_bytes_total", (("kind", "blob"),))] == len(LAYER)
        assert missed[("izreg_edge_cache_bytes", ())] == len(MANIFEST) + len(LAYER)

        assert await get(manifest_path) == (200, MANIFEST)
        assert await get(layer_path) == (200, LAYER)
        await reporter.flush_writes()
        hit = await scrape()
        assert hit[("izreg_edge_requests_total", (("source", "hit"), ("status", "200")))] == 2
        assert hit[("izreg_edge_response_bytes_total", (("source", "hit"),))] == len(MANIFEST) + len(LAYER)
        assert hit[("izreg_edge_fetched_bytes_total", (("kind", "blob"),))] == len(LAYER)  # nothing fetched again
        assert hit[("izreg_edge_pending_reports", ())] == 1  # the manifest's pull, served from the cache

        await pinner.refresh()  # the app's pin: cached already, its digest set; the other: the registry's 404
        pinned = await scrape()
        assert pinned[("izreg_edge_pins", (("state", "fetched"),))] == 1
        assert pinned[("izreg_edge_pins", (("state", "failed"),))] == 1
        assert pinned[("izreg_edge_pin_fetches_total", (("result", "fetched"),))] == 1
        assert pinned[("izreg_edge_pin_fetches_total", (("result", "failed"),))] == 1
        assert pinned[("izreg_edge_upstream_failures_total", ())] == 0

        await registry_port.stopListening()  # the registry goes away
        await upstream.close()
        assert await get(manifest_path) == (200, MANIFEST)  # from the cache, offline
        code, _ = await get(f"/v2/{REPO}/blobs/{str(Digest.of(b'other'))}")
        assert code == 503
        offline = await scrape()
        assert offline[("izreg_edge_upstream_reachable", ())] == 0
        assert offline[("izreg_edge_upstream_failures_total", ())] == 2
        assert offline[("izreg_edge_requests_total", (("source", "offline"), ("status", "200")))] == 1
        assert offline[("izreg_edge_requests_total", (("source", "unavailable"), ("status", "503")))] == 1
        assert offline[("izreg_edge_response_bytes_total", (("source", "offline"),))] == len(MANIFEST)
        assert [offline[key] for key in cuts] == [0, 0, 0]  # nothing cut (tests/edge/test_edge_large_manifests.py)
    finally:
        await reporter.flush_writes()
        await upstream.close()
        await edge_port.stopListening()
        await scrape_port.stopListening()
        if registry_port.connected:
            await registry_port.stopListening()
        cache.close()


REQUIRED = {"upstream": "https://registry.example:5443", "device_cert": "c.pem", "device_key": "k.pem"}


def test_the_metrics_listener_is_there_only_when_configured(tmp_path):
    # as the server's [metrics] listen: none by default, and then nothing is counted per request
    plain = make_edge(load(None, REQUIRED), reactor, None)
    assert plain.metrics is None and plain.site.metrics is None
    assert [type(s.factory).__name__ for s in plain if hasattr(s, "factory")] == ["RefuseTLSFactory"]
    path = tmp_path / "edge.toml"
    path.write_text('[edge]\nmetrics_listen = ["tcp:9108:interface=127.0.0.1"]\n')
    top = make_edge(load(str(path), REQUIRED), reactor, None)
    assert isinstance(top.metrics, EdgeMetrics) and top.site.metrics is top.metrics
    scrapes = [s for s in top if isinstance(getattr(s, "factory", None), ScrapeSite)]
    assert len(scrapes) == 1


def test_metrics_listen_option_is_repeatable_and_checked(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    options = EdgeOptions()
    try:
        options.parseOptions(["--upstream", "https://registry.example:5443", "--device-cert", str(cert),
                              "--device-key", str(key), "--metrics-listen", "tcp:9108:interface=127.0.0.1",
                              "--metrics-listen", "tcp:9109:interface=127.0.0.1"])
    except SystemExit as e:  # the device files are not there: the TLS check comes after the endpoints'
        assert "TLS" in str(e), e
    else:
        raise AssertionError("no device certificate, yet accepted")
    assert options["metrics-listen"] == ["tcp:9108:interface=127.0.0.1", "tcp:9109:interface=127.0.0.1"]
    bad = EdgeOptions()
    try:
        bad.parseOptions(["--upstream", "https://registry.example:5443", "--device-cert", str(cert),
                          "--device-key", str(key), "--metrics-listen", "tcpp:9108"])
    except SystemExit as e:
        assert "--metrics-listen 'tcpp:9108' is not a valid Twisted endpoint string" in str(e), e
    else:
        raise AssertionError("a bad endpoint string accepted")


@pytest_twisted.ensureDeferred
async def test_evictions_from_the_cache_are_counted_with_their_bytes(tmp_path):
    """A cache bound to the layer's size: the layer evicts the manifest, the manifest fetched again the layer."""
    registry_port, upstream, cache, reporter, api = await stand_in_edge(tmp_path, cache_limit=len(LAYER))
    metrics = EdgeMetrics()
    metrics.watch(api)
    edge_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(EdgeSite(api.resource()))
    scrape_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ScrapeSite(metrics.resource(reactor, reactor.getThreadPool())))
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    edge = f"http://127.0.0.1:{edge_port.getHost().port}"

    async def get(path: str) -> bytes:
        response = await client.get(edge + path)
        assert response.code == 200
        body = await response.content()
        download = api.downloads.get(LAYER_DIGEST)
        if download is not None:  # the client can have the whole body before the blob is kept (and evicts)
            await download.done()
        return body

    async def evictions() -> tuple[float, float]:
        response = await client.get(f"http://127.0.0.1:{scrape_port.getHost().port}/metrics")
        scraped = samples((await response.content()).decode())
        return scraped[("izreg_edge_cache_evictions_total", ())], scraped[("izreg_edge_cache_evicted_bytes_total", ())]

    try:
        assert await evictions() == (0, 0)
        assert await get(f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}") == MANIFEST
        assert await evictions() == (0, 0)
        assert await get(f"/v2/{REPO}/blobs/{LAYER_DIGEST}") == LAYER
        assert cache.entry(MANIFEST_DIGEST) is None
        assert await evictions() == (1, len(MANIFEST))
        assert await get(f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}") == MANIFEST
        assert cache.entry(LAYER_DIGEST) is None
        assert await evictions() == (2, len(MANIFEST) + len(LAYER))
    finally:
        await reporter.flush_writes()
        await upstream.close()
        await edge_port.stopListening()
        await scrape_port.stopListening()
        await registry_port.stopListening()
        cache.close()
