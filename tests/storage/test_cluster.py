"""
The cross-node pieces over PostgreSQL (izreg.storage.cluster): the sweep
lock and the shared failure counts. A real PostgreSQL.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from izreg.storage.cluster import FailureCounts
from izreg.storage.gc import PgSweepLock
from izreg.storage.pg import Database, DatabaseNoAnswer
from tests.helpers.postgres import frozen
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.postgres


def one(db, sql):
    def query(cur):
        cur.execute(sql)
        return cur.fetchone()[0]

    return db.run(query)


def test_one_sweep_at_a_time_across_processes(pg_db, pg_schema_dsn):
    other = Database(pg_schema_dsn, max_size=2)  # another node: its own pool
    try:
        first, second = PgSweepLock(pg_db), PgSweepLock(other)
        assert first.acquire()
        assert not second.acquire()
        first.release()
        assert second.acquire()
        assert not first.acquire()
        second.release()
        assert first.acquire()
        first.release()
        # handed over at once, every time: release waits for the server to drop the lock
        # (closing the connection alone returned before, and a busy server still held it)
        for _ in range(20):
            assert second.acquire()
            second.release()
            assert first.acquire()
            first.release()
    finally:
        other.close()


def test_a_dead_holder_releases_the_lock(pg_db, pg_schema_dsn):
    other = Database(pg_schema_dsn, max_size=1)
    lock = PgSweepLock(other)
    assert lock.acquire()
    lock._conn.close()  # the node dies: its connection goes, and PostgreSQL drops its session locks
    other.close()
    again = PgSweepLock(pg_db)
    deadline = time.monotonic() + 30
    while not again.acquire():  # the server ends the dead session on its own time: poll, with a deadline
        assert time.monotonic() < deadline, "the dead holder's lock was never released"
        time.sleep(0.05)
    again.release()


def test_the_lock_takes_no_pooled_connection(pg_db, pg_schema_dsn):
    small = Database(pg_schema_dsn, max_size=1, timeout=5)
    try:
        lock = PgSweepLock(small)
        for _ in range(3):
            assert lock.acquire()
            assert one(small, "SELECT 1") == 1  # the pool's one connection is free while the lock is held
            lock.release()
    finally:
        small.close()


def test_failures_are_counted_across_nodes(pg_db, pg_schema_dsn):
    other = Database(pg_schema_dsn, max_size=1)
    try:
        here, there = FailureCounts(pg_db), FailureCounts(other)
        brake = ("192.0.2.7", "*")
        assert here.record(brake, 100.0, 60, 3) == [100.0]
        assert there.record(brake, 101.0, 60, 3) == [100.0, 101.0]
        assert here.record(("192.0.2.8", "*"), 101.5, 60, 3) == [101.5]  # another brake: its own count
        assert here.record(brake, 102.0, 60, 3) == [100.0, 101.0, 102.0]
        assert there.record(brake, 103.0, 60, 3) == [101.0, 102.0, 103.0]  # the latest `limit`
        assert here.recent(brake, 161.5, 60, 3) == [102.0, 103.0]  # older ones left the window
        # rows past the window are deleted as new ones come
        there.record(("192.0.2.9", "abcd"), 1000.0, 60, 3)
        assert one(pg_db, "SELECT count(*) FROM auth_failures") == 1
    finally:
        other.close()


def test_the_lock_connection_has_the_pools_connect_and_tcp_timeouts(pg_schema_dsn):
    # made outside the pool, it had libpq's keepalives but psycopg's 130 s connect_timeout: a sweep on
    # a frozen server held its thread that long
    db = Database(pg_schema_dsn, max_size=1, timeout=5, query_timeout=7)
    try:
        lock = PgSweepLock(db)
        assert lock.acquire()
        params = lock._conn.info.get_parameters()
        assert (params["connect_timeout"], params["tcp_user_timeout"]) == ("5", "7000")
        lock.release()
    finally:
        db.close()


def _lock_waiter(lock):
    """C{lock.acquire(wait=True)} in a thread: (thread, outcome: True or the exception's type)."""
    outcome = []

    def go():
        try:
            outcome.append(lock.acquire(wait=True))
        except Exception as e:
            outcome.append(type(e))
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, outcome


def _gc_lock_waiter_pid(admin):
    return wait_until(lambda: admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'izreg-gc'"
                                            " AND wait_event_type = 'Lock'").fetchone(),
                      what="izreg gc waiting for the sweep lock", timeout=30)[0]


def test_waiting_for_the_sweep_lock_on_a_frozen_server_is_no_answer_not_a_hang(pg_db, pg_schema_dsn, monkeypatch):
    # `izreg gc` behind the server's sweep: its pg_advisory_lock was under no bound, so a frozen
    # server held it (and the GC) forever
    from izreg.storage import gc

    monkeypatch.setattr(gc, "SWEEP_LOCK_WAIT", 1.0)
    holder = PgSweepLock(pg_db)
    db = Database(pg_schema_dsn, max_size=1, query_timeout=2)
    admin = psycopg.connect(pg_db.dsn, autocommit=True)
    try:
        assert holder.acquire()
        thread, outcome = _lock_waiter(PgSweepLock(db))
        with frozen([_gc_lock_waiter_pid(admin)]):
            started = time.monotonic()
            thread.join(15)
            assert not thread.is_alive(), "the wait for the sweep lock hung on a frozen server"
            assert outcome == [DatabaseNoAnswer] and time.monotonic() - started < 10
    finally:
        holder.release()
        admin.close()
        db.close()


def test_waiting_for_the_sweep_lock_outlasts_the_bound_of_each_turn(pg_db, pg_schema_dsn, monkeypatch):
    # the server answers: the wait goes on, turn after turn, for as long as the other sweep takes
    from izreg.storage import gc

    monkeypatch.setattr(gc, "SWEEP_LOCK_WAIT", 0.5)
    holder = PgSweepLock(pg_db)
    db = Database(pg_schema_dsn, max_size=1, query_timeout=1)
    lock = PgSweepLock(db)
    release = threading.Timer(3.0, holder.release)  # the other sweep: longer than a turn and its bound
    try:
        assert holder.acquire()
        started = time.monotonic()
        release.start()
        assert lock.acquire(wait=True)
        assert time.monotonic() - started >= 3.0
        lock.release()
    finally:
        release.cancel()
        release.join()
        holder.release()
        db.close()


def test_releasing_the_sweep_lock_on_a_frozen_server_is_bounded(pg_db, pg_schema_dsn):
    db = Database(pg_schema_dsn, max_size=1, query_timeout=2)
    lock = PgSweepLock(db)
    try:
        assert lock.acquire()
        with frozen([lock._conn.info.backend_pid]):
            released = threading.Thread(target=lock.release, daemon=True)
            released.start()
            released.join(15)
            assert not released.is_alive(), "releasing the sweep lock hung on a frozen server"
        again = PgSweepLock(pg_db)  # the cut session ended when the server resumed: its lock with it
        wait_until(again.acquire, what="the sweep lock free again", timeout=30)
        again.release()
    finally:
        db.close()
