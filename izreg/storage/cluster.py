# -*- test-case-name: tests.storage.test_cluster -*-
"""
What several izreg nodes over one PostgreSQL database share besides the
stores (migration ``0004_cluster.sql``):

- L{PgSweepLock}: one garbage-collection sweep at a time across every node
  and ``izreg gc``, a session advisory lock (C{pg_try_advisory_lock}) held on
  one pooled connection for the sweep; the flock of L{izreg.storage.gc.SweepLock}
  only reaches the processes of one machine. A node that dies mid-sweep
  loses its connection and with it the lock.
- L{FailureCounts}: failed authentications per brake, counted by every node
  (L{izreg.auth.clusterlimit}).

Everything here blocks (a database round trip): the server calls it on its
database thread pool, never on the reactor.
"""

from __future__ import annotations

from izreg.storage.pg import Database

#: the advisory lock key of garbage-collection sweeps (``izgc`` in ASCII; not pg.UPGRADE_LOCK)
SWEEP_LOCK = 0x697A6763


class PgSweepLock:
    """
    The interface of L{izreg.storage.gc.SweepLock} (C{acquire(wait)},
    C{release()}) over PostgreSQL. The lock lives in a connection of its own,
    outside the pool, for as long as it is held: the sweep's own queries and
    the requests served meanwhile keep every pooled connection.
    """

    def __init__(self, db: Database, key: int = SWEEP_LOCK) -> None:
        self.db = db
        self.key = key
        self._conn = None

    def acquire(self, wait: bool = False) -> bool:
        import psycopg

        from izreg.storage.pg import DatabaseUnavailable, _describe

        if self._conn is not None:
            raise RuntimeError("this sweep lock is already held")
        try:
            conn = psycopg.connect(self.db.dsn, autocommit=True, application_name="izreg-gc")
        except psycopg.Error as e:
            raise DatabaseUnavailable(f"the database is unavailable: {_describe(e)}") from None
        try:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
                got = True
            else:
                got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the session ends: PostgreSQL releases its advisory locks


class FailureCounts:
    """Failed authentications per brake C{(address, key id or "*")}, shared by every node."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, brake: tuple[str, str], now: float, window: float, limit: int) -> list[float]:
        """Count one failure at C{now}; the times of the brake's latest C{limit} failures within C{window}, oldest first."""
        return self.db.run(_record, brake, now, window, limit)

    def recent(self, brake: tuple[str, str], now: float, window: float, limit: int) -> list[float]:
        """The times of the brake's latest C{limit} failures within C{window}, oldest first."""
        return self.db.run(_recent, brake, now, window, limit)


def _record(cur, brake, now, window, limit) -> list[float]:
    address, key_id = brake
    cur.execute("DELETE FROM auth_failures WHERE at <= %s", (now - window,))
    cur.execute("INSERT INTO auth_failures (address, key_id, at) VALUES (%s, %s, %s)", (address, key_id, now))
    return _recent(cur, brake, now, window, limit)


def _recent(cur, brake, now, window, limit) -> list[float]:
    address, key_id = brake
    cur.execute("SELECT at FROM auth_failures WHERE address = %s AND key_id = %s AND at > %s"
                " ORDER BY at DESC LIMIT %s", (address, key_id, now - window, limit))
    return sorted(float(at) for (at,) in cur.fetchall())
