# -*- test-case-name: tests.edge.test_edge_e2e -*-
"""
Pulls served from the edge cache, reported to the registry.

L{Reporter.record} queues a pull (repository, manifest digest, time) in the
cache's LMDB (synced: it survives a crash or a restart); L{Reporter.send},
run by a timer, posts up to 1,000 queued pulls to ``POST /v2/_izreg/pulls``
and drops them once the registry accepted them (202). Unreachable, 401,
429 and 5xx answers keep them for the next round; any other refusal (the
registry will never accept that batch) drops them with a log line.
"""

from __future__ import annotations

import json

from twisted.internet import defer, threads
from twisted.logger import Logger

from izreg.core.text import plural
from izreg.edge.upstream import Unreachable, collect

log = Logger()

BATCH = 1000
RETRY = {401, 408, 429}


class Reporter:
    def __init__(self, cache, upstream, now) -> None:
        self.cache, self.upstream, self.now = cache, upstream, now
        self._writes: list[defer.Deferred] = []
        self._sending = False

    @property
    def pending(self) -> int:
        return len(self.cache.pending_reports(BATCH))

    def record(self, repository: str, digest: str, at: float) -> None:
        entry = {"repository": repository, "digest": digest, "time": int(at)}
        d = threads.deferToThread(self.cache.queue_reports, [entry], self.now())
        d.addErrback(lambda f: log.failure("could not queue a pull report", f))
        self._writes.append(d)
        d.addBoth(lambda r: (self._writes.remove(d), r)[1])

    async def send(self) -> int:
        """Post one batch; return how many pulls the registry accepted."""
        if self._sending:
            return 0
        self._sending = True
        try:
            return await self._send()
        finally:
            self._sending = False

    async def _send(self) -> int:
        batch = self.cache.pending_reports(BATCH)
        if not batch:
            return 0
        body = json.dumps({"pulls": [entry for _, entry in batch]}).encode()
        try:
            response = await self.upstream.request("POST", "/v2/_izreg/pulls",
                                                   {"Content-Type": ["application/json"]}, data=body)
            answer = await collect(response, 64 * 1024)
        except Unreachable as e:
            emit = log.info if self.upstream.first_offline("reports") else log.debug  # every interval: once an outage
            emit("{reports} waiting: registry unreachable ({reason})", reports=plural(len(batch), "pull report"),
                 n=len(batch), reason=e.reason)
            return 0
        keys = [key for key, _ in batch]
        if response.code == 202:
            await threads.deferToThread(self.cache.drop_reports, keys)
            log.info("reported {pulls} served from the cache", pulls=plural(len(batch), "pull"), n=len(batch))
            return len(batch)
        if response.code in RETRY or response.code >= 500:
            log.warn("{reports} waiting: the registry answered {code}", reports=plural(len(batch), "pull report"),
                     n=len(batch), code=response.code)
            return 0
        log.error("the registry refused {reports} with {code}: {body}; dropped",
                  reports=plural(len(batch), "pull report"), n=len(batch), code=response.code,
                  body=answer[:300].decode("utf-8", "replace"))
        await threads.deferToThread(self.cache.drop_reports, keys)
        return 0

    def flush_writes(self) -> defer.Deferred:
        return defer.DeferredList(list(self._writes))
