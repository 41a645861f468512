# -*- test-case-name: tests.e2e.test_webhooks -*-
"""
Delivering webhook events from the queue in the index (L{WebhookStore}),
off the request path, with treq.

A request only queues (on the writer thread, after its change is
committed). The L{Dispatcher} wakes when something is queued and on a
timer, posts each due delivery (at most L{CONCURRENCY} at once), and
records the outcome: 2xx is delivered; anything else (a refused
connection, a timeout, a 500) is retried after ``retry_min`` seconds,
doubling up to ``retry_max``, until ``max_attempts``. A delivery in flight
when the registry stops stays pending and is sent again after the restart
(at least once: receivers may see a duplicate ``Izreg-Delivery`` id).

The store is read through C{run_read} (L{izreg.auth.runners}): inline on
LMDB, on a thread pool on PostgreSQL, where L{IWebhookStore.due} also claims
what it returns for a lease, so that each delivery is sent by one node.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from izreg import __version__
from izreg.auth.runners import inline, settled
from izreg.core import cloudevents
from izreg.core.names import Repository
from izreg.storage.webhooks import KEEP_FINISHED, WebhookStore

CONCURRENCY = 4
#: how often the queue is looked at when nothing wakes the dispatcher, seconds
POLL = 1.0
PRUNE_EVERY = 3600.0


def backoff(attempts: int, retry_min: float, retry_max: float) -> float:
    """Seconds before the next try after C{attempts} failed ones."""
    return min(retry_max, retry_min * 2 ** max(0, attempts - 1))


class Dispatcher(service.Service):
    log = Logger()

    def __init__(self, store: WebhookStore, reactor, run_write, config, metrics=None, run_read=inline) -> None:
        self.store = store
        self.reactor = reactor
        self.run_write = run_write
        self.run_read = run_read
        self._claiming = False  # a read of the queue is in flight (off the reactor)
        self.config = config
        self.metrics = metrics
        self.busy: set[str] = set()
        self._loop: task.LoopingCall | None = None
        self._last_prune = 0.0
        self._inflight: set[defer.Deferred] = set()
        self._scheduled = None

    def startService(self) -> None:
        super().startService()
        self._pool = self._http = None
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(POLL, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        for d in list(self._inflight):
            d.cancel()
        pool, self._pool, self._http = getattr(self, "_pool", None), None, None
        return pool.closeCachedConnections() if pool is not None else None

    def _client(self):
        """treq's client, made on the first delivery (treq costs ~14 MiB of memory: not for registries without webhooks)."""
        if self._http is None:
            import treq.client

            self._pool = HTTPConnectionPool(self.reactor, persistent=False)
            self._http = treq.client.HTTPClient(Agent(self.reactor, pool=self._pool))
        return self._http

    def wake(self) -> None:
        """Something was queued: look at the queue soon (from the reactor thread)."""
        if self.running and (self._scheduled is None or not self._scheduled.active()):
            self._scheduled = self.reactor.callLater(0, self.tick)

    def tick(self) -> None:
        if not self.running:
            return
        now = self.reactor.seconds()
        room = CONCURRENCY - len(self.busy)
        if room <= 0 or self._claiming:
            return
        try:
            due = self.run_read(self.store.due, now, room, frozenset(self.busy))
        except Exception:
            self.log.failure("reading the webhook queue failed")
            return
        if isinstance(due, Deferred):
            self._claiming = True

            def claimed(result):
                self._claiming = False
                return result

            due.addBoth(claimed).addCallbacks(
                self._start, lambda f: self.log.failure("reading the webhook queue failed", f))
        else:
            self._start(due)
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            self.run_write(self.store.prune, now - KEEP_FINISHED).addErrback(
                lambda f: self.log.failure("pruning webhook deliveries failed", f))

    def _start(self, due) -> None:
        for delivery_id, record in due:
            self.busy.add(delivery_id)
            d = defer.ensureDeferred(self._deliver(delivery_id, record))
            self._inflight.add(d)
            d.addBoth(self._done, delivery_id, d)

    def _done(self, result, delivery_id: str, d) -> None:
        self.busy.discard(delivery_id)
        self._inflight.discard(d)
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            self.log.failure("webhook delivery {id} failed unexpectedly", result, id=delivery_id)

    async def _deliver(self, delivery_id: str, record: dict) -> None:
        secret = await settled(self.run_read(self.store.secret, record["account"], record["hook"]))
        now = self.reactor.seconds()
        if secret is None:
            await self.run_write(self.store.finish, delivery_id, now, None, "the webhook was removed", None)
            return
        data = cloudevents.body(record["event"])
        headers = {
            "Content-Type": [cloudevents.CONTENT_TYPE],
            cloudevents.SIGNATURE_HEADER: [cloudevents.signature(secret, data)],
            cloudevents.DELIVERY_HEADER: [delivery_id],
            "User-Agent": [f"izreg/{__version__}"],
        }
        status, error = None, None
        try:
            response = await self._client().post(record["url"], data=data, headers=headers,
                                              timeout=self.config.webhook_timeout, allow_redirects=False)
            status = response.code
            await response.content()  # drain it; the body is not used
            if not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except defer.CancelledError:
            raise
        except Exception as e:  # connection refused, DNS, TLS, timeout: all retried
            error = f"{type(e).__name__}: {e}"[:300]
        attempts = record["attempts"] + 1
        retry = None
        if error is not None and attempts < self.config.webhook_max_attempts:
            retry = self.reactor.seconds() + backoff(attempts, self.config.webhook_retry_min, self.config.webhook_retry_max)
        await self.run_write(self.store.finish, delivery_id, self.reactor.seconds(), status, error, retry)
        result = "delivered" if error is None else ("failed" if retry is not None else "gave_up")
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(result).inc()
        if error is None:
            self.log.info("webhook delivery {id} to {host}: {status}", id=delivery_id, host=_host(record["url"]),
                          status=status)
        else:
            self.log.warn("webhook delivery {id} to {host} failed (attempt {n}): {error}{later}", id=delivery_id,
                          host=_host(record["url"]), n=attempts, error=error,
                          later="; retrying" if retry is not None else "; giving up")


def _host(url: str) -> str:
    """Only scheme and host of a webhook URL in the log: a path may hold a token (chat webhooks)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


#: registry changes (the audit log's actions) that webhooks hear of, and as what
_KINDS = {"push-tag": cloudevents.PUSH, "push-manifest": cloudevents.PUSH,
          "delete-manifest": cloudevents.DELETE, "delete-tag": cloudevents.DELETE}


class Events:
    """What the registry (writer thread) and the API (reactor thread) tell the webhooks."""

    log = Logger()

    def __init__(self, store: WebhookStore, dispatcher: Dispatcher, reactor, run_write, run_read=inline) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.run_write = run_write
        self.run_read = run_read

    def changed(self, entry: dict, facts: dict) -> None:
        """Writer thread, right after the change is committed: queue its event."""
        kind = _KINDS.get(entry["action"])
        if kind is None or not facts.get("repository"):
            return
        ids = self.store.enqueue(kind, self.reactor.seconds(), account=entry["account"], actor=entry["actor"], **facts)
        if ids:
            self.reactor.callFromThread(self.dispatcher.wake)

    def pulled(self, principal, repo: Repository, digest, media_type: str, tag: str | None) -> None:
        """Reactor thread: a manifest GET answered. Queued only for accounts that asked for pulls."""
        wanted = self.run_read(self.store.wants, repo.account, cloudevents.PULL)
        if isinstance(wanted, Deferred):
            wanted.addCallbacks(lambda hooks: self._pulled(hooks, principal, repo, digest, media_type, tag),
                                lambda f: self.log.failure("reading the webhooks failed", f))
        else:
            self._pulled(wanted, principal, repo, digest, media_type, tag)

    def _pulled(self, wanted, principal, repo: Repository, digest, media_type: str, tag: str | None) -> None:
        if not wanted:
            return
        actor = None
        if principal is not None:
            actor = (f"device:{principal.account}/{principal.device_id}" if principal.kind == "device"
                     else f"key:{principal.key_id}")
        d = self.run_write(self.store.enqueue, cloudevents.PULL, self.reactor.seconds(), account=repo.account,
                           repository=repo.name, digest=str(digest), tag=tag, media_type=media_type, actor=actor)
        d.addCallbacks(lambda ids: self.dispatcher.wake(), lambda f: self.log.failure("queueing a pull event failed", f))
