# -*- test-case-name: tests.service.test_backendmetrics -*-
"""
Metrics of the services a multi-node izreg depends on, present only when it
uses them: the S3 bucket (``[storage] backend = "s3"``) and the PostgreSQL
connection pool (``[metadata] backend = "postgresql"``).

S3: every API call of izreg's boto3 clients is counted by operation (the S3
API's name: C{PutObject}, C{UploadPart}...) and outcome, and timed from the
call to its answer's head (retries included: what izreg waited), through
botocore's C{before-call} / C{after-call} / C{after-call-error} events: a
dictionary look-up and two clock reads per call, in the S3 thread that makes
it. Labels are fixed sets: an operation izreg does not call is C{other}.

PostgreSQL: the pool's gauges and counters are read at scrape time from
psycopg_pool's C{get_stats()} and from the queue of calls waiting for one of
the database threads (each holds one connection;
L{izreg.service.backends.CallQueue}), nothing on the calls themselves; the S3
threads' likewise from the queue in front of them.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: S3 call latency buckets, seconds (a HEAD is milliseconds, a 5 MiB part a second, a multi-GiB copy minutes)
S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: the S3 operations izreg calls (izreg.storage.s3); any other is counted as "other"
S3_OPERATIONS = frozenset({
    "HeadBucket", "HeadObject", "GetObject", "PutObject", "CopyObject", "DeleteObject", "DeleteObjects",
    "ListObjectsV2", "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload",
    "AbortMultipartUpload", "ListMultipartUploads", "ListParts",
})
#: the outcomes of an S3 call: ok (2xx), not_found (404: a HEAD of a blob not there is normal), client_error
#: (other 3xx/4xx, or a failure before the request left: credentials), server_error (5xx, after botocore's
#: retries), timeout (connect or read), unreachable (connection refused, reset, closed, no route, DNS)
S3_OUTCOMES = ("ok", "not_found", "client_error", "server_error", "timeout", "unreachable")
#: the key of the call's operation and start in botocore's per-call context dict
_STARTED = "izreg_metrics_started"


class S3Metrics:
    """The S3 counters and histogram (made on the first L{watch}: absent without S3)."""

    def __init__(self, registry, clock=time.monotonic) -> None:
        self.clock = clock
        self.requests = Counter("izreg_s3_requests", "S3 API calls by operation and outcome (ok, not_found,"
                                " client_error, server_error, timeout, unreachable), retries included",
                                ["operation", "outcome"], registry=registry)
        self.latency = Histogram("izreg_s3_request_duration_seconds", "Time from an S3 API call to its answer's"
                                 " head (or its failure), retries included", ["operation"], buckets=S3_BUCKETS,
                                 registry=registry)
        #: (operation, outcome) -> (its counter, its operation's histogram): C{labels()} costs microseconds
        self._series: dict[tuple[str, str], tuple] = {}
        self._lock = threading.Lock()  # the S3 threads add series

    def watch(self, client) -> None:
        """Count and time every API call C{client} (a boto3 S3 client) makes from now on."""
        events = client.meta.events
        events.register("before-call.s3", self._before, unique_id="izreg-metrics-before")
        events.register("after-call.s3", self._after, unique_id="izreg-metrics-after")
        events.register("after-call-error.s3", self._failed, unique_id="izreg-metrics-failed")

    def _before(self, model, context, **kwargs) -> None:
        context[_STARTED] = (model.name if model.name in S3_OPERATIONS else "other", self.clock())

    def _after(self, http_response, context, **kwargs) -> None:
        status = http_response.status_code
        self._observe(context, "ok" if status < 300 else "not_found" if status == 404
                      else "server_error" if status >= 500 else "client_error")

    def _failed(self, exception, context, **kwargs) -> None:
        self._observe(context, s3_failure(exception))

    def _observe(self, context, outcome: str) -> None:
        started = context.pop(_STARTED, None)
        if started is None:
            return
        operation, start = started
        series = self._series.get((operation, outcome))
        if series is None:
            with self._lock:
                series = self._series[(operation, outcome)] = (
                    self.requests.labels(operation, outcome), self.latency.labels(operation))
        counter, latency = series
        counter.inc()
        latency.observe(self.clock() - start)


def s3_failure(exception: BaseException) -> str:
    """The outcome of an S3 call that got no answer (botocore's exception)."""
    from izreg.storage.s3 import no_answer

    # else before the request left: no credentials, a request botocore would not send
    return no_answer(exception) or "client_error"


class S3QueueCollector:
    """
    The S3 threads and the calls waiting for one (L{izreg.service.backends.CallQueue}), at scrape time:
    the twin of the PostgreSQL pool's L{PoolCollector}.
    """

    def __init__(self, queue, threads: int) -> None:
        self.queue = queue
        self.threads = threads

    def describe(self):
        return []

    def collect(self):
        queue = self.queue
        for name, value, doc in (
            ("izreg_s3_threads", self.threads, "Threads calling the S3 bucket (storage.s3.threads)"),
            ("izreg_s3_threads_busy", queue.running, "S3 threads in a call"),
            ("izreg_s3_queue_waiting", queue.waiting, "S3 calls waiting for a free S3 thread"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("izreg_s3_queue_rejected", "S3 calls that found no free S3 thread within"
                                  " storage.s3.queue_timeout: never run, answered 503", value=queue.expired)


class PoolCollector:
    """
    The PostgreSQL pool (psycopg_pool's C{get_stats()}) and the calls waiting in front of it
    (L{izreg.service.backends.CallQueue}), at scrape time.
    """

    def __init__(self, pool, queue=None) -> None:
        self.pool = pool
        self.queue = queue

    def describe(self):
        return []

    def _stats(self) -> dict:
        for _ in range(3):
            try:
                return self.pool.get_stats()
            except RuntimeError:  # a counter first incremented in another thread while copied: read again
                continue
        return self.pool.get_stats()

    def collect(self):
        stats, queue = self._stats(), self.queue
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        waiting = stats.get("requests_waiting", 0) + (queue.waiting if queue is not None else 0)
        expired = queue.expired if queue is not None else 0
        for name, value, doc in (
            ("izreg_postgres_pool_connections", size, "Connections the PostgreSQL pool holds open"),
            ("izreg_postgres_pool_max_connections", stats.get("pool_max", 0),
             "Most connections the pool opens (metadata.pool_size)"),
            ("izreg_postgres_pool_connections_in_use", max(0, size - available),
             "Pool connections lent to a database call"),
            ("izreg_postgres_pool_requests_waiting", waiting,
             "Database calls waiting for a connection (for a database thread, each holding one, or in the pool)"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, value, doc in (
            ("izreg_postgres_pool_requests", stats.get("requests_num", 0), "Connections asked of the pool"),
            ("izreg_postgres_pool_wait_seconds", stats.get("requests_wait_ms", 0) / 1000,
             "Time spent waiting in the pool for a connection"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        family = CounterMetricFamily("izreg_postgres_pool_errors", "Failures of the PostgreSQL pool, by kind: timeout"
                                     " (a call got no connection in time: answered 503, or /readyz not ready),"
                                     " connect (an attempt to open a connection failed), lost (a connection found"
                                     " broken and closed)", labels=["kind"])
        family.add_metric(["timeout"], stats.get("requests_errors", 0) + expired)
        family.add_metric(["connect"], stats.get("connections_errors", 0))
        family.add_metric(["lost"], stats.get("connections_lost", 0) + stats.get("returns_bad", 0))
        yield family
