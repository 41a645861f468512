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


def test_a_conflict_past_every_retry_is_unavailable_not_an_internal_error(pg_db):
    # the last SerializationFailure or deadlock went out as is: a 500 with a traceback, not a 503 + Retry-After
    calls = []

    def conflicting(cur):
        calls.append(1)
        raise psycopg.errors.DeadlockDetected("deadlock detected")
    with pytest.raises(pg.DatabaseUnavailable, match="kept conflicting"):
        pg_db.run(conflicting)
    assert len(calls) == pg.RETRIES
    with pytest.raises(pg.DatabaseUnavailable, match="conflicted"):
        pg_db.read(lambda cur: (_ for _ in ()).throw(psycopg.errors.SerializationFailure("could not serialize")))


def test_an_unreachable_database_is_one_line_without_the_password(caplog):
    from tests.helpers.server import free_port

    with pytest.raises(pg.DatabaseUnavailable) as e:
        pg.Database(f"postgresql://u:sekrit-pw@127.0.0.1:{free_port()}/x", timeout=1)
    assert "sekrit-pw" not in str(e.value)
    assert "\n" not in str(e.value)
    # why, not only the pool's "pool initialization incomplete after 1.0 sec"
    assert "Connection refused" in str(e.value), str(e.value)
    # and only there: the pool's "the database is unreachable" made it two lines at start-up
    assert not [r for r in caplog.records if r.name == "psycopg.pool"], caplog.text


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


@pytest.mark.parametrize("dsn", [
    "postgresql://izreg:S3CRET%PW@127.0.0.1:1/x",  # a password with an unencoded %
    "postgresql://izreg:S3CRETPW@[::1/x",
    "postgresql://izreg:S3CRETPW@127.0.0.1:1/x?S3CRETPW=1",
    "host=127.0.0.1 password S3CRETPW",
])
def test_a_malformed_dsn_is_refused_at_once_without_its_password(dsn, caplog):
    # libpq's parse error quotes the DSN; the pool logged it (password and all) on every retry for 10 s
    started = time.monotonic()
    with pytest.raises(pg.DatabaseUnavailable, match="DSN is not valid") as e:
        pg.Database(dsn, timeout=5.0)
    assert "S3CRET" not in str(e.value) and "S3CRET" not in caplog.text
    assert time.monotonic() - started < 4.0


def test_connection_failures_are_described_without_a_password():
    error = psycopg.OperationalError('could not parse "postgresql://izreg:S3CRET@db/x" (password=S3CRET2)')
    assert "S3CRET" not in pg._describe(error)


def test_every_connection_has_timeouts_and_keepalives(pg_db):
    db = pg.Database(pg_db.dsn, max_size=2, statement_timeout=3, lock_timeout=1, long_timeout=700,
                     keepalives=(31, 11, 4))
    try:
        show = lambda cur, name: cur.execute(f"SHOW {name}").fetchone()[0]  # noqa: E731
        assert (db.run(show, "statement_timeout"), db.run(show, "lock_timeout")) == ("3s", "1s")
        # a garbage-collection scan raises it for its own transaction only
        assert db.run(lambda cur: (db.allow_long(cur), show(cur, "statement_timeout"))[1]) == "700s"
        assert db.run(show, "statement_timeout") == "3s"
        with db.connection() as conn:
            params = conn.info.get_parameters()
        assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
                params["keepalives_count"]) == ("1", "31", "11", "4")
        from izreg.storage.gc import PgSweepLock

        lock = PgSweepLock(db)  # its connection of its own, outside the pool: keepalives too
        assert lock.acquire()
        try:
            assert lock._conn.info.get_parameters()["keepalives_idle"] == "31"
        finally:
            lock.release()
    finally:
        db.close()


def test_a_call_held_by_a_lock_is_unavailable_not_a_hang(pg_db):
    # a LOCK TABLE held in psql made every store call wait as long: every thread, so the node hung
    by_lock = pg.Database(pg_db.dsn, max_size=1, statement_timeout=30, lock_timeout=1)
    by_statement = pg.Database(pg_db.dsn, max_size=1, statement_timeout=1, lock_timeout=0)
    holder = psycopg.connect(pg_db.dsn)
    release = threading.Timer(60, holder.close)  # without timeouts the test fails, it does not hang
    count = lambda cur: cur.execute("SELECT count(*) FROM repos").fetchone()[0]  # noqa: E731
    try:
        holder.execute("LOCK TABLE repos IN ACCESS EXCLUSIVE MODE")
        release.start()
        with pytest.raises(pg.DatabaseTimeout, match="took too long.*lock_timeout = 1 s"):
            by_lock.run(count)
        with pytest.raises(pg.DatabaseTimeout, match="took too long.*statement_timeout = 1 s"):
            by_statement.run(count)
        holder.rollback()
        assert by_lock.run(count) == by_statement.run(count) == 0  # the connections serve again
    finally:
        release.cancel()
        holder.close()
        by_lock.close()
        by_statement.close()


def test_reconnection_failures_are_one_line_until_the_database_is_back(pg_db, caplog):
    # while the database was down the pool logged every reconnection attempt of every connection
    name = pg_db.dsn.rsplit("/", 1)[1]
    db = pg.Database(pg_db.dsn, max_size=1, timeout=1.0)
    admin = psycopg.connect(pg_db.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    pg.POOL_LOG.down_since = None
    caplog.set_level("WARNING", logger="psycopg.pool")
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        deadline = time.monotonic() + 60
        while db.pool.get_stats().get("connections_errors", 0) < 3:  # the pool retries in its own threads
            assert time.monotonic() < deadline, "the pool did not try to reconnect"
            try:  # the terminated backend may answer once more before it exits
                db.run(lambda cur: cur.execute("SELECT 1"))
            except pg.DatabaseUnavailable:
                pass
        lines = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
        assert len([line for line in lines if "unreachable" in line]) == 1, lines
        assert not [line for line in lines if "error connecting" in line], lines
        assert pg_db.dsn.split("@")[0].split(":")[-1] not in caplog.text  # the password
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 60
        while True:
            try:
                db.run(lambda cur: cur.execute("SELECT 1"))
                break
            except pg.DatabaseUnavailable:
                assert time.monotonic() < deadline, "the pool did not reconnect"
        lines = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
        assert len([line for line in lines if "reachable again" in line]) == 1, lines
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
        db.close()


def test_a_read_is_one_statement_outside_a_transaction(pg_db):
    # each store call was BEGIN, the statement, COMMIT: three round trips where a read needs one
    from psycopg.pq import TransactionStatus

    status = lambda cur: (cur.execute("SELECT 1"), cur.connection.info.transaction_status)[1]  # noqa: E731
    assert pg_db.read(status) == TransactionStatus.IDLE
    assert pg_db.run(status) == TransactionStatus.INTRANS
    with pytest.raises(psycopg.errors.UndefinedTable):  # its errors come through, the connection serves on
        pg_db.read(lambda cur: cur.execute("SELECT * FROM no_such_table"))
    assert pg_db.read(lambda cur: cur.execute("SELECT 2").fetchone()[0]) == 2


def _backend(db):
    return db.run(lambda cur: cur.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_a_frozen_backend_is_no_answer_within_query_timeout_and_its_connection_is_replaced(pg_db):
    # a stopped server (or a hung host whose kernel still ACKs): libpq waited for as long as it stayed stopped
    from tests.helpers.postgres import frozen

    db = pg.Database(pg_db.dsn, max_size=1, statement_timeout=1, query_timeout=2)
    try:
        stuck = _backend(db)
        with frozen([stuck]):
            started = time.monotonic()
            with pytest.raises(pg.DatabaseNoAnswer, match="did not answer within 2 s.*query_timeout"):
                db.run(lambda cur: cur.execute("SELECT 1"))
            assert 2.0 <= time.monotonic() - started < 5.0
            # the postmaster still forks backends: the pool has a new connection, not the cut one
            assert _backend(db) != stuck
            assert db.pool.get_stats()["returns_bad"] == 1
    finally:
        db.close()


def test_a_frozen_idle_connection_costs_its_check_and_the_call_goes_on_with_its_own_outcome(pg_db, monkeypatch):
    # the check of an idle connection was cut at the call's deadline, and its cut marked the call: an
    # error of the connection the call got after it was told as "did not answer" too
    from tests.helpers.postgres import frozen

    monkeypatch.setattr(pg, "CHECK_IDLE_AFTER", 0.0)
    monkeypatch.setattr(pg, "CHECK_BOUND", 1.0)
    db = pg.Database(pg_db.dsn, max_size=1, statement_timeout=1, query_timeout=10)
    try:
        stuck = _backend(db)
        with frozen([stuck]):
            started = time.monotonic()
            with pytest.raises(pg.DatabaseTimeout) as e:  # the statement_timeout of the connection it got
                db.run(lambda cur: cur.execute("SELECT pg_sleep(3)"))
            assert not isinstance(e.value, pg.DatabaseNoAnswer), e.value
            assert time.monotonic() - started < 6.0
            assert _backend(db) != stuck  # and the next call is served at once
    finally:
        db.close()


@pytest.mark.parametrize("freeze_before", ["statement", "commit"])
def test_a_write_cut_by_query_timeout_commits_whole_or_not_at_all(pg_db, freeze_before):
    # what a client told 503 left behind: nothing when the server froze before the COMMIT reached it;
    # when the COMMIT itself was in flight the transaction committed (told after, as after any connection
    # lost at commit): never half of it
    import os
    import signal

    pg_db.run(lambda cur: cur.execute("CREATE TABLE cut (n int)"))
    db = pg.Database(pg_db.dsn, max_size=1, statement_timeout=1, query_timeout=2)
    stuck = _backend(db)

    def write(cur):
        cur.execute("INSERT INTO cut VALUES (1)")
        if freeze_before == "statement":
            os.kill(stuck, signal.SIGSTOP)
        cur.execute("INSERT INTO cut VALUES (2)")
        if freeze_before == "commit":
            os.kill(stuck, signal.SIGSTOP)  # the COMMIT is sent to a stopped backend

    try:
        try:
            with pytest.raises(pg.DatabaseNoAnswer):
                db.run(write)
        finally:
            os.kill(stuck, signal.SIGCONT)
        with psycopg.connect(pg_db.dsn, autocommit=True) as admin:  # the stopped backend reads what was sent
            deadline = time.monotonic() + 30
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (stuck,)).fetchone():
                assert time.monotonic() < deadline, "the cut backend did not exit"
                time.sleep(0.01)  # another process: poll with a deadline
            rows = sorted(n for (n,) in admin.execute("SELECT n FROM cut"))
        assert rows == ([] if freeze_before == "statement" else [1, 2])
        assert db.run(lambda cur: cur.execute("SELECT count(*) FROM cut").fetchone()[0]) == len(rows)
    finally:
        db.close()


def test_a_long_transaction_gets_long_timeout_past_query_timeout(pg_db):
    # garbage collection's scans raise their statement timeout; the client's bound must follow
    db = pg.Database(pg_db.dsn, max_size=1, statement_timeout=1, query_timeout=1.5, long_timeout=10)
    try:
        assert db.run(lambda cur: (db.allow_long(cur), cur.execute("SELECT pg_sleep(2.5)"))[1].fetchone()) == ("",)
        with pytest.raises(pg.DatabaseTimeout):  # the server's statement_timeout, before the client's bound
            db.run(lambda cur: cur.execute("SELECT pg_sleep(2.5)"))
    finally:
        db.close()


def test_tcp_user_timeout_and_connect_timeout_follow_query_timeout(pg_db):
    db = pg.Database(pg_db.dsn, max_size=1, query_timeout=7)
    try:
        with db.connection() as conn:
            params = conn.info.get_parameters()
        assert (params["tcp_user_timeout"], params["connect_timeout"]) == ("7000", "7")
    finally:
        db.close()


def test_a_shorter_bound_is_kept_while_a_longer_one_is_watched(pg_db):
    # the readiness ping's bound (twice its wait) while a request's call (query_timeout) was already
    # watched: the watchdog slept until the request's deadline, and /readyz hung as long
    from tests.helpers.postgres import frozen
    from tests.helpers.wait import wait_until

    db = pg.Database(pg_db.dsn, max_size=2, statement_timeout=1, query_timeout=30)
    try:
        with db.connection() as a, db.connection() as b:  # the pool's two connections
            pids = [a.info.backend_pid, b.info.backend_pid]
        outcome = []
        with frozen(pids):
            slow = threading.Thread(target=lambda: outcome.append(db.run(lambda cur: cur.execute("SELECT 1"))))
            slow.start()
            wait_until(lambda: len(db._watchdog._watches) == 1, what="the long call watched", timeout=10)
            started = time.monotonic()
            with pytest.raises(pg.DatabaseNoAnswer, match="within 2 s"):
                db.ping(1.0)
            assert time.monotonic() - started < 4.0
        slow.join(30)
        assert outcome and not slow.is_alive()  # its backend continued in time: it was answered
    finally:
        db.close()


def test_an_upgrade_waiting_for_another_nodes_upgrade_is_not_cut_at_query_timeout(pg_dsn):
    # `izreg db upgrade` on two nodes at once: the second waits on the advisory lock, as long as the first takes
    db = pg.Database(pg_dsn, max_size=1, statement_timeout=10, lock_timeout=0, query_timeout=1.5, long_timeout=10)
    holder = psycopg.connect(pg_dsn, autocommit=True)
    release = threading.Timer(2.5, holder.execute, ("SELECT pg_advisory_unlock(%s)", (pg.UPGRADE_LOCK,)))
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (pg.UPGRADE_LOCK,))
        release.start()
        started = time.monotonic()
        assert db.upgrade() == (0, pg.latest_version())
        assert time.monotonic() - started >= 2.5
    finally:
        release.cancel()
        holder.close()
        db.close()


class _Broken:
    """A connection whose socket cannot be had: cutting it fails in a way L{pg._cut} does not expect."""

    class pgconn:
        @property
        def socket(self):
            raise RuntimeError("no socket for you")

    pgconn = pgconn()


class _Connected:
    """A connection over one end of a socket pair (the test holds the other)."""

    def __init__(self, sock) -> None:
        self.pgconn = type("PGconn", (), {"socket": sock.fileno()})()


def test_the_watchdog_lives_on_after_a_cut_that_fails():
    # it caught only what _cut expects; anything else ended its thread, and then no call was bounded
    import socket

    watchdog = pg._Watchdog()
    ours, theirs = socket.socketpair()
    try:
        broken = watchdog.watch(_Broken(), time.monotonic())
        later = watchdog.watch(_Connected(ours), time.monotonic() + 0.2)
        theirs.settimeout(10)
        assert theirs.recv(1) == b""  # the second call's socket shut down: the watchdog still runs
        assert broken.fired and later.fired
    finally:
        watchdog.stop()
        ours.close()
        theirs.close()
