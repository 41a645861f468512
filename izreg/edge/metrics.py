# -*- test-case-name: tests.edge.test_metrics -*-
"""
The edge's Prometheus metrics (``izreg_edge_*``): prometheus-client, a
C{CollectorRegistry} of the edge's own (never the process-global one),
served as the server's are, on a listener of their own
(``--metrics-listen``, ``[edge] metrics_listen``; off by default) by the
library's WSGI exposition (L{izreg.service.metrics.scrape_resource}).

Per request (at its end, with its log line): one counter of requests by
source (the log line's word: hit, miss, offline, relay, local, refused,
unavailable) and status, one of body bytes sent by source, one of responses
cut by reason. Everything else
is what the edge already keeps, read at scrape time in the exposition's
thread (ints, and two short LMDB reads): the registry's state
(L{izreg.edge.upstream.Upstream}), the cache's size and evictions, the bytes
fetched into it, the downloads in flight, the pull reports waiting, C{edge.response_memory}
and the pins.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from izreg.http.accesslog import CUT_REASONS
from izreg.service.metrics import ResponseMemoryCollector, scrape_resource

#: the states of a pin (C{izreg-edge pins}): fetched and current, its last try failed, never fetched yet
PIN_STATES = ("fetched", "failed", "pending")


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("izreg_edge_requests", "Requests answered, by source (hit, miss, offline: from"
                                " the cache while the registry is unreachable, relay, local, refused, unavailable)"
                                " and status", ["source", "status"], registry=r)
        self.response_bytes = Counter("izreg_edge_response_bytes", "Response body bytes sent, by source (hit and"
                                      " offline: from the cache)", ["source"], registry=r)
        self.cuts = Counter("izreg_edge_responses_cut", "Responses the edge cut after their head was sent (the"
                            " log line's \"(cut: ...)\"), by reason: slow_reader (the client read nothing for"
                            " edge.send_timeout), unreadable (the cache's file, or the registry's answer, broke"
                            " off), failed (the handler)", ["reason"], registry=r)
        #: each reason's series (all shown from the start, at 0)
        self._cuts = {reason: self.cuts.labels(reason) for reason in CUT_REASONS}
        #: each request's series, by (source, status): C{labels()} looks them up at ~3 us each
        self._series: dict[tuple[str, str], tuple] = {}
        self._edge = None

    def observe_request(self, source: str, status: int, sent: int, cut: str | None = None) -> None:
        """
        A request ended (L{izreg.edge.proxy.EdgeRequest}): its source, status and body bytes sent, and why the
        edge cut it (L{izreg.http.accesslog.CUT_REASONS}), if it did.
        """
        code = str(status) if 100 <= status <= 599 else "other"
        series = self._series.get((source, code))
        if series is None:  # sources are the proxy's few words, statuses bounded: so is this
            series = self._series[(source, code)] = (self.requests.labels(source, code),
                                                     self.response_bytes.labels(source))
        requests, sent_bytes = series
        requests.inc()
        sent_bytes.inc(sent)
        if cut is not None:
            cuts = self._cuts.get(cut)
            if cuts is not None:
                cuts.inc()

    def watch(self, api, pinner=None) -> None:
        """
        What the edge keeps, from the API bound to its cache and upstream (L{izreg.edge.proxy.EdgeAPI.bind})
        and its L{izreg.edge.pins.Pinner}, replacing an earlier start's.
        """
        if self._edge is not None:
            for collector in self._edge:
                self.registry.unregister(collector)
        self._edge = [EdgeCollector(api, pinner)]
        if api.responses is not None:
            self._edge.append(ResponseMemoryCollector(api.responses, "izreg_edge", "edge.response_memory",
                                                      "manifests of misses"))
        for collector in self._edge:
            self.registry.register(collector)

    def resource(self, reactor, pool):
        return scrape_resource(self.registry, reactor, pool)


class EdgeCollector:
    """The edge's state, read at scrape time (ints; the cache's total and pins: short LMDB reads)."""

    def __init__(self, api, pinner=None) -> None:
        self.api, self.pinner = api, pinner

    def describe(self):
        return []

    def collect(self):
        api = self.api
        upstream, cache = api.upstream, api.cache
        yield GaugeMetricFamily("izreg_edge_upstream_reachable", "1 if the registry answered the last request"
                                " sent to it (a pull, pin, report or check), 0 if it did not: pulls are then"
                                " served from the cache", value=0 if upstream.unreachable is not None else 1)
        yield GaugeMetricFamily("izreg_edge_upstream_refused", "1 while the registry answers 401 to this gateway's"
                                " device certificate (revoked, or its account deleted)",
                                value=0 if upstream.refused is None else 1)
        yield CounterMetricFamily("izreg_edge_upstream_failures", "Requests to the registry that did not reach it"
                                  " (refused, timed out, a TLS failure)", value=upstream.failures)
        family = CounterMetricFamily("izreg_edge_fetched_bytes", "Bytes received from the registry to keep in"
                                     " the cache (misses and pins), by kind", labels=["kind"])
        for kind, size in api.fetched_bytes.items():
            family.add_metric([kind], size)
        yield family
        yield GaugeMetricFamily("izreg_edge_cache_bytes", "Bytes of content in the cache", value=cache.total)
        yield GaugeMetricFamily("izreg_edge_cache_limit_bytes", "Bound of the cache (edge.cache_size)",
                                value=cache.limit)
        yield CounterMetricFamily("izreg_edge_cache_evictions", "Entries evicted from the cache (least recently"
                                  " used first) to keep it within edge.cache_size", value=cache.evictions)
        yield CounterMetricFamily("izreg_edge_cache_evicted_bytes", "Bytes of the entries evicted from the cache",
                                  value=cache.evicted_bytes)
        yield GaugeMetricFamily("izreg_edge_downloads", "Blobs being fetched from the registry",
                                value=len(api.downloads))
        if api.reporter is not None:
            yield GaugeMetricFamily("izreg_edge_pending_reports", "Pulls served from the cache not yet reported"
                                    " to the registry (counted up to 1000)", value=api.reporter.pending)
        if self.pinner is None:
            return
        counts = dict.fromkeys(PIN_STATES, 0)
        for state in cache.pins().values():
            counts["failed" if state.get("problem") else "fetched" if state.get("digest") else "pending"] += 1
        family = GaugeMetricFamily("izreg_edge_pins", "Pinned images, by state: fetched (and current), failed"
                                   " (the last try; izreg-edge pins says why), pending (not fetched yet)",
                                   labels=["state"])
        for name, count in counts.items():
            family.add_metric([name], count)
        yield family
        family = CounterMetricFamily("izreg_edge_pin_fetches", "Pins fetched (a new digest, or content missing)"
                                     " and pin refreshes that failed", labels=["result"])
        family.add_metric(["fetched"], self.pinner.fetched)
        family.add_metric(["failed"], self.pinner.failed)
        yield family
