# -*- test-case-name: tests.service.test_metrics -*-
"""
Prometheus metrics (prometheus-client, its own C{CollectorRegistry}, never
the process-global one), served on a listener of their own
(``--metrics-listen``, off by default) by the library's WSGI exposition.

Labels are route templates, methods, status codes and small fixed sets of
kinds: never a repository, digest, tag, account or path, so the number of
series stays bounded whatever clients send.

Request metrics come from the access log's L{RequestInfo}; storage gauges
(blobs, manifests, upload sessions, the LMDB map) are read from the index
at scrape time, in the exposition's thread, cached for a few seconds. The
S3 calls and the PostgreSQL pool: L{izreg.service.backendmetrics}.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web.resource import Resource
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from izreg.http.accesslog import CUT_REASONS, RequestInfo
from izreg.http.limits import PUBLIC_REQUEST, REFUSED, TIER_NAMES

#: request latency buckets, seconds (a manifest GET is ms, a layer PUT may be minutes)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: methods kept as labels; any other is counted as OTHER
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
#: storage totals are recomputed at most this often, seconds
STORAGE_CACHE = 10.0


def auth_failure_kind(info: RequestInfo) -> str | None:
    """The kind of an authentication or authorization failure, from the answer."""
    if info.status == 401:
        return "invalid_credentials" if info.authorization else "missing_credentials"
    if info.status == 403:
        return "denied"
    if info.status == 429:
        return "rate_limited"
    return None


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        labels = ["route", "method"]
        self.requests = Counter("izreg_http_requests", "HTTP requests answered", labels + ["status"], registry=r)
        self.latency = Histogram("izreg_http_request_duration_seconds", "Time from request line to last byte",
                                 labels, buckets=LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter("izreg_http_request_bytes", "Request body bytes received", labels, registry=r)
        self.bytes_out = Counter("izreg_http_response_bytes", "Response body bytes sent", labels, registry=r)
        self.auth_failures = Counter("izreg_auth_failures", "Requests refused for authentication or authorization",
                                     ["kind"], registry=r)
        self.device_pulls = Counter("izreg_device_pulls", "Manifests pulled by edge devices", registry=r)
        self.tls_handshakes = Counter("izreg_tls_handshakes", "TLS handshakes completed", registry=r)
        self.gc_runs = Counter("izreg_gc_runs", "Garbage collection runs", registry=r)
        self.gc_freed = Counter("izreg_gc_freed_bytes", "Bytes freed by garbage collection", registry=r)
        self.cuts = Counter("izreg_http_responses_cut", "Responses the server cut after their head was sent (the"
                            " access log's cut=), by reason: slow_reader (the client read nothing for"
                            " connections.send_timeout), unreadable (storage), failed (the handler)", ["reason"],
                            registry=r)
        #: each reason's series (all shown from the start, at 0)
        self._cuts = {reason: self.cuts.labels(reason) for reason in CUT_REASONS}
        self.webhook_deliveries = Counter("izreg_webhook_deliveries", "Webhook delivery attempts", ["result"], registry=r)
        for result in ("delivered", "failed", "gave_up"):
            self.webhook_deliveries.labels(result)
        #: the refused device certificates' logs (their totals): L{watch_refusals}
        self.refusals = RefusalCollector()
        r.register(self.refusals)
        #: each request's series, by (route, method, status): C{labels()} looks them up at ~3 us each
        self._series: dict[tuple[str, str, str], tuple] = {}

    def observe_request(self, info: RequestInfo) -> None:
        status = str(info.status) if 100 <= info.status <= 599 else "other"
        method = info.method if info.method in METHODS else "OTHER"  # a client may send any token
        series = self._series.get((info.route, method, status))
        if series is None:  # the labels are bounded (routes, methods, statuses), and so is this
            series = self._series[(info.route, method, status)] = (
                self.requests.labels(info.route, method, status), self.latency.labels(info.route, method),
                self.bytes_in.labels(info.route, method), self.bytes_out.labels(info.route, method))
        requests, latency, bytes_in, bytes_out = series
        requests.inc()
        latency.observe(info.duration)
        bytes_in.inc(info.bytes_in)
        bytes_out.inc(info.bytes_out)
        if info.cut is not None:  # the access line's cut= (its status counted above, as sent)
            cuts = self._cuts.get(info.cut)
            if cuts is not None:
                cuts.inc()
        kind = auth_failure_kind(info)
        if kind is not None:
            self.auth_failures.labels(kind).inc()
        if info.principal == "device" and info.method == "GET" and info.status == 200 \
                and info.route == "/v2/{name}/manifests/{reference}":
            self.device_pulls.inc()

    def watch_storage(self, env=None, index=None) -> None:
        """
        The gauges read from the metadata index (any L{IMetadataIndex}; by default
        the LMDB index over C{env}) and, with the LMDB environment C{env}, its map
        (replacing those of an earlier start).
        """
        if index is None:
            from izreg.storage.lmdbindex import Index

            index = Index(env)
        previous = getattr(self, "_storage", None)
        if previous is not None:
            self.registry.unregister(previous)
        self._storage = StorageCollector(index, env)
        self.registry.register(self._storage)

    def watch_s3(self, *clients) -> None:
        """
        Count and time the S3 calls of C{clients} (boto3 clients): L{izreg.service.backendmetrics.S3Metrics},
        made on the first call (no S3 series without S3).
        """
        from izreg.service.backendmetrics import S3Metrics

        if getattr(self, "_s3", None) is None:
            self._s3 = S3Metrics(self.registry)
        for client in clients:
            self._s3.watch(client)

    def watch_s3_queue(self, queue, threads: int) -> None:
        """
        The S3 threads and the calls waiting for one (L{izreg.service.backends.CallQueue}), replacing an
        earlier start's.
        """
        from izreg.service.backendmetrics import S3QueueCollector

        self._watch_budget("_s3_queue", S3QueueCollector(queue, threads))

    def watch_pool(self, pool, queue=None) -> None:
        """
        The PostgreSQL pool (psycopg_pool) and the calls waiting in front of it
        (L{izreg.service.backends.CallQueue}), replacing an earlier start's.
        """
        from izreg.service.backendmetrics import PoolCollector

        self._watch_budget("_pool", PoolCollector(pool, queue))

    def watch_handshakes(self, admission) -> None:
        """The TLS handshakes in progress and waiting (L{izreg.service.tls.admission.HandshakeAdmission})."""
        self.registry.register(HandshakeCollector(admission))

    def watch_responses(self, budget) -> None:
        """
        The large response bodies held in memory until sent (C{budget}: the API's
        L{izreg.http.limits.BodyBudget} of C{limits.response_memory}), replacing an earlier start's.
        """
        self._watch_budget("_responses", ResponseMemoryCollector(budget))

    def watch_bodies(self, budget) -> None:
        """
        The request bodies held in memory (C{budget}: the API's L{izreg.http.limits.BodyBudget} of
        C{limits.body_memory}), replacing an earlier start's.
        """
        self._watch_budget("_bodies", BodyMemoryCollector(budget))

    def _watch_budget(self, attribute: str, collector) -> None:
        previous = getattr(self, attribute, None)
        if previous is not None:
            self.registry.unregister(previous)
        setattr(self, attribute, collector)
        self.registry.register(collector)

    def watch_disk(self, disk) -> None:
        """
        The free space of the data directory's file system and the push floor (C{disk}: the readiness
        L{izreg.storage.capacity.DiskFloor}, its floor re-read on SIGHUP), replacing an earlier start's.
        """
        self._watch_budget("_disk", DiskCollector(disk))

    def watch_connections(self, limits, admission=None) -> None:
        """The site's connections (L{izreg.http.limits.ConnectionLimits}) and those it closed for newer ones."""
        self.registry.register(ConnectionsCollector(limits, admission))

    def resource(self, reactor, pool) -> Resource:
        """The listener's root: C{/metrics} served by the library's WSGI app in C{pool}."""
        return scrape_resource(self.registry, reactor, pool)


def scrape_resource(registry: CollectorRegistry, reactor, pool) -> Resource:
    """
    A metrics listener's root: C{/metrics}, C{registry} served by the library's WSGI app in C{pool}; C{/}
    (where people look first) redirects there, any other path is a short plain-text 404 naming it.
    """
    root = _ScrapeRoot()
    root.putChild(b"metrics", WSGIResource(reactor, pool, make_wsgi_app(registry)))
    return root


class _ScrapeRoot(Resource):
    """The metrics listener's paths other than C{/metrics}: L{_NotMetrics}."""

    def getChild(self, path: bytes, request) -> Resource:
        return _NotMetrics()


class _NotMetrics(Resource):
    """C{GET /} (and HEAD): 302 to C{/metrics}; anything else: a plain-text 404 (not Twisted's HTML page)."""

    isLeaf = True

    def render(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.path == b"/" and request.method in (b"GET", b"HEAD"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/metrics")
            return b"The metrics are at /metrics\n"
        request.setResponseCode(404)
        return b"Not found: the metrics are at /metrics\n"


#: connections a metrics listener keeps open at once, and the seconds one may stay idle: a Prometheus keeps one per
#: target, and without a bound anyone on the management network held as many as it opened (each a file descriptor
#: of the registry's, or the edge's, for Site's 12 hours)
MAX_SCRAPE_CONNECTIONS = 16
SCRAPE_IDLE_TIMEOUT = 60


class _ScrapeChannel(HTTPChannel):
    """A metrics connection that tells its site (L{ScrapeSite}) when a request's answer is in progress, and when done."""

    def __init__(self, site: "ScrapeSite") -> None:
        super().__init__()
        self.scrapes = site

    def connectionMade(self) -> None:
        super().connectionMade()
        self.scrapes.idle(self)

    def allHeadersReceived(self) -> None:
        self.scrapes.busy(self)
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        self.scrapes.idle(self)  # before super(): the pipelined request it reads on is busy again
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self.scrapes.gone(self)
        super().connectionLost(reason)


class ScrapeSite(Site):
    """
    The C{/metrics} listener's site (over L{Metrics.resource}): scrapes are not access-logged; at most
    L{MAX_SCRAPE_CONNECTIONS} open, each closed after L{SCRAPE_IDLE_TIMEOUT} seconds idle. A newcomer past
    them closes the connection idle the longest (none of its requests answered since, a head begun counts as
    idle): else anyone on the management network held all of them, a byte of a request head (or a whole
    request) a minute each, and no scrape got in for as long as it kept that up. Only when each one's answer
    is in progress is the newcomer closed at once.
    """

    def __init__(self, resource, **kwargs) -> None:
        super().__init__(resource, timeout=SCRAPE_IDLE_TIMEOUT, **kwargs)
        #: the connections with no answer in progress (the longest idle first), and the others
        self.idle_channels: OrderedDict[_ScrapeChannel, None] = OrderedDict()
        self.busy_channels: set[_ScrapeChannel] = set()

    @property
    def open(self) -> int:
        return len(self.idle_channels) + len(self.busy_channels)

    def protocol(self):
        return _GenericHTTPChannelProtocol(_ScrapeChannel(self))

    def buildProtocol(self, addr):
        if self.open >= MAX_SCRAPE_CONNECTIONS:
            if not self.idle_channels:
                return None  # every one is being answered: closed at once
            oldest, _ = self.idle_channels.popitem(last=False)
            oldest.transport.abortConnection()  # (its count is given back now: it reads nothing more)
        return super().buildProtocol(addr)

    def idle(self, channel: _ScrapeChannel) -> None:
        self.busy_channels.discard(channel)
        self.idle_channels.pop(channel, None)
        self.idle_channels[channel] = None

    def busy(self, channel: _ScrapeChannel) -> None:
        if self.idle_channels.pop(channel, False) is None:
            self.busy_channels.add(channel)

    def gone(self, channel: _ScrapeChannel) -> None:
        self.idle_channels.pop(channel, None)
        self.busy_channels.discard(channel)

    def log(self, request) -> None:
        pass


class StorageCollector:
    """Gauges from the index, computed in the scrape's thread (a blocking read is fine there)."""

    def __init__(self, index, env=None, clock=time.monotonic) -> None:
        self.index = index
        self.env = env
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def describe(self):
        return []

    def _totals(self) -> dict:
        with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < STORAGE_CACHE:
                return self._cached[1]
            totals = self.index.totals()
            self._cached = (self.clock(), totals)
            return totals

    def collect(self):
        totals = self._totals()
        for name, key, doc in (
            ("izreg_blobs", "blobs", "Blobs stored (each once, however many repositories link it)"),
            ("izreg_blobs_bytes", "blob_bytes", "Bytes of the blobs stored"),
            ("izreg_manifests", "manifests", "Manifests stored (per repository)"),
            ("izreg_manifests_bytes", "manifest_bytes", "Bytes of the manifests stored"),
            ("izreg_upload_sessions", "uploads", "Open upload sessions"),
        ):
            yield GaugeMetricFamily(name, doc, value=totals[key])
        if self.env is None:
            return
        info, stat = self.env.info(), self.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        yield GaugeMetricFamily("izreg_lmdb_map_size_bytes", "Size of the LMDB map", value=info["map_size"])
        yield GaugeMetricFamily("izreg_lmdb_map_used_bytes", "Bytes of the LMDB map in use", value=used)
        yield GaugeMetricFamily("izreg_lmdb_map_free_bytes", "Bytes of the LMDB map still free",
                                value=max(0, info["map_size"] - used))


class DiskCollector:
    """
    The data directory's file system, one C{statvfs} a scrape: what /readyz's C{disk} check compares
    (its figures are for the operator, here, not for anyone who asks /readyz).
    """

    def __init__(self, disk) -> None:
        self.disk = disk

    def describe(self):
        return []

    def collect(self):
        try:
            space = self.disk.space()
        except OSError:
            return  # no figures rather than wrong ones; /readyz says why (its disk check fails)
        yield GaugeMetricFamily("izreg_disk_free_bytes", "Bytes free (to izreg) on the data directory's file system",
                                value=space.free)
        yield GaugeMetricFamily("izreg_disk_size_bytes", "Size of the data directory's file system", value=space.total)
        yield GaugeMetricFamily("izreg_disk_floor_bytes", "Free space below which pushes are refused"
                                " (server.min_free_disk; 0: no floor)", value=space.minimum)


class HandshakeCollector:
    """Gauges of the TLS handshake admission, read at scrape time (ints: no lock needed)."""

    def __init__(self, admission) -> None:
        self.admission = admission

    def describe(self):
        return []

    def collect(self):
        admission = self.admission
        yield GaugeMetricFamily("izreg_tls_handshakes_in_progress", "TLS connections in their handshake",
                                value=admission.in_progress)
        yield GaugeMetricFamily("izreg_tls_handshakes_waiting", "TLS connections waiting for a handshake slot"
                                " (tls.max_handshakes)", value=len(admission.waiting))
        yield CounterMetricFamily("izreg_tls_handshakes_timed_out", "TLS connections closed for a handshake or a"
                                  " wait for one too long", value=admission.timed_out)
        yield GaugeMetricFamily("izreg_tls_known_device_groups", "client groups (address, or network with"
                                " tls.group_ipv4_prefix / group_ipv6_prefix) in which a request authenticated as a"
                                " device: they get handshake slots first (kept across restarts)",
                                value=len(admission.known_groups()))
        yield CounterMetricFamily("izreg_tls_handshakes_dropped", "TLS connections closed while waiting for a"
                                  " handshake slot, for a newer one (tls.max_waiting)", value=admission.dropped)


class ResponseMemoryCollector:
    """
    C{limits.response_memory} (L{izreg.http.responses.held_body}): the bytes of large response bodies held
    until sent, its limit, and the requests refused for it (503). Read at scrape time (ints: no lock needed).
    The edge's (C{edge.response_memory}, its misses' manifests) has the names with C{prefix} "izreg_edge".
    """

    def __init__(self, budget, prefix: str = "izreg", setting: str = "limits.response_memory",
                 bodies: str = "manifests, tag lists, catalog and referrers pages") -> None:
        self.budget = budget
        self.prefix, self.setting, self.bodies = prefix, setting, bodies

    def describe(self):
        return []

    def collect(self):
        budget, prefix = self.budget, self.prefix
        yield GaugeMetricFamily(f"{prefix}_response_memory_bytes", f"Bytes of response bodies over 64 KiB"
                                f" ({self.bodies}) held in memory until sent", value=budget.used)
        yield GaugeMetricFamily(f"{prefix}_response_memory_limit_bytes", "Most bytes of such response bodies held"
                                f" at once ({self.setting})", value=budget.limit)
        yield CounterMetricFamily(f"{prefix}_response_memory_refused", "Requests answered 503 UNAVAILABLE because"
                                  f" their response body would not fit in {self.setting}", value=budget.refused)


class BodyMemoryCollector(ResponseMemoryCollector):
    """C{limits.body_memory} (L{izreg.http.bodies.BoundedBuffer}): the same of request bodies held in memory."""

    def __init__(self, budget) -> None:
        super().__init__(budget, setting="limits.body_memory", bodies="manifests, token forms")

    def collect(self):
        budget = self.budget
        yield GaugeMetricFamily("izreg_body_memory_bytes", f"Bytes of request bodies ({self.bodies}) held in memory"
                                " while they arrive", value=budget.used)
        yield GaugeMetricFamily("izreg_body_memory_limit_bytes", "Most bytes of request bodies held in memory at once"
                                f" ({self.setting})", value=budget.limit)
        yield CounterMetricFamily("izreg_body_memory_refused", "Requests answered 503 UNAVAILABLE because their body"
                                  f" would not fit in {self.setting} (or in their account's or client address's share"
                                  " of it)", value=budget.refused)


class ConnectionsCollector:
    """
    The site's connections (L{izreg.http.limits.ConnectionLimits}): open, idle (by tier), and closed for a
    newer one at C{connections.max_connections} (C{state}: "handshake", before the TLS handshake completed,
    L{izreg.service.tls.admission.HandshakeAdmission.evict}; else the idle connection's tier,
    L{izreg.http.limits.IdleConnections}). Read at scrape time (ints and dict lengths: no lock needed).
    """

    def __init__(self, limits, admission=None) -> None:
        self.limits = limits
        self.admission = admission

    def describe(self):
        return []

    def collect(self):
        limits, idle = self.limits, self.limits.idle
        yield GaugeMetricFamily("izreg_connections_open", "Connections open (connections.max_connections)",
                                value=limits.total)
        family = GaugeMetricFamily("izreg_connections_idle", "Connections with no request in progress, by who"
                                   " holds them (the first closed for a newer one: refused, closing after a refused"
                                   " request; then new; public_request: a request in progress on a route open to"
                                   " anyone from a caller not known, closed before authenticated)",
                                   labels=["client"])
        for name, channels in zip(TIER_NAMES, idle.tiers):
            family.add_metric([name], len(channels))
        yield family
        family = CounterMetricFamily("izreg_connections_evicted", "Connections closed for a newer one"
                                     " (connections.max_connections)", labels=["state"])
        family.add_metric(["handshake"], self.admission.evicted if self.admission is not None else 0)
        for tier, (name, count) in enumerate(zip(TIER_NAMES, idle.evicted)):
            family.add_metric([name if tier in (PUBLIC_REQUEST, REFUSED) else f"idle_{name}"], count)
        yield family


class RefusalCollector:
    """Every refused device certificate, logged in full or not (L{izreg.http.refusals.RefusalLog.total})."""

    def __init__(self) -> None:
        #: stage ("tls": the listener's L{izreg.service.tls.ServerTLS}, "http": the guard) -> its RefusalLog
        self.logs: dict = {"tls": None, "http": None}

    def watch(self, stage: str, refusals) -> None:
        self.logs[stage] = refusals

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily("izreg_device_certificates_refused", "Device (client) certificates refused:"
                                     " at the TLS handshake (chain, validity) or per request (subject, revocation)",
                                     labels=["stage"])
        for stage, refusals in self.logs.items():
            family.add_metric([stage], refusals.total if refusals is not None else 0)
        yield family
