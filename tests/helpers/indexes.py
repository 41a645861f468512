"""
The metadata index on both backends, for the contract suite (tests/storage/test_index.py)
and anything else that must hold on both: fixture C{index_backend} ("lmdb", or "postgres"
marked C{postgres}), C{index} (an L{IMetadataIndex} over a fresh store) and C{backdoor}
(what a test may do behind the interface's back: look at every stored row, plant a
record, drop one, as a crash or an older izreg would leave them).
"""

from __future__ import annotations

import json

import pytest

from izreg.core.digest import Digest

MAP = 16 * 1024 * 1024
BACKENDS = ["lmdb", pytest.param("postgres", marks=pytest.mark.postgres)]
PG_TABLES = ("repos", "blobs", "links", "uploads", "manifests", "manifest_blobs", "manifest_children", "tags",
             "referrers")


def open_index(kind: str, request, tmp_path):
    """A new L{IMetadataIndex} of C{kind} over an empty store (closed by the caller)."""
    if kind == "lmdb":
        from izreg.storage.lmdbenv import open_env
        from izreg.storage.lmdbindex import Index

        return Index(open_env(str(tmp_path), map_size=MAP))
    from izreg.storage.pg import Database
    from izreg.storage.pgindex import PgIndex

    db = Database(request.getfixturevalue("pg_schema_dsn"), max_size=8)
    db.upgrade()
    return PgIndex(db)


@pytest.fixture(params=BACKENDS)
def index_backend(request) -> str:
    return request.param


@pytest.fixture
def index(index_backend, request, tmp_path):
    idx = open_index(index_backend, request, tmp_path)
    yield idx
    idx.close()


class LmdbBackdoor:
    def __init__(self, index) -> None:
        self.index = index

    def snapshot(self) -> dict:
        out = {}
        with self.index.env.begin() as txn:
            for name, db in self.index._db.items():
                out[name] = list(txn.cursor(db=db))
        return out

    def put_blob_record(self, digest: Digest, size: int, now: float) -> None:
        """A blob record without a link (as a file left by a crash, or linked elsewhere)."""
        with self.index.env.begin(write=True) as txn:
            txn.put(str(digest).encode(), json.dumps({"size": size, "created": now}).encode(),
                    db=self.index._db[b"blobs"])

    def drop_blob_record(self, digest: Digest) -> None:
        with self.index.env.begin(write=True) as txn:
            txn.delete(str(digest).encode(), db=self.index._db[b"blobs"])

    def drop_manifest_record(self, name: str, digest: Digest) -> None:
        """The manifest's record alone (its tags stay)."""
        with self.index.env.begin(write=True) as txn:
            txn.delete(f"{name}\x00{digest}".encode(), db=self.index._db[b"manifests"])

    def repo_created(self, name: str) -> float:
        with self.index.env.begin() as txn:
            return json.loads(txn.get(name.encode(), db=self.index._db[b"repos"]))["created"]

    def clear(self) -> None:
        with self.index.env.begin(write=True) as txn:
            for name, db in self.index._db.items():
                if name != b"meta":
                    txn.drop(db, delete=False)


class PgBackdoor:
    def __init__(self, index) -> None:
        self.db = index.db

    def _sql(self, sql: str, *args):
        def f(cur):
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
        return self.db.run(f)

    def snapshot(self) -> dict:
        return {t: self._sql(f"SELECT * FROM {t} ORDER BY 1, 2") for t in PG_TABLES}

    def put_blob_record(self, digest: Digest, size: int, now: float) -> None:
        self._sql("INSERT INTO blobs (digest, size, created) VALUES (%s, %s, %s)", str(digest), size, now)

    def drop_blob_record(self, digest: Digest) -> None:
        self._sql("DELETE FROM blobs WHERE digest = %s", str(digest))

    def drop_manifest_record(self, name: str, digest: Digest) -> None:
        self._sql("DELETE FROM manifests WHERE repo = %s AND digest = %s", name, str(digest))

    def repo_created(self, name: str) -> float:
        return self._sql("SELECT created FROM repos WHERE name = %s", name)[0][0]

    def clear(self) -> None:
        self._sql(f"TRUNCATE {', '.join(PG_TABLES)}")


def backdoor_of(index):
    from izreg.storage.lmdbindex import Index

    return LmdbBackdoor(index) if isinstance(index, Index) else PgBackdoor(index)


@pytest.fixture
def backdoor(index):
    return backdoor_of(index)
