# -*- test-case-name: tests.storage.test_lmdbenv -*-
"""
Opening the LMDB environment, shared by the server and the ``izreg`` command.

LMDB is safe across processes, so ``izreg key create`` may run while the
server does; both must open the environment the same way. Never open it
before twistd forks (see L{izreg.service.services}).

Every named database is opened once, here, in the transaction that checks
the schema, and its handle is kept for the environment's lifetime
(L{handle}, L{dbs}). Nothing else calls C{env.open_db}: without a
transaction py-lmdb opens a write transaction of its own, so a store built
on the reactor while the writer thread held a write transaction would wait
for it (and deadlock when that writer waits on the reactor).
"""

from __future__ import annotations

import os
import weakref
from typing import Iterable

import lmdb

from izreg.storage import schema

class SchemaError(Exception):
    """The index was written by a newer izreg, or cannot be upgraded."""


def index_path(data_dir: str) -> str:
    return os.path.join(data_dir, "index")


#: env -> {name: handle}: the named databases opened with the environment
_HANDLES: "weakref.WeakKeyDictionary[lmdb.Environment, dict[bytes, object]]" = weakref.WeakKeyDictionary()


def open_env(data_dir: str, map_size: int, readonly: bool = False, sync: bool = True) -> lmdb.Environment:
    """
    Open (creating if needed) the index of C{data_dir}, open every named
    database and check the schema version. C{map_size} is the configured
    C{storage.lmdb_map_size}: the map is sparse, an upper bound on the index
    size, not disk usage. C{sync=False} only for throwaway data (the bench).
    """
    path = index_path(data_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    env = lmdb.open(path, map_size=map_size, max_dbs=schema.MAX_DBS, subdir=True, readonly=readonly, max_readers=256,
                    sync=sync, metasync=sync)
    try:
        if readonly:
            open_dbs(env, schema.ALL, write=False)
        else:
            _check_schema(env)
    except BaseException:
        env.close()
        raise
    return env


def open_dbs(env: lmdb.Environment, names: Iterable[bytes], write: bool = True) -> dict[bytes, object]:
    """
    Open the named databases of a newly opened C{env} in one transaction of
    its own (C{write=False}: only those that exist) and keep their handles.
    Call it right after C{lmdb.open}, before any other thread uses C{env}.
    """
    if write:
        with env.begin(write=True) as txn:
            handles = _open_in(env, txn, names, create=True)
    else:
        # a read-only environment: py-lmdb opens each in a read transaction of its own (a handle
        # opened in a transaction of ours would close with it); no write lock is involved
        handles = _open_in(env, None, names, create=False)
    _HANDLES.setdefault(env, {}).update(handles)
    return handles


def _open_in(env: lmdb.Environment, txn: lmdb.Transaction | None, names: Iterable[bytes], create: bool) -> dict[bytes, object]:
    handles = {}
    for name in names:
        try:
            handles[name] = env.open_db(name, txn=txn, create=create)
        except lmdb.NotFoundError:  # read-only: not made yet
            continue
    return handles


def handle(env: lmdb.Environment, name: bytes):
    """The handle of a named database opened with C{env} (L{open_env}, L{open_dbs})."""
    try:
        return _HANDLES[env][name]
    except KeyError:
        raise LookupError(f"the database {name.decode()!r} was not opened with this environment"
                          " (open it with izreg.storage.lmdbenv.open_env)") from None


def dbs(env: lmdb.Environment) -> dict[bytes, object]:
    """Handles of every named database of an index opened by L{open_env}."""
    return {name: handle(env, name) for name in schema.ALL}


def _check_schema(env: lmdb.Environment) -> None:
    with env.begin(write=True) as txn:
        handles = _open_in(env, txn, schema.ALL, create=True)
        meta = handles[schema.META]
        found = txn.get(b"schema_version", db=meta)
        if found is None:
            txn.put(b"schema_version", str(schema.SCHEMA_VERSION).encode(), db=meta)
            version = schema.SCHEMA_VERSION
        else:
            version = _upgrade(env, txn, handles, found)
        # not a schema step: pull records of before the pullof index get their entries (once)
        from izreg.storage.pullkeys import index_pulls

        index_pulls(txn, handles[schema.DEVICES])
    # kept only once the transaction that opened them committed (an aborted one closes them)
    _HANDLES.setdefault(env, {}).update(handles)


def _upgrade(env: lmdb.Environment, txn: lmdb.Transaction, handles: dict[bytes, object], found: bytes) -> int:
    """The stored schema version C{found}, upgraded in C{txn} step by step to the current one."""
    meta = handles[schema.META]
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

        Refs(handles).rebuild(txn)
        version = 2
        txn.put(b"schema_version", b"2", db=meta)
    if version < schema.SCHEMA_VERSION:
        raise SchemaError(f"no upgrade from schema {version} to {schema.SCHEMA_VERSION}")
    return version
