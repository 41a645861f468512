# -*- test-case-name: tests.storage.test_audit -*-
"""
The audit log in PostgreSQL (table ``audit_log``): the twin of
L{izreg.storage.audit.AuditLog} for several nodes sharing one database.

Records keep LMDB's JSON and its time in microseconds; two records of the
same microsecond keep both (a sequence number breaks the tie). Each public
method is one transaction.
"""

from __future__ import annotations

import json
import time
from typing import Any

from zope.interface import implementer

from izreg.storage.interfaces import IAuditLog
from izreg.storage.pg import Database


#: seconds a prune's cutoff serves its next batches (then it is found again)
CUTOFF_REUSE = 60.0


def _micros(when: float) -> int:
    return max(0, int(when * 1_000_000))


def select(cur, query: str, conditions: dict, order: str, limit: int | None) -> list[tuple]:
    """C{query} with the C{conditions} whose value is not C{None} (C{"column = %s": value}), ordered and limited."""
    used = {sql: value for sql, value in conditions.items() if value is not None}
    args = list(used.values())
    query += (" WHERE " + " AND ".join(used) if used else "") + f" ORDER BY {order}"
    if limit is not None:
        query += " LIMIT %s"
        args.append(max(0, limit))
    cur.execute(query, args)
    return cur.fetchall()


@implementer(IAuditLog)
class PgAuditLog:
    """Append-only audit records over a L{Database} (upgraded). Does not own or close it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: a prune by count in progress: (keep, its cutoff (at_us, seq) or None, time.monotonic() when found)
        self._cutoff: tuple | None = None

    def record(
        self,
        *,
        action: str,
        account: str | None,
        actor: str,
        target: str,
        address: str | None = None,
        detail: Any = None,
        now: float,
    ) -> None:
        value = {"action": action, "account": account, "actor": actor, "target": target,
                 "address": address, "detail": detail}
        entry = json.dumps(value, separators=(",", ":"), sort_keys=True)

        def put(cur):
            cur.execute("INSERT INTO audit_log (at_us, account, entry) VALUES (%s, %s, %s)", (_micros(now), account, entry))

        self.db.run(put)

    def prune(self, before: float | None, keep: int | None, limit: int) -> int:
        """
        The oldest C{limit} records among those older than C{before} and
        those past the C{keep} newest, by the index on time: never a count of
        the table. The newest record past the C{keep} newest (the cutoff) is
        found by walking C{keep} index entries down from the newest, once per
        prune: while batches come back full, the next call deletes up to the
        same cutoff (the records newer than it only grow in number meanwhile,
        so none of the newest C{keep} goes; at worst a few more stay, until
        the next prune).
        """
        if limit <= 0 or (before is None and keep is None):
            return 0
        cached = self._cutoff
        reuse = cached is not None and cached[0] == keep and time.monotonic() - cached[2] < CUTOFF_REUSE

        def f(cur):
            cutoff = cached[1] if reuse else None
            if keep is not None and not reuse:
                cur.execute("SELECT at_us, seq FROM audit_log ORDER BY at_us DESC, seq DESC OFFSET %s LIMIT 1", (keep,))
                row = cur.fetchone()
                cutoff = (row[0], row[1]) if row is not None else None
            conditions, args = [], []
            if before is not None:
                conditions.append("at_us < %s")
                args.append(_micros(before))
            if cutoff is not None:
                conditions.append("(at_us, seq) <= (%s, %s)")
                args += cutoff
            if not conditions:
                return 0, cutoff
            cur.execute("DELETE FROM audit_log WHERE seq = ANY(ARRAY(SELECT seq FROM audit_log WHERE "
                        + " OR ".join(conditions) + " ORDER BY at_us, seq LIMIT %s))", (*args, limit))
            return cur.rowcount, cutoff

        deleted, cutoff = self.db.run(f)
        full = deleted >= limit and keep is not None  # more to come, by the same cutoff
        self._cutoff = (keep, cutoff, cached[2] if reuse else time.monotonic()) if full else None
        return deleted

    def entries(self, account: str | None = None, since: float | None = None, limit: int | None = None) -> list[dict]:
        rows = self.db.run(select, "SELECT at_us, entry FROM audit_log",
                           {"account = %s": account, "at_us >= %s": None if since is None else _micros(since)},
                           "at_us, seq", limit)
        out = []
        for at_us, entry in rows:
            record = json.loads(entry)
            record["time"] = at_us / 1_000_000
            out.append(record)
        return out
