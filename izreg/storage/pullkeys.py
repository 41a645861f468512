# -*- test-case-name: tests.auth.test_devices -*-
"""
The pull-record keys of the LMDB C{devices} database and their reverse
index (the layout is described in L{izreg.auth.devicestore}).

The reverse index (``pullof``) of records made before it existed is built
by L{index_pulls} when the environment is opened
(L{izreg.storage.lmdbenv.open_env}), in its schema transaction: never by a
store's constructor, which may run on the reactor while the writer thread
holds the write lock.
"""

from __future__ import annotations

import hashlib
import json

from izreg.storage import schema
from izreg.storage.refs import repo_key, scan

PULL = b"pull"
PULLOF = b"pullof"
INDEXED = schema.key(b"meta", PULLOF)


def pull_key(account: str, device_id: str, repository: str, digest: str) -> bytes:
    return schema.key(PULL, account, device_id, repository, digest)


def put_pullof(txn, db, account: str, device_id: str, repository: str, digest: str, at: float) -> None:
    """The reverse entry of one pull record (the latest pull per device and manifest wins)."""
    device = device_id if len(device_id) <= 64 else hashlib.sha256(device_id.encode()).hexdigest()
    k = schema.key(PULLOF, repo_key(repository), digest, device)
    old = txn.get(k, db=db)
    if old is None or json.loads(old)["at"] < at:
        txn.put(k, json.dumps({"at": at, "device": device_id}).encode(), db=db)


def index_pulls(txn, db) -> None:
    """Write the ``pullof`` entries of pull records made before they existed (once)."""
    if txn.get(INDEXED, db=db) is not None:
        return
    for k, v in list(scan(txn, db, schema.prefix(PULL))):
        _, account, device, repo, digest = k.decode().split("\x00")
        put_pullof(txn, db, account, device, repo, digest, json.loads(v)["at"])
    txn.put(INDEXED, b"1", db=db)
