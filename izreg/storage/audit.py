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
"""

from __future__ import annotations

import datetime
import os
import struct
from typing import Any

import lmdb
from zope.interface import implementer

from izreg.storage import schema
from izreg.storage.interfaces import IAuditLog
from izreg.storage.lmdbstore import LmdbStore, dump, load

_TIME = struct.Struct(">Q")


def _key(now: float) -> bytes:
    return _TIME.pack(max(0, int(now * 1_000_000))) + os.urandom(8)


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

    def entries(self, account: str | None = None, since: float | None = None, limit: int | None = None) -> list[dict]:
        """Records oldest first (optionally one account's, from C{since} on, at most C{limit})."""
        out: list[dict] = []
        with self.reading(self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(_TIME.pack(max(0, int(since * 1_000_000)))) if since is not None else cursor.first()
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
