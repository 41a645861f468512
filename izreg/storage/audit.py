# -*- test-case-name: tests.storage.test_audit -*-
"""
The audit log: who deleted (or otherwise changed) what, when and from where.

One LMDB named database, ``audit``. Keys are time-ordered: 8 bytes of
big-endian microseconds since the epoch, then 8 random bytes (two records in
the same microsecond never collide, and a cursor walks them oldest first).
Values are JSON::

    {"action", "account", "actor", "target", "address", "detail"}

Actors are ``key:<key id>``, ``device:<account>/<device id>`` or ``cli``:
never a secret. L{AuditLog.record} is a write (an fsync): the server runs it
on its writer thread, like every other write.

Retention (L{Retention}, ``[audit] keep_days`` and ``max_entries``; 0: keep
forever, the default): the oldest records go, a bounded batch per write
transaction (L{AuditLog.prune}), at each garbage-collection sweep.
"""

from __future__ import annotations

import datetime
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

import lmdb
from zope.interface import implementer

from izreg.storage import schema
from izreg.storage.interfaces import IAuditLog
from izreg.storage.lmdbstore import LmdbStore, dump, load
from izreg.storage.runners import inline, run_inline, settled

_TIME = struct.Struct(">Q")
#: records deleted per write transaction when pruning
PRUNE_BATCH = 1000
DAY = 24 * 3600


@dataclass(frozen=True)
class Retention:
    """How long audit records are kept: C{keep_days} and at most C{max_entries} (0: no limit)."""

    keep_days: int = 0
    max_entries: int = 0

    def __bool__(self) -> bool:
        return bool(self.keep_days or self.max_entries)

    def limits(self, now: float) -> tuple[float | None, int | None]:
        """C{(before, keep)} for L{IAuditLog.prune}: records older than C{before}, and beyond the newest C{keep}, go."""
        return (now - self.keep_days * DAY if self.keep_days else None), (self.max_entries or None)


async def prune_batches(log, retention: Retention, now: float, batch: int = PRUNE_BATCH,
                        run_write: Callable[..., Any] = inline) -> int:
    """
    Prune C{log} to C{retention}, a batch per write transaction, each run by
    C{run_write} (the server's writer thread; by default here, inline); the
    records deleted.
    """
    if not retention:
        return 0
    total = 0
    while True:
        done = await settled(run_write(log.prune, *retention.limits(now), batch))
        total += done
        if done < batch:
            return total


def prune(log, retention: Retention, now: float, batch: int = PRUNE_BATCH) -> int:
    """Prune C{log} to C{retention}, a batch per transaction, in this thread (C{izreg gc}); the records deleted."""
    return run_inline(prune_batches(log, retention, now, batch))


def _at(when: float) -> bytes:
    """The time part of a key: 8 bytes, big-endian microseconds."""
    return _TIME.pack(max(0, int(when * 1_000_000)))


def _key(now: float) -> bytes:
    return _at(now) + os.urandom(8)


def iso(when: float | None) -> str | None:
    """RFC 3339 UTC with a trailing Z (seconds), or C{None}."""
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@implementer(IAuditLog)
class AuditLog(LmdbStore):
    """Append-only audit records over an open LMDB environment."""

    def __init__(self, env: lmdb.Environment) -> None:
        super().__init__(env, schema.AUDIT)
        self._env = env
        self._db = self.handle(schema.AUDIT)

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
        with self.writing(self._db) as txn:
            txn.put(_key(now), dump(value))

    def prune(self, before: float | None, keep: int | None, limit: int) -> int:
        """Delete at most C{limit} oldest records: those older than C{before}, and those beyond the newest C{keep}."""
        bound = _at(before) if before is not None else None
        deleted = 0
        with self.writing(self._db) as txn:
            excess = txn.stat(self._db)["entries"] - keep if keep is not None else 0
            cursor = txn.cursor()
            if not cursor.first():
                return 0
            while deleted < limit:
                k = cursor.key()
                if not k or not (deleted < excess or (bound is not None and k[:8] < bound)):
                    break
                cursor.delete()  # and on to the next record
                deleted += 1
        return deleted

    def entries(self, account: str | None = None, since: float | None = None, limit: int | None = None) -> list[dict]:
        """Records oldest first (optionally one account's, from C{since} on, at most C{limit})."""
        out: list[dict] = []
        with self.reading(self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(_at(since)) if since is not None else cursor.first()
            if not found:
                return out
            for k, v in cursor:
                if limit is not None and len(out) >= limit:
                    break
                entry = load(v)
                if account is not None and entry.get("account") != account:
                    continue
                entry["time"] = _TIME.unpack(k[:8])[0] / 1_000_000
                out.append(entry)
        return out
