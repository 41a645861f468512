"""
The PostgreSQL foundation (L{izreg.storage.pg}): migrations, the schema
check, transactions and their retry, against a real server.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from izreg.storage import pg

pytestmark = pytest.mark.postgres


def test_upgrade_applies_every_migration_once(pg_dsn):
    db = pg.Database(pg_dsn, max_size=2)
    try:
        with pytest.raises(pg.SchemaError, match="izreg db upgrade"):
            db.check()
        lines = []
        before, after = db.upgrade(lines.append)
        assert (before, after) == (0, pg.latest_version())
        assert lines == [f"applied {name}" for _, name, _ in pg.migrations()]
        db.check()
        assert db.upgrade() == (after, after)  # nothing left to apply
    finally:
        db.close()


def test_a_newer_schema_is_refused(pg_db):
    pg_db.run(lambda cur: cur.execute("INSERT INTO izreg_schema VALUES (9999, '9999_future.sql', now())"))
    with pytest.raises(pg.SchemaError, match="9999.*upgrade izreg"):
        pg_db.check()
    with pytest.raises(pg.SchemaError, match="9999"):
        pg_db.upgrade()


def test_concurrent_upgrades_apply_each_migration_once(pg_dsn):
    dbs = [pg.Database(pg_dsn, max_size=1) for _ in range(3)]
    errors = []

    def go(db):
        try:
            db.upgrade()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=go, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = dbs[0].run(lambda cur: cur.execute("SELECT version FROM izreg_schema ORDER BY version").fetchall())
    assert [v for (v,) in rows] == [v for v, _, _ in pg.migrations()]
    for db in dbs:
        db.close()


def test_run_rolls_back_on_error(pg_db):
    pg_db.run(lambda cur: cur.execute("CREATE TABLE t (x int PRIMARY KEY)"))

    def insert_then_fail(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        raise ValueError("no")
    with pytest.raises(ValueError):
        pg_db.run(insert_then_fail)
    assert pg_db.run(lambda cur: cur.execute("SELECT count(*) FROM t").fetchone()[0]) == 0


def test_run_retries_a_serialization_failure(pg_db):
    pg_db.run(lambda cur: cur.execute("CREATE TABLE c (id int PRIMARY KEY, n int)"))
    pg_db.run(lambda cur: cur.execute("INSERT INTO c VALUES (1, 0)"))
    calls = []

    def bump(cur):
        calls.append(1)
        cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        n = cur.execute("SELECT n FROM c WHERE id = 1").fetchone()[0]
        if len(calls) == 1:  # another transaction commits a change to the row we read
            with psycopg.connect(pg_db.dsn, autocommit=True) as other:
                other.execute("UPDATE c SET n = n + 10 WHERE id = 1")
        cur.execute("UPDATE c SET n = %s WHERE id = 1", (n + 1,))
    pg_db.run(bump)
    assert len(calls) == 2
    assert pg_db.run(lambda cur: cur.execute("SELECT n FROM c").fetchone()[0]) == 11


def test_an_unreachable_database_is_one_line_without_the_password():
    from tests.helpers.server import free_port

    with pytest.raises(pg.DatabaseUnavailable) as e:
        pg.Database(f"postgresql://u:sekrit-pw@127.0.0.1:{free_port()}/x", timeout=1)
    assert "sekrit-pw" not in str(e.value)
    assert "\n" not in str(e.value)


def test_dsn_from_the_environment(monkeypatch):
    monkeypatch.setenv("IZREG_DATABASE_URL", "postgresql://a/b")
    assert pg.dsn_from("") == "postgresql://a/b"
    assert pg.dsn_from("postgresql://c/d") == "postgresql://c/d"


@pytest.mark.parametrize("checked", [True, False])
def test_a_connection_killed_while_idle_is_replaced_not_failed(pg_db, monkeypatch, checked):
    """An idle connection is pinged before use, so a server-side disconnect costs no request."""
    db = pg.Database(pg_db.dsn, max_size=1)  # one connection: the next call gets the killed one
    try:
        backend = db.run(lambda cur: cur.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(pg_db.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
            deadline = time.monotonic() + 30
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not exit"
                time.sleep(0.01)  # another process: poll with a deadline
        monkeypatch.setattr(pg, "CHECK_IDLE_AFTER", 0.0 if checked else 1e9)
        if checked:
            assert db.run(lambda cur: cur.execute("SELECT pg_backend_pid()").fetchone()[0]) != backend
        else:  # what the check is for: a busy (recently used) connection is not pinged
            with pytest.raises(pg.DatabaseUnavailable):
                db.run(lambda cur: cur.execute("SELECT 1"))
    finally:
        db.close()
