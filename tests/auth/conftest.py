"""Fixtures for the auth tests: a real LMDB environment in tmp_path, a fake clock."""

from __future__ import annotations

import pytest

from izreg.auth.store import AuthStore
from izreg.storage.lmdbenv import open_env


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def env(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    yield env
    env.close()


@pytest.fixture
def store(env):
    return AuthStore(env)


@pytest.fixture
def clock():
    return FakeClock()


#: the two backends of the stores' contract suites (tests/auth/test_store.py, test_devices.py)
BACKENDS = ["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


def stored_text(store) -> bytes:
    """Every byte a store keeps (LMDB: every value of every database; PostgreSQL: every row as text)."""
    if hasattr(store, "db"):
        def dump(cur):
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            out = []
            for (table,) in cur.fetchall():
                cur.execute(f'SELECT t::text FROM "{table}" AS t')
                out.extend(row[0] for row in cur.fetchall())
            return "\n".join(out).encode()

        return store.db.run(dump)
    from izreg.storage import schema

    env = store._env
    out = []
    with env.begin() as txn:
        for db in schema.ALL:
            out.extend(bytes(k) + bytes(v) for k, v in txn.cursor(db=env.open_db(db, txn=txn)))
    return b"\n".join(out)
