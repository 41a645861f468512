"""
Migrations outside a transaction (L{izreg.storage.pg.NO_TRANSACTION}): 0005 builds its index
concurrently, while writes to manifest_blobs go on; a build cut short is built again by the next
``izreg db upgrade``; a database that applied 0005 before (in a transaction) is left as it is.
Against a real PostgreSQL.
"""

from __future__ import annotations

import io
import threading

import psycopg
import pytest

from izreg.cli import main
from izreg.storage import pg
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.postgres

#: 0005 as released first: in the migration's transaction (writes to manifest_blobs held while it built)
FORMER_0005 = """CREATE INDEX manifest_blobs_by_repo_blob ON manifest_blobs (repo, blob, manifest);
DROP INDEX manifest_blobs_by_repo;
"""
APP = "izreg-migration-test"


def _migrate(dsn, monkeypatch, tmp_path, upto, instead=None):
    """The database of C{dsn} upgraded by this izreg's migrations up to C{upto} (C{instead}: name -> other SQL)."""
    d = tmp_path / f"migrations-{upto}"
    d.mkdir()
    for version, name, sql in pg.migrations():
        if version <= upto:
            (d / name).write_text((instead or {}).get(name, sql))
    with monkeypatch.context() as m:
        m.setattr(pg, "MIGRATIONS_DIR", str(d))
        db = pg.Database(dsn, max_size=1)
        try:
            db.upgrade()
        finally:
            db.close()


def _seed(dsn, rows=500):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO manifests (repo, digest, meta, data) VALUES ('r', 'sha256:m', '{}', '')")
        conn.execute("INSERT INTO manifest_blobs SELECT 'r', 'sha256:m', 'sha256:' || g, 1"
                     " FROM generate_series(1, %s) g", (rows,))


def _state(dsn):
    """(schema version, {index of manifest_blobs: (valid, definition)})."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SELECT max(version) FROM izreg_schema").fetchone()[0]
        indexes = conn.execute("SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i"
                               " JOIN pg_class c ON c.oid = i.indexrelid"
                               " WHERE i.indrelid = 'manifest_blobs'::regclass").fetchall()
    return version, {name: (valid, definition) for name, valid, definition in indexes}


def _upgrade_in_thread(dsn, **options):
    """An upgrade running in a thread: (thread, outcome list: the result or the exception's type and text)."""
    outcome = []

    def go():
        db = pg.Database(dsn, max_size=1, application_name=APP, **options)
        try:
            outcome.append(db.upgrade())
        except Exception as e:  # not kept: its traceback would hold the connection open
            outcome.append((type(e), str(e)))
        finally:
            db.close()
    thread = threading.Thread(target=go)
    thread.start()
    return thread, outcome


def _waiting_upgrade(admin):
    """The pid of the upgrade's backend once it waits for a lock (the writer's transaction)."""
    return wait_until(lambda: admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                                            " AND wait_event_type = 'Lock'", (APP,)).fetchone(),
                      what="the upgrade waiting for the open writer", timeout=30)[0]


def _db_upgrade(dsn, monkeypatch):
    monkeypatch.setenv("IZREG_DATABASE_URL", dsn)
    out, err = io.StringIO(), io.StringIO()
    status = main(["db", "upgrade"], environ={}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


EXPECTED = {"manifest_blobs_pkey", "manifest_blobs_by_blob", "manifest_blobs_by_repo_blob"}


def test_an_upgrade_from_4_builds_the_index_while_writes_go_on(pg_dsn, monkeypatch, tmp_path):
    # in the migration's transaction the build took a SHARE lock on manifest_blobs: every manifest
    # push and delete (and GC) waited behind it, and a node's got 503 after its 2 s lock_timeout
    _migrate(pg_dsn, monkeypatch, tmp_path, 4)
    _seed(pg_dsn)
    writer = psycopg.connect(pg_dsn)  # a push in progress when the upgrade starts
    admin = psycopg.connect(pg_dsn, autocommit=True)
    try:
        writer.execute("INSERT INTO manifest_blobs VALUES ('r', 'sha256:m', 'sha256:early', 1)")
        thread, outcome = _upgrade_in_thread(pg_dsn)
        _waiting_upgrade(admin)  # the build has begun, and waits for the open writer
        with psycopg.connect(pg_dsn, autocommit=True) as node:  # a node's write meanwhile, with its lock_timeout
            node.execute("SET lock_timeout = '1s'")
            with node.transaction():
                node.execute("INSERT INTO manifest_blobs VALUES ('r', 'sha256:m', 'sha256:during', 1)")
                node.execute("DELETE FROM manifest_blobs WHERE blob = 'sha256:1'")
        writer.execute("INSERT INTO manifest_blobs VALUES ('r', 'sha256:m', 'sha256:late', 1)")
        writer.commit()
        thread.join(60)
        assert outcome == [(4, pg.latest_version())]
        version, indexes = _state(pg_dsn)
        assert version == 5 and set(indexes) == EXPECTED and all(valid for valid, _ in indexes.values())
        # the index holds what was written during the build
        admin.execute("SET enable_seqscan = off")
        blobs = [b for (b,) in admin.execute("SELECT blob FROM manifest_blobs WHERE repo = 'r' AND blob IN"
                                             " ('sha256:early', 'sha256:during', 'sha256:late', 'sha256:1')"
                                             " ORDER BY blob")]
        assert blobs == ["sha256:during", "sha256:early", "sha256:late"]
    finally:
        writer.close()
        admin.close()


@pytest.mark.parametrize("cut", ["terminated", "statement_timeout"])
def test_a_build_cut_short_is_built_again_by_the_next_upgrade(pg_dsn, monkeypatch, tmp_path, cut):
    # a failed CREATE INDEX CONCURRENTLY leaves its index INVALID; IF NOT EXISTS alone would keep it
    _migrate(pg_dsn, monkeypatch, tmp_path, 4)
    _seed(pg_dsn)
    writer = psycopg.connect(pg_dsn)  # a transaction that outlasts the upgrade
    admin = psycopg.connect(pg_dsn, autocommit=True)
    try:
        writer.execute("INSERT INTO manifest_blobs VALUES ('r', 'sha256:m', 'sha256:early', 1)")
        # statement_timeout: the command's (long_statement_timeout) passed while the build waited
        thread, outcome = _upgrade_in_thread(pg_dsn, **({"statement_timeout": 1} if cut == "statement_timeout" else {}))
        if cut == "terminated":  # the command killed, the connection lost
            admin.execute("SELECT pg_terminate_backend(%s)", (_waiting_upgrade(admin),))
        thread.join(60)
        assert len(outcome) == 1 and issubclass(outcome[0][0], pg.DatabaseUnavailable), outcome
        if cut == "statement_timeout":
            assert issubclass(outcome[0][0], pg.DatabaseTimeout) and "statement timeout" in outcome[0][1], outcome
        wait_until(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
                                             (APP,)).fetchone(), what="the upgrade's backend gone", timeout=30)
        version, indexes = _state(pg_dsn)
        assert version == 4 and indexes["manifest_blobs_by_repo_blob"][0] is False  # left invalid, not recorded
        writer.commit()
        status, out, err = _db_upgrade(pg_dsn, monkeypatch)
        assert status == 0 and "applied 0005_naming.sql" in out, (out, err)
        version, indexes = _state(pg_dsn)
        assert version == 5 and set(indexes) == EXPECTED and all(valid for valid, _ in indexes.values())
    finally:
        writer.close()
        admin.close()


def test_a_database_that_applied_the_former_0005_is_left_as_it_is(pg_dsn, pg_schema_dsn, monkeypatch, tmp_path):
    # its index is the one the concurrent build makes, under the same name: nothing to do, nothing differs
    _migrate(pg_dsn, monkeypatch, tmp_path, 5, instead={"0005_naming.sql": FORMER_0005})
    before = _state(pg_dsn)
    status, out, err = _db_upgrade(pg_dsn, monkeypatch)
    assert (status, out.strip()) == (0, f"the database is up to date (schema version {pg.latest_version()})"), err
    assert _state(pg_dsn) == before
    # the same indexes as a database that ran the new 0005
    assert {name: d for name, (_, d) in before[1].items()} == {name: d for name, (_, d) in _state(pg_schema_dsn)[1].items()}


def test_statements_of_a_migration():
    assert pg._statements("-- izreg: no-transaction\n-- a comment; with a semicolon\nCREATE INDEX a ON t (x);\n"
                          "  -- another\nDROP INDEX\n  b;\n") == ["CREATE INDEX a ON t (x)", "DROP INDEX\n  b"]


def test_an_old_transaction_elsewhere_delays_the_build_and_does_not_fail_it(pg_dsn, monkeypatch, tmp_path):
    # a backup (pg_dump: one REPEATABLE READ snapshot for its whole run) or a GC scan in progress: the
    # build waits for every older snapshot at its end. That wait holds no one's writes, yet under the
    # migration's lock_timeout it failed the build, its index built and thrown away, attempt after attempt
    _migrate(pg_dsn, monkeypatch, tmp_path, 4)
    _seed(pg_dsn)
    monkeypatch.setattr(pg, "MIGRATION_LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(pg, "MIGRATION_ATTEMPTS", 2)
    monkeypatch.setattr(pg, "MIGRATION_PAUSE", 0.1)
    backup = psycopg.connect(pg_dsn)
    admin = psycopg.connect(pg_dsn, autocommit=True)
    try:
        backup.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        backup.execute("SELECT count(*) FROM manifests").fetchone()  # its snapshot taken: not manifest_blobs
        thread, outcome = _upgrade_in_thread(pg_dsn)
        _waiting_upgrade(admin)  # the build is done, and waits for the backup's snapshot
        thread.join(3)  # ten times what the migration's lock budget was: it waits on
        assert thread.is_alive() and outcome == [], outcome
        backup.commit()
        thread.join(60)
        assert outcome == [(4, pg.latest_version())]
        version, indexes = _state(pg_dsn)
        assert version == 5 and set(indexes) == EXPECTED and all(valid for valid, _ in indexes.values())
    finally:
        backup.close()
        admin.close()


def test_a_statement_that_holds_writes_tries_its_lock_a_bounded_number_of_times(pg_dsn, monkeypatch, tmp_path):
    # not CONCURRENTLY: its lock, waiting, would hold the table's writes queued behind it
    _migrate(pg_dsn, monkeypatch, tmp_path, 4)
    monkeypatch.setattr(pg, "MIGRATION_LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(pg, "MIGRATION_ATTEMPTS", 2)
    monkeypatch.setattr(pg, "MIGRATION_PAUSE", 0.1)
    writer = psycopg.connect(pg_dsn)
    try:
        writer.execute("INSERT INTO manifests (repo, digest, meta, data) VALUES ('r', 'sha256:m', '{}', '')")
        plain = f"{pg.NO_TRANSACTION}\nCREATE INDEX IF NOT EXISTS manifests_plain ON manifests (repo);\n"
        with pytest.raises(pg.SchemaError, match=r"\(2 attempts of 0.2 s; .*run `izreg db upgrade` again"):
            _migrate(pg_dsn, monkeypatch, tmp_path, 5, instead={"0005_naming.sql": plain})
        assert _state(pg_dsn)[0] == 4
    finally:
        writer.close()


def test_an_upgrade_waiting_for_another_says_so_and_gives_up_naming_it(pg_dsn):
    # it polled the lock without a word, then the watchdog cut it: "the database did not answer within
    # 630 s", while the database answered and another upgrade held the lock
    _fresh = pg.Database(pg_dsn, max_size=1)
    try:
        _fresh.upgrade()
    finally:
        _fresh.close()
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (pg.UPGRADE_LOCK,))
        said = []
        db = pg.Database(pg_dsn, max_size=1, long_timeout=1.5)
        try:
            with pytest.raises(pg.SchemaError, match="another izreg db upgrade held the upgrade lock for 1.5 s"):
                db.upgrade(log=said.append)
        finally:
            db.close()
        assert said == ["waiting for another izreg db upgrade (or a node starting one) to finish"]
