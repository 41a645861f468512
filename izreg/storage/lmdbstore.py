# -*- test-case-name: tests.storage.test_lmdb_handles -*-
"""
The one way the stores over the LMDB index reach it (L{izreg.storage.lmdbindex.Index},
L{izreg.auth.store.AuthStore}, L{izreg.auth.devicestore.DeviceStore},
L{izreg.storage.audit.AuditLog}, L{izreg.storage.webhooks.WebhookStore}):

- open: a store takes the environment L{izreg.storage.lmdbenv.open_env}
  opened and the handles of its named databases opened with it
  (L{LmdbStore.handle}); it never opens a database itself;
- read and write: one short transaction per public method,
  C{with self.reading() as txn} or C{with self.writing() as txn} (the
  server runs the writing ones on its writer thread);
- encode: values are JSON (L{dump}: compact, sorted keys; L{load}), keys
  are NUL-joined parts (L{izreg.storage.schema.key}).

Their PostgreSQL twins keep the same public methods over
L{izreg.storage.pg.Database} instead.
"""

from __future__ import annotations

import json
from typing import Any

import lmdb

from izreg.storage.lmdbenv import handle


def dump(value: Any) -> bytes:
    """A value as stored: compact JSON with sorted keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def load(raw: bytes) -> Any:
    return json.loads(raw)


class LmdbStore:
    """What a store over the LMDB index has: the environment and the handles of its databases."""

    def __init__(self, env: lmdb.Environment, *names: bytes) -> None:
        self.env = env
        self._handles = {name: handle(env, name) for name in names}

    def handle(self, name: bytes):
        return self._handles[name]

    def reading(self, db=None) -> lmdb.Transaction:
        """A read transaction (C{with}), on C{db} by default."""
        return self.env.begin(db=db)

    def writing(self, db=None) -> lmdb.Transaction:
        """A write transaction (C{with}; committed at the end, aborted on an exception), on C{db} by default."""
        return self.env.begin(write=True, db=db)
