# -*- test-case-name: tests.storage.test_lmdbindex -*-
"""
Opening the LMDB environment, shared by the server and the ``izreg`` command.

LMDB is safe across processes, so ``izreg key create`` may run while the
server does; both must open the environment the same way. Never open it
before twistd forks (see L{izreg.service.services}).
"""

from __future__ import annotations

import os

import lmdb

from izreg.storage import schema

class SchemaError(Exception):
    """The index was written by a newer izreg, or cannot be upgraded."""


def index_path(data_dir: str) -> str:
    return os.path.join(data_dir, "index")


def open_env(data_dir: str, map_size: int, readonly: bool = False) -> lmdb.Environment:
    """
    Open (creating if needed) the index of C{data_dir} and check its schema
    version. C{map_size} is the configured C{storage.lmdb_map_size}: the map is
    sparse, an upper bound on the index size, not disk usage.
    """
    path = index_path(data_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    env = lmdb.open(path, map_size=map_size, max_dbs=schema.MAX_DBS, subdir=True, readonly=readonly, max_readers=256)
    try:
        _check_schema(env, readonly)
    except BaseException:
        env.close()
        raise
    return env


def _check_schema(env: lmdb.Environment, readonly: bool) -> None:
    if readonly:
        return
    with env.begin(write=True) as txn:
        for name in schema.ALL:
            env.open_db(name, txn=txn)
        meta = env.open_db(schema.META, txn=txn)
        found = txn.get(b"schema_version", db=meta)
        if found is None:
            txn.put(b"schema_version", str(schema.SCHEMA_VERSION).encode(), db=meta)
            return
        try:
            version = int(found)
        except ValueError:
            raise SchemaError(f"the index at {env.path()} has an unreadable schema version {found!r}") from None
        if version > schema.SCHEMA_VERSION:
            raise SchemaError(f"the index at {env.path()} has schema {version}; this izreg knows up to {schema.SCHEMA_VERSION}")
        # Upgrades go here one step at a time (v1 -> v2 -> ...).
        if version == 1:
            # v2: reference counts, reverse tags and repository counters, derived from the manifests
            from izreg.storage.refs import Refs

            Refs(dbs(env, txn)).rebuild(txn)
            version = 2
            txn.put(b"schema_version", b"2", db=meta)
        if version < schema.SCHEMA_VERSION:
            raise SchemaError(f"no upgrade from schema {version} to {schema.SCHEMA_VERSION}")


def dbs(env: lmdb.Environment, txn: lmdb.Transaction | None = None) -> dict[bytes, object]:
    """Handles of every named database (they stay valid for the env's lifetime)."""
    return {name: env.open_db(name, txn=txn) for name in schema.ALL}
