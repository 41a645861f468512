# -*- test-case-name: tests.service.test_tap,tests.e2e.test_drain,tests.e2e.test_backend_metrics -*-
"""
The storage lifecycle and the composition root: LMDB and the thread pools
are opened in C{startService} (after twistd has forked: LMDB must never
cross a fork) and closed in C{stopService}. Everything that reads them is
built there, complete, in one place (L{RegistryService._compose}): the
registry, authentication, webhooks, readiness and the L{RegistryAPI} the
site then serves. Nothing sets attributes on the API or on this service
from outside: what exists before the fork (the site, listeners, timers,
metrics, the log setup) is given to the constructor by
L{izreg.tap.make_server}.
"""

from __future__ import annotations

import gc
import os
import signal
import threading

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from izreg import StartupError
from izreg.auth.authenticator import Authenticator
from izreg.auth.bootstrap import bootstrap, warn_if_left
from izreg.auth.devices import DeviceVerifier, SubjectFields
from izreg.auth.devicestore import PullRecorder
from izreg.auth.failures import FailedAuthentications
from izreg.auth.tokenservice import TokenService
from izreg.browse import Browser
from izreg.core.text import plural
from izreg.http.app import RegistryAPI
from izreg.inuse import InUse
from izreg.http.guard import AccessGuard
from izreg.http.limits import BodyBudget, raise_open_files_limit
from izreg.http.health import CachedCheck, Readiness
from izreg.registry import Limits, Registry
from izreg.service.config import Config
from izreg.service.bursttrim import BurstTrim
from izreg.service.heap import trim as trim_heap
from izreg.service.logs import offer_observer
from izreg.service.tls import CRLFile, ServerTLS
from izreg.service.tree import start_listening
from izreg.storage.blobs import BlobStore
from izreg.storage.capacity import DiskFloor, parse_floor, probe_writable
from izreg.storage.failures import storage_error
from izreg.storage.uploads import Uploads
from izreg.service.backends import CallQueue, DetachedPool, bounded_runner, thread_runner

#: a blob no manifest names is held again by a look at it at most every gc.grace / this (Registry.hold_blob):
#: held at least 7/8 of the grace after any look, one write transaction per blob in an eighth of it
HOLD_REFRESH_SHARE = 8
#: seconds between two looks, at stop, for connections that finished their request (L{RegistryService.drain})
DRAIN_STEP = 0.1
#: with S3, /readyz's bucket check: seconds its HEAD may take to connect and to be answered, and
#: seconds its outcome is kept
BUCKET_TIMEOUT = 2.0
BUCKET_TTL = 5.0
#: at stop, seconds the S3 threads get to finish their calls in flight before they are left behind (L{DetachedPool})
S3_STOP_GRACE = 2.0
#: the signals that stop a server (twistd's); one more of them during a drain ends it at once (L{SecondSignal})
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SecondSignal:
    """
    While a stopping server drains (L{RegistryService.drain}): a second SIGTERM or SIGINT (Ctrl-C again, a
    C{systemctl kill}) ends the drain at once, as the operator asks, instead of the reactor's own handler,
    which only logged a C{ReactorNotRunning} traceback and let the drain run its whole C{drain_timeout}.
    Its handlers are the process's only while the drain runs (a signal handler is set in the main thread
    only: elsewhere, as in a test's reactor thread, there is none).
    """

    def __init__(self) -> None:
        #: the signal received, or None
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SecondSignal:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._received)
        return self

    def _received(self, number: int, frame) -> None:
        self.received = number  # nothing else in a signal handler: the drain's next look sees it

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


class RegistryService(service.MultiService):
    """Owns the storage; its children (listeners, timers) start once it is open."""

    log = Logger()

    def __init__(self, config: Config, reactor, site, *, tls: ServerTLS | None = None, guard=None, metrics=None,
                 log_setup=None, log_observer=None, reload_config=None) -> None:
        """
        @param site: the L{izreg.http.bodies.RegistrySite} the listeners serve; it is handed the API once built.
        @param guard: replaces the L{AccessGuard} (tests of the registry's own behaviour only).
        @param metrics: L{izreg.service.metrics.Metrics}, or C{None}.
        @param log_setup: L{izreg.service.logs.LogSetup} (its level is re-read on SIGHUP), or C{None}.
        @param log_observer: the observer twistd should use instead of its own, or C{None}.
        @param reload_config: C{() -> Config}: the config file and options, read again (SIGHUP).
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.site = site
        self.tls = tls
        self.fixed_guard = guard
        self.metrics = metrics
        self.log_setup = log_setup
        self.log_observer = log_observer
        self.reload_config = reload_config
        # built by startService once the storage is open (None while stopped)
        self.api: RegistryAPI | None = None
        self.registry: Registry | None = None
        self.index = None  # the metadata index (backend.index) the registry and the browse API read
        self.pulls: PullRecorder | None = None
        self.authenticator: Authenticator | None = None
        self.dispatcher = None  # izreg.service.webhooks.Dispatcher, a child while running
        self.backend = None  # izreg.service.backends.Backend: the metadata stores and their runners
        self.readiness: Readiness | None = None
        self.crl_file: CRLFile | None = None
        self.burst_trim: BurstTrim | None = None  # built with the I/O pool (startService)
        self._pools: list[ThreadPool] = []
        self._bucket_client = None  # with S3, the client of /readyz's bucket check (L{_bucket_check})
        self.s3_queue: CallQueue | None = None  # with S3, the calls waiting for an S3 thread (metrics)
        #: the TLS handshake admission's C{device_request} (set by L{izreg.tap.make_server}), or C{None}: a
        #: request authenticated as a device makes its client group a known one (a few per device)
        self.on_device = None

    def setServiceParent(self, parent):
        offer_observer(parent, self.log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        if self.config.metadata_backend != "lmdb":
            # a database that cannot be reached or holds an unknown schema: one line, exit non-zero
            self.backend = self._open_backend()
        if self.config.storage_backend == "s3":
            # before the reactor runs and before any listener: a bucket that cannot be reached is one line
            from izreg.storage.interfaces import StorageError
            from izreg.storage.s3 import check_bucket

            try:
                self._s3_client = check_bucket(self.config)
            except StorageError as e:
                self.log.error("{message}", message=str(e))
                raise StartupError(str(e)) from None
        # twistd binds the listeners here; a port in use is one line, not a traceback.
        start_listening(self, super().privilegedStartService, self.log, "izreg")

    def startService(self) -> None:
        config = self.config
        raise_open_files_limit(config.max_connections + 512)
        root = self.root = os.path.abspath(config.data_dir)
        os.makedirs(root, mode=0o700, exist_ok=True)
        backend = self.backend = self.backend or self._open_backend()
        env = backend.env
        self.index = backend.index
        writer = ThreadPool(1, 1, "izreg-writer")
        io = ThreadPool(0, 4, "izreg-io")
        for pool in (writer, io):
            pool.start()
            self._pools.append(pool)
        backend.start(self.reactor, writer)
        self._run_io = thread_runner(self.reactor, io)
        self._run_write = backend.run_write
        self.api = self._compose(env, root)
        self.burst_trim = BurstTrim(getattr(self.site, "connections", None), self._run_io, self.reactor.seconds)
        self.site.serve(self.api.resource(), self.api.body_for)
        self._drop_orphans()
        self.log.info("izreg storage open: {blobs}; {metadata}", blobs=self._blobs_description(root),
                      metadata=backend.describe())
        if config.exposed_secrets:
            self.log.warn("the config file holds {secrets} and every user of this machine may read it:"
                          " chmod 0640 and chgrp izreg, or move them to the environment",
                          secrets=", ".join(config.exposed_secrets))
        super().startService()
        # What exists now (modules, the composed API) lives as long as the process: out of the
        # collector's reach, a full collection no longer walks it (a few % of a TLS connection's CPU).
        gc.collect()
        gc.freeze()

    def _compose(self, env, root: str) -> RegistryAPI:
        """The registry, authentication, webhooks and readiness over the open storage, and the API over them."""
        from izreg.service.webhooks import Dispatcher, Events

        config, reactor, backend = self.config, self.reactor, self.backend
        blobs, uploads = self._open_storage(root)
        self.dispatcher = Dispatcher(backend.webhooks, reactor, self._run_write, config, self.metrics,
                                     run_read=backend.run_read)
        events = Events(backend.webhooks, self.dispatcher, reactor, self._run_write, run_read=backend.run_read)
        if bootstrap(backend.auth, root, reactor.seconds()) is None:
            warn_if_left(root)
        self.authenticator = authenticator = Authenticator(
            backend.auth,
            reactor.seconds,
            token_service=config.token_service,
            failures=FailedAuthentications(backend.failure_limiter(config.auth_failure_limit, config.auth_failure_window)),
            signing_key=backend.token_key().secret,
            run_read=backend.run_read,
        )
        if config.token_service:
            authenticator.signing_key()  # made now (0600) rather than on the first token request
        devices = backend.devices
        self.pulls = PullRecorder(devices)
        self.registry = Registry(
            self.index,
            blobs,
            uploads,
            now=reactor.seconds,
            run_write=self._run_write,
            run_read=backend.run_read,
            run_io=self._run_io,
            limits=Limits(max_manifest_size=config.max_manifest_size, delete_enabled=config.delete_enabled,
                          max_open_uploads=config.max_open_uploads),
            audit=backend.audit,
            in_use=InUse(self.pulls.devices, reactor.seconds, config.in_use_window) if config.protect_in_use else None,
            on_change=events.changed,
            hold_refresh=config.gc_grace / HOLD_REFRESH_SHARE,
        )
        self.readiness = Readiness(backend.index_error, self._probe(root),
                                   DiskFloor(root, parse_floor(config.min_free_disk)), more=self._bucket_check(blobs),
                                   reactor=reactor)
        guard = self.fixed_guard or AccessGuard(authenticator, self._device_verifier(devices), reactor.seconds,
                                                run_read=backend.run_read, on_device=self.on_device,
                                                realm=config.token_realm)
        if self.metrics is not None:
            self.metrics.watch_storage(env, index=backend.index)
            self.metrics.watch_disk(self.readiness.disk)
            if config.storage_backend == "s3":
                self.metrics.watch_s3(blobs.client, blobs.bounded.client,
                                      *(c for c in [self._bucket_client] if c is not None))
                self.metrics.watch_s3_queue(self.s3_queue, config.s3_threads)
            if backend.db is not None:
                self.metrics.watch_pool(backend.db.pool, backend.queue)
            if getattr(guard, "refusals", None) is not None:
                self.metrics.refusals.watch("http", guard.refusals)
        # one account (or client address group) holds at most a quarter of each, and at least one manifest:
        # its clients that read nothing cannot make every other account's large answers 503 (attack11), nor
        # its clients that send manifests' first bytes and stall every other account's pushes
        responses = BodyBudget(config.response_memory, share=_share(config.response_memory, config))
        bodies = BodyBudget(config.body_memory, share=_share(config.body_memory, config))
        if self.metrics is not None:
            self.metrics.watch_responses(responses)
            self.metrics.watch_bodies(bodies)
        self.dispatcher.setServiceParent(self)
        return RegistryAPI(
            self.registry,
            guard,
            reactor.seconds,
            chunk_min_length=config.chunk_min_length,
            tokens=TokenService(authenticator, config.token_ttl) if config.token_service else None,
            pulls=self.pulls,
            budget=bodies,
            responses=responses,
            ui=config.ui_enabled,
            browser=Browser(self.index, blobs, devices),
            readiness=self.readiness,
            events=events,
        )

    def _open_backend(self):
        """The metadata stores of C{[metadata]} (izreg.service.backends); a failure is one line."""
        from izreg.service.backends import BackendError, open_backend

        try:
            backend = open_backend(self.config, self.config.data_dir)
            try:
                # made here, not only in startService: the first node writes its webhook.key now (--init)
                os.makedirs(os.path.abspath(self.config.data_dir), mode=0o700, exist_ok=True)
                backend.check_sealing_key()
            except BackendError:
                backend.close()
                raise
        except BackendError as e:
            self.log.error("{message}", message=str(e))
            raise StartupError(str(e)) from None
        if backend.shared and self.config.storage_backend != "s3":
            self.log.warn("metadata in PostgreSQL with blobs on this node's file system: run this node alone"
                          " (several nodes need storage.backend = \"s3\")")
        return backend

    def _blobs_description(self, root: str) -> str:
        """Where the blobs are, for the start-up line (no credentials)."""
        config = self.config
        if config.storage_backend != "s3":
            return f"blobs on the file system in {root}"
        from izreg.storage.s3 import endpoint_host

        return f"blobs in S3 bucket {config.s3_bucket}{endpoint_host(config.s3_endpoint_url)}"

    def _open_storage(self, root: str):
        """The blob and upload stores of the configured backend (C{[storage] backend})."""
        if self.config.storage_backend == "s3":
            from izreg.storage.s3 import busy, open_s3

            # a call waits at most queue_timeout for a thread, then is a 503 (every thread may be stuck on a
            # bucket that does not answer); at stop, threads stuck so are left behind, not waited for
            pool = DetachedPool(0, self.config.s3_threads, "izreg-s3", grace=S3_STOP_GRACE)
            pool.start()
            self._pools.append(pool)
            self.s3_queue = CallQueue()
            run = bounded_runner(self.reactor, pool, self.config.s3_queue_timeout, self.s3_queue, refuse=busy)
            return open_s3(self.config, run, getattr(self, "_s3_client", None))
        blobs = BlobStore(root)
        return blobs, Uploads(root, blobs, self._run_io, direct=self.config.direct_writes)

    def _drop_orphans(self) -> None:
        """Upload bytes no session owns (a crash mid-POST): dropped in a thread, logged."""
        def done(count):
            if count:
                self.log.info("dropped {uploads}", uploads=plural(count, "orphaned upload"), count=count)

        d = defer.ensureDeferred(self.registry.drop_orphan_uploads())
        d.addCallbacks(done, lambda f: self.log.failure("dropping orphaned uploads failed", f))

    def _probe(self, root: str):
        """The readiness probe: can the data directories be written (in the I/O pool)."""
        def probe():
            return self._run_io(probe_writable, root, ("uploads", "blobs"))

        return probe

    def _bucket_check(self, blobs) -> dict:
        """
        With S3, /readyz's "bucket" check: a HEAD of the bucket (L{izreg.storage.s3.bucket_error}) on a
        client of its own that waits L{BUCKET_TIMEOUT} and never retries, in the I/O pool (the S3 pool
        may be busy with long transfers: a loaded node is not an unready one), its outcome kept
        L{BUCKET_TTL} seconds (a storm of probes is one HEAD every few seconds). None with C{[storage.s3]
        ready_check = false}.
        """
        if self.config.storage_backend != "s3" or not self.config.s3_ready_check:
            return {}
        from izreg.storage.s3 import bucket_error, make_client

        if self._bucket_client is None:
            self._bucket_client = make_client(self.config, timeout=BUCKET_TIMEOUT)
        client, bucket = self._bucket_client, blobs.keys.bucket
        blobs.bounded.hear(client)  # ready again: the commits' S3 calls are tried again at once
        check = CachedCheck("S3 bucket", lambda: self._run_io(bucket_error, client, bucket), self.reactor,
                            timeout=BUCKET_TIMEOUT + 1, ttl=BUCKET_TTL)
        return {"bucket": check}

    def _device_verifier(self, devices) -> DeviceVerifier | None:
        """Device certificates on the TLS listener (C{[tls] device_ca}), or C{None}."""
        config = self.config
        if self.tls is None or not config.device_ca:
            return None
        self.crl_file = CRLFile(config.device_crl, self.tls.device_cas) if config.device_crl else None
        if self.crl_file is not None:
            self.crl_file.refresh()  # before the first request; then check_crl's timer
        crls = self.crl_file.current if self.crl_file else (lambda: ())
        return DeviceVerifier(
            cas=self.tls.device_cas,
            revoked=devices.revocations_for,
            crls=crls,
            fields=SubjectFields.parse(config.device_account_field, config.device_id_field),
        )

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()  # the listeners close first: no new connection
        yield defer.ensureDeferred(self.drain())
        if self.dispatcher is not None:
            self.removeService(self.dispatcher)  # stopped with the others; the next start builds its own
            self.dispatcher = None
        if self.readiness is not None:
            self.readiness.stop()  # no probe of a closed push gate after the pools stop
        for watch in (getattr(self.site, "slow", None), getattr(self.site, "readers", None)):
            if watch is not None:
                watch.stop()
        yield self.flush_batches()
        for pool in self._pools:
            left = pool.stop()
            if left:
                self.log.warn("stopping with {count} call(s) of the {pool} pool still waiting after {grace:g} s:"
                              " left behind (abandoned: nothing is recorded of them)", count=len(left),
                              pool=pool.name, grace=pool.grace)
        self._pools = []
        if self.backend is not None:
            self.backend.close()
            self.registry = self.index = self.backend = self.api = None

    async def drain(self) -> None:
        """
        At stop, the listeners closed: let the requests in progress finish, for at most C{[server]
        drain_timeout} seconds, closing each connection as soon as it has nothing in progress (at once:
        the idle ones). Then the rest are cut, as a stop without it does.
        """
        connections = getattr(self.site, "connections", None)
        timeout = self.config.drain_timeout
        if not timeout or connections is None:
            return
        with SecondSignal() as again:
            await self._drain(connections, timeout, again)

    async def _drain(self, connections, timeout: int, again: SecondSignal) -> None:
        clock = self.reactor
        deadline = clock.seconds() + timeout
        waited = False
        while True:
            closing = connections.idle.close_idle()
            if connections.total == 0:  # a closed connection gives its count back a reactor turn later
                break
            busy = connections.total - closing
            if again.received is not None:
                self.log.warn("stopping at once ({signal} again): {count} connection(s) still busy are cut",
                              signal=signal.Signals(again.received).name, count=busy)
                return
            if clock.seconds() >= deadline:
                self.log.warn("stopping with {count} connection(s) still busy after server.drain_timeout"
                              " ({timeout} s): they are cut", count=busy, timeout=timeout)
                return
            if busy > 0 and not waited:
                waited = True
                self.log.info("stopping: waiting for {count} connection(s) in progress to finish (at most"
                              " server.drain_timeout, {timeout} s; SIGTERM again: at once)", count=busy,
                              timeout=timeout)
            await deferLater(clock, DRAIN_STEP, lambda: None)
        if waited:
            self.log.info("stopping: every request in progress finished")

    async def collect_garbage(self):
        """Timer task: one garbage-collection sweep (L{izreg.sweeper}); its result, or C{None}."""
        if self.registry is None:
            return None
        from izreg.storage.audit import Retention
        from izreg.storage.gc import Collector
        from izreg.sweeper import sweep

        config = self.config
        collector = Collector(self.index, self.registry.blobs, config.gc_grace, config.untagged_after)
        try:
            result = await sweep(self.registry, collector, self.backend.sweep_lock(),
                                 Retention(config.audit_keep_days, config.audit_max_entries))
        except Exception:
            self._task_failed("garbage collection failed")
            return None
        if result is not None and self.metrics is not None:
            self.metrics.gc_runs.inc()
            self.metrics.gc_freed.inc(result.bytes)
        if result is not None:
            sizes = await self._run_io(trim_heap)  # the sweep's lists and the requests' buffers: free pages back
            if sizes is not None and sizes[0] > sizes[1]:
                self.log.info("heap: malloc_trim gave back {mib:.1f} MiB ({before:.1f} -> {after:.1f} MiB anonymous)",
                              mib=(sizes[0] - sizes[1]) / 2**20, before=sizes[0] / 2**20, after=sizes[1] / 2**20)
        return result

    def trim_after_burst(self):
        """Timer task: the heap back to the system once a burst of connections has closed (L{BurstTrim})."""
        if self.registry is None:
            return None
        return self.burst_trim.check()

    async def expire_uploads(self) -> None:
        """Timer task: drop upload sessions idle for longer than the TTL."""
        if self.registry is None:
            return
        try:
            count = await self.registry.expire_uploads(self.reactor.seconds() - self.config.upload_ttl)
            if count:
                self.log.info("expired {uploads}", uploads=plural(count, "abandoned upload"), count=count)
        except Exception:
            self._task_failed("upload expiry failed")

    @defer.inlineCallbacks
    def flush_pulls(self):
        """Write the batched device pull records in one transaction, on the writer thread."""
        if self.pulls is None or not self.pulls.pending:
            return
        try:
            yield self._run_write(self.pulls.flush)
        except Exception:
            self._task_failed("recording device pulls failed")

    @defer.inlineCallbacks
    def flush_batches(self):
        """Timer task: the pull records, then the keys' last-used stamps, on the writer thread."""
        yield self.flush_pulls()
        if self.authenticator is None or not self.authenticator.last_used.pending:
            return
        try:
            yield self._run_write(self.authenticator.last_used.flush)
        except Exception:
            self._task_failed("recording when keys were last used failed")

    def _task_failed(self, what: str) -> None:
        """
        A timer task's failure (in an C{except} block): the database or the
        bucket out of reach is one warning line (every few seconds while it
        lasts: a traceback each time buried the node's log); anything else
        is logged with its traceback.
        """
        failure = Failure()
        if storage_error(failure.value) is None:
            self.log.failure(what, failure)
        else:
            self.log.warn("{what}: {error}", what=what, error=f"{type(failure.value).__name__}: {failure.value}")

    def check_crl(self):
        """Timer task: re-read the device CRL file if it changed (stat and parse in the I/O pool)."""
        if self.crl_file is None or self.registry is None:
            return None
        return self._run_io(self.crl_file.refresh).addErrback(
            lambda f: self.log.failure("checking the device CRL failed", f))

    def reload(self) -> None:
        """SIGHUP: TLS material, the device CRL, and from the config the log level and disk floor."""
        self.reload_tls()
        if self.crl_file is not None:
            self._run_io(self.crl_file.reload).addErrback(
                lambda f: self.log.failure("re-reading the device CRL failed", f))
        if self.reload_config is None:
            return
        try:
            config = self.reload_config()
        except Exception as e:  # ConfigError: keep what runs
            self.log.error("config reload failed, keeping the running settings: {error}", error=str(e))
            return
        if self.log_setup is not None:
            self.log_setup.set_level(config.log_level)
        if self.readiness is not None:
            self.readiness.disk.floor = parse_floor(config.min_free_disk)
        self.log.info("reloaded: log level {log_level_name}, min_free_disk {floor}", log_level_name=config.log_level,
                      floor=config.min_free_disk)

    def reload_tls(self) -> None:
        """SIGHUP: re-read the TLS certificate, key and device CAs (new connections use them)."""
        if self.tls is None:
            return
        try:
            self.tls.reload()
            self.log.info("reloaded TLS certificate, key and device CAs")
        except Exception as e:
            self.log.error("TLS reload failed, keeping the old certificates: {error}", error=str(e))


def _share(limit: int, config: Config) -> int:
    """The most of a memory budget (L{izreg.http.limits.BodyBudget}) one account or client address group holds."""
    return max(limit // 4, config.max_manifest_size)
