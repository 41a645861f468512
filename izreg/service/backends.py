# -*- test-case-name: tests.service.test_backends -*-
"""
The metadata backend of one process, chosen by ``[metadata] backend``: the
stores (index, accounts and keys, devices, audit, webhooks) and the runners
the server calls them through. Both the server (L{izreg.service.services})
and the ``izreg`` command open it here, so they agree on where things are.

- ``lmdb`` (one node): the stores over the LMDB environment in
  ``data_dir/index``. C{run_read} calls inline (an LMDB read is microseconds:
  no thread hop), C{run_write} is the single writer thread.
- ``postgresql`` (one or several nodes): the stores over a bounded psycopg
  pool (L{izreg.storage.pg.Database}); C{run_read} and C{run_write} both run on
  one Twisted thread pool of C{pool_size} threads, as many as connections,
  so the reactor never waits for the database.

Cross-node pieces that differ by backend also come from here: the
garbage-collection lock (flock or a PostgreSQL advisory lock), the
failed-authentication brake (in memory or counted in the database), and
the readiness check of the index.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from izreg.auth.runners import inline  # LMDB's run_read: the value itself, no thread hop
from izreg.service.config import Config
from izreg.storage.interfaces import StorageError

LMDB, POSTGRESQL = "lmdb", "postgresql"
#: seconds a database call may wait for a free thread (and connection) before it is answered 503:
#: while the database blocks every connection (a lock, a dead link), requests do not queue for ever
QUEUE_WAIT = 10.0
#: seconds /readyz waits for the database before it says not ready (a load balancer's check is short)
READY_WAIT = 1.5

_log = Logger()


class BackendError(Exception):
    """The metadata backend cannot be opened (one line for the user: no DSN password in it)."""


class Backend:
    """
    The metadata stores of one process (C{index}, C{auth}, C{devices},
    C{audit}, C{webhooks}) and, in the server, C{run_read} and C{run_write}.
    C{env} is the LMDB environment (LMDB only), C{db} the
    L{izreg.storage.pg.Database} (PostgreSQL only).
    """

    def __init__(self, name: str, data_dir: str, *, env=None, db=None, index=None, auth=None, devices=None,
                 audit=None, webhooks=None) -> None:
        self.name = name
        self.data_dir = data_dir
        self.env = env
        self.db = db
        self.index, self.auth, self.devices, self.audit, self.webhooks = index, auth, devices, audit, webhooks
        self.run_read: Callable[..., Any] | None = None
        self.run_write: Callable[..., defer.Deferred] | None = None
        self._pools: list[ThreadPool] = []
        self._reactor = None
        #: PostgreSQL: the calls waiting for a database thread (the pool's metrics)
        self.queue: CallQueue | None = None

    @property
    def shared(self) -> bool:
        """Whether other nodes may use the same metadata (PostgreSQL)."""
        return self.name == POSTGRESQL

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"

    # -- runners (the server) --------------------------------------------------

    def start(self, reactor, writer: ThreadPool | None = None) -> None:
        """
        Start the runners on C{reactor}. LMDB: reads inline, writes on
        C{writer} (the service's single writer thread, made here if not
        given). PostgreSQL: one pool of C{pool_size} threads for both.
        """
        self._reactor = reactor
        if self.shared:
            pool = ThreadPool(0, self.db.max_size, "izreg-db")
            pool.start()
            self._pools.append(pool)
            self.queue = CallQueue()
            self.run_read = self.run_write = bounded_runner(reactor, pool, QUEUE_WAIT, self.queue)
            return
        if writer is None:
            writer = ThreadPool(1, 1, "izreg-writer")
            writer.start()
            self._pools.append(writer)
        self.run_read = inline
        self.run_write = thread_runner(reactor, writer)

    def close(self) -> None:
        """Stop the runners' threads, then close the environment or the connections."""
        for pool in self._pools:
            pool.stop()
        self._pools = []
        if self.env is not None:
            self.env.close()
        if self.db is not None:
            self.db.close()
        self.env = self.db = self.index = None

    def describe(self) -> str:
        """Where the metadata is, for the start-up line (no password: the DSN's user, host, port and database only)."""
        if not self.shared:
            return f"metadata in LMDB at {os.path.join(self.data_dir, 'index')}"
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(self.db.dsn)
        user = f"{parts['user']}@" if parts.get("user") else ""
        port = f":{parts['port']}" if parts.get("port") else ""
        return f"metadata in PostgreSQL {user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"

    def check_sealing_key(self) -> None:
        """PostgreSQL: this node's C{webhook.key} opens what the other nodes sealed (L{BackendError} if not)."""
        if not self.shared:
            return
        from izreg.storage.pg import DatabaseUnavailable
        from izreg.storage.pgwebhooks import check_sealing_key
        from izreg.storage.webhooks import WebhookError

        try:
            check_sealing_key(self.db, self.data_dir)
        except (WebhookError, DatabaseUnavailable) as e:
            raise BackendError(str(e)) from None

    # -- what differs by backend -----------------------------------------------------

    def sweep_lock(self):
        """One garbage-collection sweep at a time: a flock on this machine, or an advisory lock of the database."""
        if self.shared:
            from izreg.storage.gc import PgSweepLock

            return PgSweepLock(self.db)
        from izreg.storage.gc import SweepLock

        return SweepLock(self.data_dir)

    def failure_limiter(self, limit: int, window: float):
        """The failed-authentication brake: per process (LMDB), or counted across nodes (PostgreSQL)."""
        if self.shared:
            from izreg.auth.clusterlimit import SharedFailureLimiter
            from izreg.storage.cluster import FailureCounts

            return SharedFailureLimiter(limit, window, FailureCounts(self.db), self.run_write)
        from izreg.auth.ratelimit import FailureLimiter

        return FailureLimiter(limit, window)

    def token_key(self):
        """
        The token signing key (C{secret()}, C{rotate()}): C{data_dir/token.key},
        or with PostgreSQL one key in the database for every node (a token
        issued by one node is checked by another), sealed with the nodes'
        shared C{webhook.key} (L{izreg.auth.pgstore.PgTokenKey}).
        """
        if self.shared:
            from izreg.auth.pgstore import PgTokenKey

            return PgTokenKey(self.db, self.data_dir)
        from izreg.auth.tokenkey import TokenKey

        return TokenKey(self.data_dir)

    def index_error(self):
        """The readiness check of the metadata: C{None} when usable, else why (a Deferred with PostgreSQL)."""
        if self.shared:
            # at most READY_WAIT for a connection, and as long on the reactor's side: every thread
            # may be held by calls waiting on the database, and the answer must come anyway
            d = self.run_read(self.db.ping, READY_WAIT)
            d.addTimeout(READY_WAIT + 0.5, self._reactor)
            d.addCallbacks(lambda _: None, lambda f: (
                f"the database did not answer within {READY_WAIT + 0.5:g} s" if f.check(defer.TimeoutError)
                else f"the database cannot be reached: {f.getErrorMessage()}"))
            return d
        try:
            self.env.stat()
        except Exception as e:  # lmdb.Error: closed or broken
            return f"the index cannot be read: {e}"
        return None


def thread_runner(reactor, pool: ThreadPool) -> Callable[..., defer.Deferred]:
    """A runner that calls C{f} on a thread of C{pool} and gives back a Deferred."""

    def run(f, *args, **kwargs):
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    return run


class _DaemonThread(threading.Thread):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


_CANCELLED = object()


class PoolStopped(StorageError):
    """A call that was still waiting for a thread of a L{DetachedPool} when it stopped: it never ran (a 503)."""


def _refuse(onResult, pool: str) -> None:
    if onResult is not None:
        onResult(False, Failure(PoolStopped(f"the {pool} pool stopped before this call ran")))


class DetachedPool(ThreadPool):
    """
    A thread pool that never holds the process at stop, for calls that may be abandoned midway (S3's:
    an object is written whole at its content address and recorded in the index only after; an upload
    acknowledges only the parts the bucket answered): L{stop} waits at most C{grace} seconds for the
    calls in flight, then leaves behind the threads still in one (a store that does not answer holds
    them up to its read timeout, per attempt), daemon threads the interpreter does not wait for at exit.
    Twisted's C{stop} joined every thread: a stuck one held the reactor, and the process, that long.
    A call still waiting for a thread at stop never runs: it fails there and then with L{PoolStopped}
    (Twisted's pool ran it later, when a stuck thread came free, after the reactor had stopped).
    """

    threadFactory = _DaemonThread

    def __init__(self, minthreads: int, maxthreads: int, name: str, grace: float) -> None:
        super().__init__(minthreads, maxthreads, name)
        self.grace = grace
        self._waiting_lock = threading.Lock()
        self._waiting: dict[object, Callable | None] = {}  # calls not started yet: their onResult

    def callInThreadWithCallback(self, onResult, func, *args, **kw) -> None:
        call = object()
        with self._waiting_lock:
            stopped = self.joined
            if not stopped:
                self._waiting[call] = onResult
        if stopped:
            _refuse(onResult, self.name)
            return

        def work():
            with self._waiting_lock:
                if self._waiting.pop(call, _CANCELLED) is _CANCELLED:
                    return _CANCELLED  # failed at stop: never runs
            return func(*args, **kw)

        def report(ok: bool, result) -> None:
            if result is _CANCELLED:
                return
            if onResult is not None:
                onResult(ok, result)
            elif not ok:
                _log.failure("a call in the {pool} pool failed", result, pool=self.name)

        super().callInThreadWithCallback(report, work)

    def stop(self) -> list[threading.Thread]:
        """
        Stop the threads (each after its call); fail the calls not started yet (L{PoolStopped});
        return the threads still in a call after C{grace} seconds.
        """
        with self._waiting_lock:
            self.joined = True
            waiting, self._waiting = list(self._waiting.values()), {}
        for onResult in waiting:
            _refuse(onResult, self.name)
        self.started = False
        self._team.quit()
        deadline = time.monotonic() + self.grace
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in self.threads if thread.is_alive()]


_EXPIRED = object()


class CallQueue:
    """
    The calls waiting for one of a bounded pool's threads (the server's database threads, each holding
    one pool connection, or its S3 threads), those running, and those given up after waiting too long
    (L{QUEUE_WAIT}, C{[storage.s3] queue_timeout}: answered 503). Updated under a lock by the reactor
    and the threads; read at scrape time (L{izreg.service.backendmetrics}).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.expired = 0

    def queued(self) -> None:
        with self._lock:
            self.waiting += 1

    def taken(self, expired: bool = False) -> None:
        with self._lock:
            self.waiting -= 1
            if expired:
                self.expired += 1
            else:
                self.running += 1

    def finished(self) -> None:
        with self._lock:
            self.running -= 1

    def left(self) -> None:
        """A call that no thread took and no timer refused: failed where it waited (the pool stopped)."""
        with self._lock:
            self.waiting -= 1


def _database_busy(wait: float) -> Exception:
    from izreg.storage.pg import DatabaseUnavailable

    return DatabaseUnavailable(f"no database connection free for {wait:g} s")


def bounded_runner(reactor, pool: ThreadPool, wait: float, queue: CallQueue | None = None,
                    refuse: Callable[[float], Exception] = _database_busy) -> Callable[..., defer.Deferred]:
    """
    L{thread_runner} where a call still waiting for a thread after C{wait} seconds fails with
    C{refuse(wait)} (by default L{izreg.storage.pg.DatabaseUnavailable}: a 503) and is never run:
    a call either runs whole or not at all. C{queue} counts the calls waiting and running.
    """
    if queue is None:
        queue = CallQueue()

    def run(f, *args, **kwargs):
        lock = threading.Lock()
        taken = [False]  # by a thread (f runs) or by the timer (f never runs)
        # the call, let go of when refused: the pool's queue keeps its entry until a thread is free, which a
        # bucket that does not answer delays for minutes, and an S3 upload's arguments hold a 5 MiB part
        call = [f, args, kwargs]
        result: defer.Deferred = defer.Deferred()

        def work():
            with lock:
                if taken[0]:
                    return _EXPIRED
                taken[0] = True
                f_, args_, kwargs_ = call
                call.clear()
            queue.taken()
            try:
                return f_(*args_, **kwargs_)
            finally:
                queue.finished()

        def expire():
            with lock:
                if taken[0]:
                    return
                taken[0] = True
                call.clear()
            queue.taken(expired=True)
            result.errback(refuse(wait))

        def done(value):
            if timer.active():
                timer.cancel()
            with lock:
                never, taken[0] = not taken[0], True
                if never:
                    call.clear()
            if never:  # failed by the pool before a thread or the timer took it (its stop: PoolStopped)
                queue.left()
            # refused by the timer already: the pool answers such a call again at its stop (PoolStopped)
            if value is not _EXPIRED and not result.called:
                result.callback(value)  # a Failure goes down the errback chain

        queue.queued()
        timer = reactor.callLater(wait, expire)
        deferToThreadPool(reactor, pool, work).addBoth(done)
        return result

    return run


def open_backend(config: Config, data_dir: str | None = None, *, create: bool = True,
                 command: bool = False) -> Backend:
    """
    The metadata stores of C{config} (no runners yet: L{Backend.start}).
    LMDB: opens (with C{create}, makes) C{data_dir/index}. PostgreSQL: connects
    and checks that the database holds the schema this izreg knows.

    @raise BackendError: one line (the database is unreachable, its schema
        unknown, the data directory holds no index).
    """
    data_dir = os.path.abspath(data_dir or config.data_dir)
    if config.metadata_backend == POSTGRESQL:
        return _open_postgresql(config, data_dir, command)
    return _open_lmdb(config, data_dir, create)


def open_database(config: Config, max_size: int | None = None, command: bool = False):
    """
    A L{izreg.storage.pg.Database} on C{config}'s DSN (not checked); L{BackendError} if unreachable.
    The server gets C{metadata.statement_timeout} and C{lock_timeout}; the ``izreg`` command
    (C{command}; connections named "izreg-cli") C{metadata.long_statement_timeout} and no lock
    timeout: its scans may run long (and its calls C{long_statement_timeout} + C{query_timeout}).
    """
    from izreg.storage.pg import Database, DatabaseUnavailable, dsn_from

    dsn = dsn_from(config.metadata_dsn)
    if not dsn:
        raise BackendError("metadata.backend = \"postgresql\" needs metadata.dsn or $IZREG_DATABASE_URL")
    try:
        return Database(dsn, max_size=max_size or config.metadata_pool_size,
                        application_name="izreg-cli" if command else "izreg",
                        statement_timeout=(config.metadata_long_statement_timeout if command
                                           else config.metadata_statement_timeout),
                        lock_timeout=0 if command else config.metadata_lock_timeout,
                        long_timeout=config.metadata_long_statement_timeout,
                        keepalives=(config.metadata_keepalives_idle, config.metadata_keepalives_interval,
                                    config.metadata_keepalives_count),
                        query_timeout=(config.metadata_long_statement_timeout + config.metadata_query_timeout
                                       if command and config.metadata_query_timeout else config.metadata_query_timeout))
    except DatabaseUnavailable as e:
        raise BackendError(str(e)) from None


def _open_postgresql(config: Config, data_dir: str, command: bool) -> Backend:
    from izreg.storage.pg import DatabaseUnavailable, SchemaError

    db = open_database(config, command=command)
    try:
        db.check()
    except (SchemaError, DatabaseUnavailable) as e:
        db.close()
        raise BackendError(str(e)) from None
    try:
        return Backend(POSTGRESQL, data_dir, db=db, **_postgresql_stores(db, data_dir))
    except BaseException:
        db.close()
        raise


def _postgresql_stores(db, data_dir: str) -> dict:
    from izreg.auth.pgstore import PgAuthStore, PgDeviceStore
    from izreg.storage.pgaudit import PgAuditLog
    from izreg.storage.pgindex import PgIndex
    from izreg.storage.pgwebhooks import PgWebhookStore

    return dict(index=PgIndex(db), auth=PgAuthStore(db), devices=PgDeviceStore(db), audit=PgAuditLog(db),
                webhooks=PgWebhookStore(db, data_dir))


def _open_lmdb(config: Config, data_dir: str, create: bool) -> Backend:
    from izreg.auth.devicestore import DeviceStore
    from izreg.auth.store import AuthStore
    from izreg.storage.audit import AuditLog
    from izreg.storage.lmdbenv import index_path, open_env
    from izreg.storage.lmdbindex import Index
    from izreg.storage.webhooks import WebhookStore

    if not create and not os.path.isdir(index_path(data_dir)):
        raise BackendError(f"no izreg data in {data_dir!r} (set --data-dir or IZREG_DATA_DIR)")
    if create:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    try:
        env = open_env(data_dir, map_size=config.lmdb_map_size)
    except Exception as e:  # lmdb.Error, SchemaError, OSError: all one line for the user
        raise BackendError(f"cannot open {data_dir!r}: {e}") from None
    return Backend(LMDB, data_dir, env=env, index=Index(env), auth=AuthStore(env), devices=DeviceStore(env),
                   audit=AuditLog(env), webhooks=WebhookStore(env, data_dir))
