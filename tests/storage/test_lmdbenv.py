"""Opening the LMDB environment and its schema version (izreg.storage.lmdbenv, schema)."""

from __future__ import annotations

import os

import lmdb
import pytest

from izreg.storage import schema
from izreg.storage.lmdbenv import SchemaError, dbs, index_path, open_env

MAP = 16 * 1024 * 1024


def set_version(data_dir: str, value: bytes) -> None:
    env = lmdb.open(index_path(data_dir), map_size=MAP, max_dbs=schema.MAX_DBS)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", value, db=env.open_db(schema.META, txn=txn))
    env.close()


def read_version(env) -> bytes | None:
    with env.begin() as txn:
        return txn.get(b"schema_version", db=env.open_db(schema.META, txn=txn))


def test_creates_index_and_writes_version(tmp_path):
    env = open_env(str(tmp_path), map_size=MAP)
    try:
        assert index_path(str(tmp_path)) == os.path.join(str(tmp_path), "index")
        assert os.path.exists(os.path.join(str(tmp_path), "index", "data.mdb"))
        assert os.stat(index_path(str(tmp_path))).st_mode & 0o777 == 0o700
        assert read_version(env) == str(schema.SCHEMA_VERSION).encode()
        with env.begin() as txn:
            names = {k for k, _ in txn.cursor()}
        assert names == set(schema.ALL)
    finally:
        env.close()


def test_reopen_keeps_data(tmp_path):
    env = open_env(str(tmp_path), map_size=MAP)
    with env.begin(write=True) as txn:
        txn.put(b"t", b"d", db=env.open_db(schema.TAGS, txn=txn))
    env.close()
    env = open_env(str(tmp_path), map_size=MAP)
    try:
        with env.begin() as txn:
            assert txn.get(b"t", db=env.open_db(schema.TAGS, txn=txn)) == b"d"
        assert read_version(env) == str(schema.SCHEMA_VERSION).encode()
    finally:
        env.close()


@pytest.mark.parametrize(
    "stored, message",
    [
        (str(schema.SCHEMA_VERSION + 1).encode(), "newer|knows up to"),
        (b"99", "knows up to"),
        (b"0", "no upgrade"),
    ],
)
def test_refuses_other_schema(tmp_path, stored, message):
    open_env(str(tmp_path), map_size=MAP).close()
    set_version(str(tmp_path), stored)
    with pytest.raises(SchemaError, match=message):
        open_env(str(tmp_path), map_size=MAP)
    # the version is left alone, and a failed open released the env (it opens again)
    env = lmdb.open(index_path(str(tmp_path)), map_size=MAP, max_dbs=schema.MAX_DBS)
    assert read_version(env) == stored
    env.close()


def test_readonly_skips_the_check(tmp_path):
    open_env(str(tmp_path), map_size=MAP).close()
    set_version(str(tmp_path), b"99")
    env = open_env(str(tmp_path), map_size=MAP, readonly=True)
    assert read_version(env) == b"99"
    env.close()


def test_dbs_returns_every_named_db(tmp_path):
    env = open_env(str(tmp_path), map_size=MAP)
    try:
        handles = dbs(env)
        assert set(handles) == set(schema.ALL)
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v", db=handles[schema.REPOS])
        with env.begin() as txn:
            assert txn.get(b"k", db=handles[schema.REPOS]) == b"v"
            assert txn.get(b"k", db=handles[schema.TAGS]) is None  # separate databases
    finally:
        env.close()


@pytest.mark.parametrize(
    "parts, key, prefix",
    [
        (("a",), b"a", b"a\x00"),
        (("a", "b"), b"a\x00b", b"a\x00b\x00"),
        (("a", b"b", "c"), b"a\x00b\x00c", b"a\x00b\x00c\x00"),
        (("é",), "é".encode(), "é".encode() + b"\x00"),
        (("",), b"", b"\x00"),
    ],
)
def test_key_and_prefix(parts, key, prefix):
    assert schema.key(*parts) == key
    assert schema.prefix(*parts) == prefix


def test_schema_constants():
    assert len(set(schema.ALL)) == len(schema.ALL) <= schema.MAX_DBS
    assert schema.META in schema.ALL
    assert schema.SCHEMA_VERSION >= 1
