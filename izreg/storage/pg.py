# -*- test-case-name: tests.storage.test_pg -*-
"""
The shared metadata database of several nodes: PostgreSQL through psycopg 3.

Every store over it (the index, accounts and keys, devices, audit, webhooks)
is a plain synchronous class whose public methods are each one transaction
(L{Database.run}), exactly like their LMDB twins, so one contract suite holds
both. The server never calls them on the reactor thread: it runs them on a
bounded thread pool (see L{izreg.service}), as many threads as the
connection pool has connections. The ``izreg`` command calls them directly.

The schema is versioned: each file ``migrations/NNNN_<what>.sql`` is one
version, applied in order by L{upgrade} (``izreg db upgrade``) in its own
transaction, under an advisory lock so that two nodes upgrading at once do
not collide. L{check} refuses a database whose version this izreg does not
know (newer, or not yet upgraded).

A migration whose text holds the line L{NO_TRANSACTION} runs outside a
transaction, one statement at a time (statements end with ``;`` and hold
none inside): for ``CREATE INDEX CONCURRENTLY``, which builds an index while
the table takes writes (in a transaction a build holds them for as long as
it takes). Each statement gets L{MIGRATION_LOCK_TIMEOUT} and is tried again
when that passes (L{MIGRATION_ATTEMPTS} in all), except a ``CONCURRENTLY``
one: its lock holds no one's reads or writes, and its waits (for the
transactions writing to the table, then for every older snapshot: a GC
scan, a backup's ``pg_dump``) are part of the build, so it waits as long as
its statement timeout allows (a lock timeout threw the finished build away
and built it again, each attempt). The version is recorded
once every statement is done. Its statements must be safe to run again
(``IF NOT EXISTS``, ``IF EXISTS``): an interrupted run leaves some done.
A concurrent build that failed leaves its index behind, INVALID (not used
by queries, still maintained by writes): before ``CREATE INDEX CONCURRENTLY
IF NOT EXISTS name`` (which would keep it) an invalid index of that name is
dropped, so running the upgrade again builds it anew.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from izreg.core.text import without_userinfo

T = TypeVar("T")

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: the advisory lock key of schema upgrades (any constant; ``izreg`` in ASCII)
UPGRADE_LOCK = 0x697A726567
#: an upgrade waiting for another node's polls the lock this often (seconds): a waiting
#: ``pg_advisory_lock`` holds a snapshot, and a concurrent index build waits for every older
#: snapshot to end, so the waiter and the builder would wait for each other
UPGRADE_POLL = 0.5
#: a migration holding this line runs outside a transaction (L{Database.upgrade})
NO_TRANSACTION = "-- izreg: no-transaction"
#: seconds each statement of such a migration may wait for a lock, and how often it is tried
#: (a pause of L{MIGRATION_PAUSE} between: what waits in the lock queue behind it gets through);
#: not a ``CONCURRENTLY`` one, whose lock holds no one (L{_CONCURRENTLY})
MIGRATION_LOCK_TIMEOUT = 10.0
MIGRATION_ATTEMPTS = 6
MIGRATION_PAUSE = 2.0
#: a statement that builds or drops an index CONCURRENTLY: its SHARE UPDATE EXCLUSIVE lock (and its
#: waits for older transactions, which are lock waits too) hold no read or write of the table
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.I)
_CONCURRENT_INDEX = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)\s", re.I)
#: transient conflicts between concurrent transactions: the whole transaction is run again
RETRYABLE = (pgerrors.SerializationFailure, pgerrors.DeadlockDetected)
RETRIES = 8
#: a statement cancelled by statement_timeout, a lock not had within lock_timeout: told as a 503
TIMED_OUT = (pgerrors.QueryCanceled, pgerrors.LockNotAvailable)


class SchemaError(Exception):
    """The database's schema is not the one this izreg knows (one line, said at start-up)."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached (the server answers 503, the command exits non-zero)."""


class DatabaseTimeout(DatabaseUnavailable):
    """A call ran past the statement or lock timeout (a lock held elsewhere, a stuck query): a 503 too."""


class DatabaseNoAnswer(DatabaseTimeout):
    """
    The database did not answer a call within L{Database.query_timeout} (a frozen server, a network
    partition): its connection was dropped. A transaction whose COMMIT was in flight may or may
    not have committed (as after any connection lost at commit); every other one did not.
    """


def migrations() -> list[tuple[int, str, str]]:
    """C{(version, file name, SQL)} of every migration, by version (each version once)."""
    found = []
    for name in sorted(os.listdir(MIGRATIONS_DIR)):
        m = _MIGRATION.match(name)
        if m:
            with open(os.path.join(MIGRATIONS_DIR, name), encoding="utf-8") as f:
                found.append((int(m.group(1)), name, f.read()))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise SchemaError(f"two migrations share a version in {MIGRATIONS_DIR}")
    return found


def latest_version() -> int:
    return max((v for v, _, _ in migrations()), default=0)


class Database:
    """
    A bounded pool of connections to one PostgreSQL database.

    C{run(f, *args)} calls C{f(cursor, *args)} in one transaction and commits;
    on a serialization failure or deadlock it runs C{f} again (so C{f} must
    have no effects outside the database), on anything else it rolls back
    and raises.
    """

    def __init__(self, dsn: str, max_size: int = 8, timeout: float = 10.0, application_name: str = "izreg", *,
                 statement_timeout: float = 5.0, lock_timeout: float = 2.0, long_timeout: float = 600.0,
                 keepalives: tuple[int, int, int] | None = (30, 10, 3), query_timeout: float = 30.0) -> None:
        """
        @param statement_timeout: seconds a statement may run (0: no limit), so that a lock held
            elsewhere or a stuck query frees the thread and the caller gets a 503.
        @param lock_timeout: seconds a statement may wait for a lock (0: no limit).
        @param long_timeout: the statement timeout of what legitimately runs long (garbage
            collection's scans: L{allow_long}).
        @param keepalives: libpq's C{keepalives_idle}, C{keepalives_interval},
            C{keepalives_count} (seconds, seconds, probes): a dead link is noticed.
        @param query_timeout: seconds a call (L{run}, L{read}: waiting for a connection, its
            statements, the commit) may take before its connection is dropped and it fails with
            L{DatabaseNoAnswer} (0: no limit). The server's own timeouts do nothing when the server
            is frozen or cut off, and TCP waits about 15 minutes for a lost peer (while the peer's
            kernel acknowledges, as with a stopped process, forever). Also libpq's
            C{tcp_user_timeout} (data unacknowledged that long ends the connection) and the
            C{connect_timeout} of new connections (unless the DSN sets one).
        """
        try:
            conninfo_to_dict(dsn)  # libpq's parse error quotes the DSN, password and all, and the pool logs it
        except psycopg.ProgrammingError as e:
            raise DatabaseUnavailable(f"the database DSN is not valid: {_malformed(e)}") from None
        self.dsn = dsn
        self.max_size = max_size
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.long_timeout = long_timeout
        self.query_timeout = query_timeout
        self._watchdog = _Watchdog()
        self._calls = threading.local()  # the deadline of the thread's call (L{connection})
        # autocommit: L{run} opens its transaction itself (BEGIN ... COMMIT), L{read} needs none
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": application_name}
        #: libpq's keepalive and TCP settings, for a connection made outside the pool too (the sweep lock's)
        self.keepalives: dict[str, int] = {}
        if keepalives:
            idle, interval, count = keepalives
            self.keepalives = dict(keepalives=1, keepalives_idle=idle, keepalives_interval=interval,
                                   keepalives_count=count)
        if query_timeout > 0:
            self.keepalives["tcp_user_timeout"] = int(query_timeout * 1000)  # milliseconds
            if "connect_timeout" not in conninfo_to_dict(dsn):  # psycopg's default: 130 s
                self.keepalives["connect_timeout"] = max(2, int(min(timeout, query_timeout)))
        kwargs.update(self.keepalives)
        self.pool = ConnectionPool(
            dsn, min_size=1, max_size=max_size, timeout=timeout, open=False, name="izreg",
            kwargs=kwargs, configure=self._configure, check=self._check_if_idle, reset=_stamp_idle,
        )
        POOL_LOG.last_error = None
        POOL_LOG.opening += 1
        try:
            self.pool.open(wait=True, timeout=timeout)
        except Exception as e:
            self.close()
            # the pool's own timeout says nothing of why: name the last connection failure
            reason = POOL_LOG.last_error if isinstance(e, PoolTimeout) and POOL_LOG.last_error else _describe(e)
            raise DatabaseUnavailable(f"cannot connect to the database: {reason}") from None
        finally:
            POOL_LOG.opening -= 1

    def _configure(self, conn: psycopg.Connection) -> None:
        """The pool's configure callback: every new connection gets the timeouts."""
        conn.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                     (_ms(self.statement_timeout), _ms(self.lock_timeout)))
        POOL_LOG.connected()

    def allow_long(self, cur: psycopg.Cursor) -> None:
        """
        In a transaction that legitimately runs long (a garbage-collection scan): its statements get
        L{long_timeout}, and the call L{long_timeout} + L{query_timeout} from now.
        """
        self._allow_long_call(cur.connection)
        cur.execute("SELECT set_config('statement_timeout', %s, true)", (_ms(self.long_timeout),))

    def _upgrade_lock(self, conn: psycopg.Connection, log: Callable[[str], None]) -> None:
        """
        The upgrade lock, waited for (said once) at most L{long_timeout}, then a L{SchemaError} naming the
        other upgrade: it was silent, then the watchdog's "did not answer", while the database answered.
        """
        deadline = time.monotonic() + self.long_timeout
        said = False
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (UPGRADE_LOCK,)).fetchone()[0]:
            if not said:
                log("waiting for another izreg db upgrade (or a node starting one) to finish")
                said = True
            if time.monotonic() >= deadline:
                raise SchemaError(f"another izreg db upgrade held the upgrade lock for {self.long_timeout:g} s"
                                  " (metadata.long_statement_timeout): let it finish, then run this again")
            time.sleep(UPGRADE_POLL)  # the command's thread (see UPGRADE_POLL)

    def _allow_long_call(self, conn: psycopg.Connection) -> None:
        """The call on C{conn} may run L{long_timeout} + L{query_timeout} from now."""
        if self.query_timeout > 0:
            self._watchdog.extend(conn, time.monotonic() + self.long_timeout + self.query_timeout)

    def close(self) -> None:
        self.pool.close()
        self._watchdog.stop()

    def _check_if_idle(self, conn: psycopg.Connection) -> None:
        """
        The pool's check callback (on checkout): ping a connection that sat idle for a while, within
        L{CHECK_BOUND} and the call's deadline. One cut is the connection's failure, not the call's:
        the pool gives the call another; the call is told the database did not answer only if it
        then gets none (L{connection}).
        """
        since = _idle_since.get(conn)
        if since is not None and time.monotonic() - since <= CHECK_IDLE_AFTER:
            return
        deadline = getattr(self._calls, "deadline", None)
        if deadline is None:
            ConnectionPool.check_connection(conn)
            return
        watch = self._watchdog.watch(conn, min(deadline, time.monotonic() + CHECK_BOUND))
        try:
            ConnectionPool.check_connection(conn)  # a frozen server must not hold the ping either
        finally:
            cut = self._watchdog.unwatch(watch)
            self._calls.checks_cut = getattr(self._calls, "checks_cut", 0) + cut
        if cut:  # just as the ping was answered: closed now, so not to be handed out
            raise psycopg.OperationalError("the connection's check was not answered in time")

    @contextmanager
    def _watched(self, conn: psycopg.Connection) -> Iterator[None]:
        """C{conn}, the call's, dropped by the watchdog if the call is not over by its deadline (C{dropped} set)."""
        deadline = getattr(self._calls, "deadline", None)
        if deadline is None:
            yield
            return
        watch = self._watchdog.watch(conn, deadline)
        try:
            yield
        finally:
            if self._watchdog.unwatch(watch):
                self._calls.dropped = True

    @contextmanager
    def bounded(self, conn: psycopg.Connection, seconds: float | None = None) -> Iterator[None]:
        """
        C{conn}, a connection of the caller's own (outside the pool: the sweep lock's), dropped by the
        watchdog if what runs in the block takes longer than C{seconds} (L{query_timeout} by default;
        0: no bound); it raises L{DatabaseNoAnswer} then, and C{conn} is closed.
        """
        seconds = self.query_timeout if seconds is None else seconds
        if seconds <= 0:
            yield
            return
        watch = self._watchdog.watch(conn, time.monotonic() + seconds)
        error: BaseException | None = None
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            error = e
        finally:
            if self._watchdog.unwatch(watch):
                raise DatabaseNoAnswer(f"the database did not answer within {seconds:g} s"
                                       " (metadata.query_timeout): its connection was dropped") from error
        if error is not None:
            raise error

    @contextmanager
    def connection(self, timeout: float | None = None, bound: float | None = None) -> Iterator[psycopg.Connection]:
        """
        A connection of the pool (waiting at most C{timeout} s, the pool's timeout by default) for a
        call that must be over within C{bound} s (L{query_timeout} by default, and at most that), or
        its connection is dropped and it raises L{DatabaseNoAnswer}.
        """
        bound = self.query_timeout if bound is None else min(bound, self.query_timeout or bound)
        outer = (getattr(self._calls, "deadline", None), getattr(self._calls, "dropped", False),
                 getattr(self._calls, "checks_cut", 0))
        self._calls.deadline = time.monotonic() + bound if bound > 0 else None
        self._calls.dropped, self._calls.checks_cut = False, 0
        try:
            wait = self.pool.timeout if timeout is None else timeout
            with self.pool.connection(timeout=min(wait, bound) if bound > 0 else wait) as conn:
                with self._watched(conn):
                    yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # cut by the watchdog; or no connection had in time after one being checked was cut
            # (another's error after that is its own: the cut check's connection is not the call's)
            if self._calls.dropped or (isinstance(e, PoolTimeout) and self._calls.checks_cut):
                raise DatabaseNoAnswer(f"the database did not answer within {bound:g} s (metadata.query_timeout):"
                                       " its connection was dropped") from e
            if isinstance(e, PoolTimeout):  # an OperationalError too: first
                raise DatabaseUnavailable(f"no database connection free: {_describe(e)}") from e
            if isinstance(e, TIMED_OUT):  # OperationalErrors too
                raise DatabaseTimeout(f"a database call took too long: {_describe(e)}"
                                      f" (metadata.statement_timeout = {self.statement_timeout:g} s,"
                                      f" lock_timeout = {self.lock_timeout:g} s)") from e
            if isinstance(e, RETRYABLE):
                raise
            raise DatabaseUnavailable(f"the database is unavailable: {_describe(e)}") from e
        finally:
            self._calls.deadline, self._calls.dropped, self._calls.checks_cut = outer

    def run(self, f: Callable[..., T], *args: Any) -> T:
        for attempt in range(RETRIES):
            try:
                with self.connection() as conn:
                    with conn.transaction():
                        with conn.cursor() as cur:
                            return f(cur, *args)
            except RETRYABLE as e:
                if attempt == RETRIES - 1:
                    # still conflicting after every retry: the client retries later (503), not a 500
                    raise DatabaseUnavailable(f"a database call kept conflicting with others ({RETRIES} attempts):"
                                              f" {_describe(e)}") from e
                time.sleep(0.005 * (2 ** attempt))  # a worker thread, never the reactor
        raise AssertionError("unreachable")

    def read(self, f: Callable[..., T], *args: Any) -> T:
        """
        C{f(cursor, *args)} outside a transaction: one round trip for one
        statement, where L{run} costs three (BEGIN, the statement, COMMIT).
        For a single-statement read only (or reads that need no common
        snapshot: under READ COMMITTED each statement of L{run} has its own
        anyway); nothing that writes, locks or sets a C{LOCAL} setting.
        """
        try:
            with self.connection() as conn:
                with conn.cursor() as cur:
                    return f(cur, *args)
        except RETRYABLE as e:  # not retried here: a read is no transaction; the client retries (503)
            raise DatabaseUnavailable(f"a database read conflicted with others: {_describe(e)}") from e

    def ping(self, timeout: float) -> None:
        """A round trip, waiting at most C{timeout} s for a connection and as long again for the answer (the readiness check)."""
        with self.connection(timeout=timeout, bound=2 * timeout) as conn:
            conn.execute("SELECT 1")

    # -- schema -------------------------------------------------------------

    def version(self) -> int:
        """The schema version the database holds (0: empty)."""
        return max(self.run(_applied), default=0)

    def check(self) -> None:
        """Raise L{SchemaError} unless the database holds exactly the schema this izreg knows."""
        applied = self.run(_applied)
        known = {v for v, _, _ in migrations()}
        found = max(applied, default=0)
        if applied == known:
            return
        if applied - known:
            raise SchemaError(f"the database has schema version {found}; this izreg knows up to {max(known, default=0)}:"
                              " upgrade izreg on this node")
        raise SchemaError(f"the database has schema version {found}; this izreg needs {max(known)}:"
                          " run `izreg db upgrade` first")

    def upgrade(self, log: Callable[[str], None] = lambda line: None) -> tuple[int, int]:
        """
        Apply every migration the database lacks, each in its own transaction (or, a L{NO_TRANSACTION}
        one, statement by statement); C{(version before, after)}.
        """
        before = self.version()
        known = migrations()
        newer = self.run(_applied) - {v for v, _, _ in known}
        if newer:
            raise SchemaError(f"the database has schema version {max(newer)}, unknown to this izreg:"
                              " upgrade izreg on this node")
        with self.connection() as conn:
            self._allow_long_call(conn)  # it may wait for another node's upgrade, then migrate
            # a session lock taken before the migrations' transactions begin, so each of them
            # starts after another node's upgrade committed and sees its tables
            self._upgrade_lock(conn, log)
            try:
                for version, name, sql in known:
                    if NO_TRANSACTION in sql.splitlines():
                        with conn.cursor() as cur:
                            if version in _applied(cur):
                                continue
                        self._migrate_outside(conn, name, sql, log)
                        conn.execute("INSERT INTO izreg_schema (version, name, applied) VALUES (%s, %s, now())",
                                     (version, name))
                    else:
                        with conn.transaction():
                            with conn.cursor() as cur:
                                if version in _applied(cur):  # applied before, or by another node meanwhile
                                    continue
                                cur.execute(sql)
                                cur.execute("INSERT INTO izreg_schema (version, name, applied) VALUES (%s, %s, now())",
                                            (version, name))
                    log(f"applied {name}")
            finally:
                if not conn.closed:  # a lost connection took the session and its lock with it
                    conn.rollback()
                    conn.execute("SELECT pg_advisory_unlock(%s)", (UPGRADE_LOCK,))
        return before, self.version()


    def _migrate_outside(self, conn: psycopg.Connection, name: str, sql: str, log: Callable[[str], None]) -> None:
        """The statements of a L{NO_TRANSACTION} migration, each on its own, with a lock timeout and retries."""
        for statement in _statements(sql):
            index = _CONCURRENT_INDEX.match(statement)
            wait = 0 if _CONCURRENTLY.search(statement) else MIGRATION_LOCK_TIMEOUT  # 0: no lock timeout
            for attempt in range(1, MIGRATION_ATTEMPTS + 1):
                self._allow_long_call(conn)  # each statement (a build) may take long_timeout
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(wait),))
                try:
                    if index:
                        _drop_invalid_index(conn, index.group(1))
                    conn.execute(statement)
                    break
                except pgerrors.LockNotAvailable as e:
                    what = " ".join(statement.split()[:6])
                    if attempt == MIGRATION_ATTEMPTS:
                        raise SchemaError(f"{name}: {what} ...: {_describe(e)} ({MIGRATION_ATTEMPTS} attempts of"
                                          f" {MIGRATION_LOCK_TIMEOUT:g} s; a long transaction holds the table?):"
                                          " run `izreg db upgrade` again") from None
                    log(f"{name}: {what} ...: waited {MIGRATION_LOCK_TIMEOUT:g} s for a lock,"
                        f" trying again (attempt {attempt + 1} of {MIGRATION_ATTEMPTS})")
                    time.sleep(MIGRATION_PAUSE)
                finally:
                    if not conn.closed:
                        conn.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(self.lock_timeout),))


def _statements(sql: str) -> list[str]:
    """The statements of a migration: its text without comment lines, split at each ``;``."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def _drop_invalid_index(conn: psycopg.Connection, name: str) -> None:
    """Drop the index C{name} if a failed concurrent build left it invalid (``IF NOT EXISTS`` would keep it)."""
    row = conn.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)).fetchone()
    if row and row[0]:
        conn.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(name)))


def _applied(cur: psycopg.Cursor) -> set[int]:
    cur.execute("SELECT to_regclass('izreg_schema') IS NOT NULL")
    if not cur.fetchone()[0]:
        return set()
    cur.execute("SELECT version FROM izreg_schema")
    return {int(v) for (v,) in cur.fetchall()}


#: a connection idle longer than this is pinged before use (a restarted server or a dropped
#: link shows there, not in a request); a busy connection is not: a ping per call was a
#: round trip on every store call
CHECK_IDLE_AFTER = 5.0
#: seconds that ping may take (within the call's deadline): past it the connection is dropped and the
#: call gets another, so one frozen idle backend costs a call this, not its whole query_timeout
CHECK_BOUND = 5.0
_idle_since: "weakref.WeakKeyDictionary[psycopg.Connection, float]" = weakref.WeakKeyDictionary()


def _stamp_idle(conn: psycopg.Connection) -> None:
    """The pool's reset callback: when a connection goes back to the pool."""
    _idle_since[conn] = time.monotonic()


class _Watch:
    __slots__ = ("conn", "deadline", "fired")

    def __init__(self, conn: psycopg.Connection, deadline: float) -> None:
        self.conn, self.deadline, self.fired = conn, deadline, False


class _Watchdog:
    """
    The client side's bound on database calls. libpq waits for the server's answer as long as TCP
    keeps the connection: when the server is frozen (a stopped process, a hung host whose kernel
    still acknowledges) that is forever, and when packets are dropped about 15 minutes. Each call
    watches its connection until a deadline; one thread shuts down the socket of a call past it,
    so that libpq's wait in the calling thread ends at once ("server closed the connection") and
    the connection is closed, never returned to the pool. The server sees the connection end and
    rolls back what it had not committed.

    The socket is shut down, not closed, and only while it is watched (its thread unwatches it
    under the same lock before the connection may be closed): the descriptor is never another's.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: dict[int, _Watch] = {}  # by id of the connection
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._wakes_at = 0.0  # when the thread wakes next (monotonic)

    def watch(self, conn: psycopg.Connection, deadline: float) -> _Watch:
        watch = _Watch(conn, deadline)
        with self._cond:
            self._watches[id(conn)] = watch
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._loop, name="izreg-pg-watchdog", daemon=True)
                thread.start()  # if it cannot start, the next call tries again
                self._thread = thread
            elif deadline < self._wakes_at:
                self._cond.notify()  # it sleeps past this deadline (a shorter bound: the readiness ping's)
        return watch

    def extend(self, conn: psycopg.Connection, deadline: float) -> None:
        """The call on C{conn} may run until C{deadline} (if later than its own)."""
        with self._cond:
            watch = self._watches.get(id(conn))
            if watch is not None and not watch.fired:
                watch.deadline = max(watch.deadline, deadline)

    def unwatch(self, watch: _Watch) -> bool:
        """The call is over; True if its connection was cut (it is closed now, not to be used again)."""
        with self._cond:
            if self._watches.get(id(watch.conn)) is watch:
                del self._watches[id(watch.conn)]
        if watch.fired:
            watch.conn.close()  # cut just as the call ended: libpq may not know yet
        return watch.fired

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for watch in list(self._watches.values()):
                    if watch.deadline <= now:
                        del self._watches[id(watch.conn)]
                        watch.fired = True
                        try:
                            _cut(watch.conn)
                        except Exception:  # the thread must live: without it no call is bounded
                            _watchdog_logger.exception("cutting a database call past its deadline failed")
                self._wakes_at = min((w.deadline for w in self._watches.values()), default=now + 3600)
                self._cond.wait(max(self._wakes_at - now, 0.01))


_watchdog_logger = logging.getLogger("izreg.pg.watchdog")


def _cut(conn: psycopg.Connection) -> None:
    """Shut down the socket of C{conn} (another thread waits on it), leaving its descriptor to psycopg."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:  # already closed
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more
        pass


def _ms(seconds: float) -> str:
    """A timeout setting's value: milliseconds, 0 for none."""
    return str(max(0, int(seconds * 1000)))


class _PoolLog(logging.Filter):
    """
    The psycopg pool logs every failed reconnection attempt (and every
    broken connection it discards): while the database is down that is a
    line every few seconds per connection. This filter on its logger lets
    through one line when the database goes down, then at most one per
    C{interval} seconds, and says when a connection succeeds again.
    """

    interval = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._last = -float("inf")
        self._suppressed = 0
        #: the last connection failure, one line without a password
        self.last_error: str | None = None
        #: Databases waiting for their first connection
        self.opening = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.msg is _BACK:
            return True
        now = time.monotonic()
        if str(record.msg).startswith("error connecting in") and record.args:
            self.last_error = _describe(record.args[-1])  # for Database's start-up error
            if self.opening:  # that error says it, in its one line
                return False
        with self._lock:
            if str(record.msg).startswith("error connecting in") and self.down_since is None:
                self.down_since, self._last, self._suppressed = now, now, 0
                record.msg, record.args = ("the database is unreachable: %s (the pool keeps reconnecting;"
                                           " at most one line per %g s until it is back)",
                                           (_describe(record.args[-1]), self.interval))
                return True
            if now - self._last < self.interval:
                self._suppressed += 1
                return False
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        if suppressed:
            record.msg, record.args = "%s (and %d more such lines since the last one)", (
                _describe(Exception(record.getMessage())), suppressed)
        return True

    def connected(self) -> None:
        """A new connection was made: if the database was down, say it is back."""
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            _pool_logger.warning(_BACK, time.monotonic() - since)


_BACK = "the database is reachable again (after %.0f s)"
_pool_logger = logging.getLogger("psycopg.pool")
POOL_LOG = _PoolLog()
_pool_logger.addFilter(POOL_LOG)


def _describe(e: Exception) -> str:
    """One line about a connection failure, with no password in it."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = without_userinfo(text)  # a URI's user:password@
    return re.sub(r"(password=)\S+", r"\1***", text)


def _malformed(e: Exception) -> str:
    """libpq's complaint about a DSN it cannot parse, without the parts it quotes (any may be the password)."""
    return re.sub(r'"[^"]*"?', '"..."', " ".join(str(e).split()) or type(e).__name__)


def dsn_from(configured: str | None) -> str | None:
    """The configured DSN, or C{IZREG_DATABASE_URL} when none is configured."""
    return configured or os.environ.get("IZREG_DATABASE_URL") or None
