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
from typing import Any

from zope.interface import implementer

from izreg.storage.interfaces import IAuditLog
from izreg.storage.pg import Database


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
        One statement on the index by time: the oldest C{limit} records among
        those older than C{before} and those at or below the newest record past
        the C{keep} newest (found by walking C{keep} index entries down from the
        newest, never by counting the table).
        """
        if limit <= 0 or (before is None and keep is None):
            return 0

        def f(cur):
            cur.execute(
                "DELETE FROM audit_log WHERE seq = ANY(ARRAY("
                " SELECT seq FROM audit_log"
                " WHERE at_us < %(before)s OR (at_us, seq) <= ("
                "  SELECT at_us, seq FROM audit_log WHERE %(keep)s::bigint IS NOT NULL"
                "  ORDER BY at_us DESC, seq DESC OFFSET %(keep)s LIMIT 1)"
                " ORDER BY at_us, seq LIMIT %(limit)s))",
                {"before": None if before is None else _micros(before), "keep": keep, "limit": limit})
            return cur.rowcount
        return self.db.run(f)

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
