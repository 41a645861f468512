# -*- test-case-name: tests.storage.test_cluster -*-
"""
What several izreg nodes over one PostgreSQL database share besides the
stores (migration ``0004_cluster.sql``): L{FailureCounts}, the failed
authentications per brake counted by every node (L{izreg.auth.clusterlimit}).
The garbage-collection sweep lock of several nodes is
L{izreg.storage.gc.PgSweepLock}, beside the flock of one machine.

Everything here blocks (a database round trip): the server calls it on its
database thread pool, never on the reactor.
"""

from __future__ import annotations

from izreg.storage.pg import Database


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
