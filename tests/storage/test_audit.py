"""
The audit log contract (IAuditLog) on both backends: izreg.storage.audit over a
real LMDB environment in tmp_path, izreg.storage.pgaudit over a real PostgreSQL database.
"""

from __future__ import annotations

import pytest

from izreg.storage import schema
from izreg.storage.audit import AuditLog, Retention, iso, prune
from izreg.storage.interfaces import IAuditLog
from izreg.storage.lmdbenv import open_env

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


@pytest.fixture(params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_log(request, tmp_path):
    """A function making an audit log over one store (each call: another handle on the same records)."""
    if request.param == "postgresql":
        from izreg.storage.pgaudit import PgAuditLog

        db = request.getfixturevalue("pg_db")
        yield lambda: PgAuditLog(db)
        return
    env = open_env(str(tmp_path), map_size=16 * 1024 * 1024)
    yield lambda: AuditLog(env)
    env.close()


def test_provides_the_interface(new_log):
    assert IAuditLog.providedBy(new_log())


def test_records_come_back_oldest_first_with_every_field(new_log):
    log = new_log()
    log.record(action="delete-manifest", account=A, actor="key:0123456789abcdef", target=f"{A}/app@sha256:aa",
               address="127.0.0.1", detail={"forced": True}, now=200.5)
    log.record(action="delete-tag", account=A, actor="cli", target=f"{A}/app:v1", now=100.25)
    entries = log.entries()
    assert [e["time"] for e in entries] == [100.25, 200.5]
    assert entries[0] == {"time": 100.25, "action": "delete-tag", "account": A, "actor": "cli",
                          "target": f"{A}/app:v1", "address": None, "detail": None}
    assert entries[1]["detail"] == {"forced": True} and entries[1]["address"] == "127.0.0.1"


def test_same_microsecond_records_do_not_overwrite(new_log):
    log = new_log()
    for i in range(50):
        log.record(action="delete-blob", account=A, actor="cli", target=str(i), now=5.0)
    assert sorted(int(e["target"]) for e in log.entries()) == list(range(50))


def test_filters_by_account_since_and_limit(new_log):
    log = new_log()
    for t in range(10):
        log.record(action="delete-tag", account=A if t % 2 else B, actor="cli", target=f"t{t}", now=float(t))
    assert [e["target"] for e in log.entries(account=A)] == ["t1", "t3", "t5", "t7", "t9"]
    assert [e["target"] for e in log.entries(since=7)] == ["t7", "t8", "t9"]
    assert [e["target"] for e in log.entries(account=B, since=3, limit=2)] == ["t4", "t6"]
    assert log.entries(since=100) == []
    assert new_log().entries(limit=0) == []


def test_audit_db_is_part_of_the_schema():
    assert schema.AUDIT in schema.ALL


def test_iso():
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(None) is None


def _targets(log) -> list[str]:
    return [e["target"] for e in log.entries()]


def test_prune_by_age_deletes_the_older_records_only(new_log):
    log = new_log()
    for t in range(10):
        log.record(action="delete-tag", account=A, actor="cli", target=f"t{t}", now=float(t))
    assert log.prune(4.0, None, 100) == 4  # strictly older than 4
    assert _targets(log) == [f"t{t}" for t in range(4, 10)]
    assert log.prune(4.0, None, 100) == 0
    assert log.prune(None, None, 100) == 0  # no limit: nothing goes


def test_prune_by_count_keeps_the_newest(new_log):
    log = new_log()
    for t in range(10):
        log.record(action="delete-tag", account=A, actor="cli", target=f"t{t}", now=float(t))
    assert log.prune(None, 3, 100) == 7
    assert _targets(log) == ["t7", "t8", "t9"]
    assert log.prune(None, 3, 100) == 0 and log.prune(None, 50, 100) == 0
    assert log.prune(8.5, 3, 100) == 2  # either limit: the stricter one wins
    assert _targets(log) == ["t9"]


def test_prune_deletes_at_most_a_batch_per_call(new_log):
    log = new_log()
    for t in range(7):
        log.record(action="delete-tag", account=A if t % 2 else B, actor="cli", target=f"t{t}", now=float(t))
    assert [log.prune(100.0, None, 3) for _ in range(4)] == [3, 3, 1, 0]
    assert log.entries() == []


def test_retention_prunes_in_batches_and_the_listing_still_works(new_log):
    log = new_log()
    day = 24 * 3600
    for t in range(25):
        log.record(action="delete-tag", account=A if t % 2 else B, actor="cli", target=f"t{t}", now=t * day)
    now = 24 * day
    assert prune(log, Retention(), now) == 0  # 0 and 0: keep forever
    assert len(log.entries()) == 25
    assert prune(log, Retention(keep_days=10), now, batch=4) == 14  # 4 + 4 + 4 + 2
    assert _targets(log) == [f"t{t}" for t in range(14, 25)]
    assert prune(log, Retention(keep_days=10, max_entries=5), now, batch=4) == 6
    assert [e["target"] for e in log.entries(account=A)] == ["t21", "t23"]
    assert [e["target"] for e in log.entries(since=22 * day, limit=2)] == ["t22", "t23"]


def test_retention_limits():
    assert Retention().limits(1000.0) == (None, None) and not Retention()
    assert Retention(keep_days=1).limits(100_000.0) == (100_000.0 - 86_400, None)
    assert Retention(max_entries=5).limits(0.0) == (None, 5) and Retention(max_entries=5)


def test_prune_by_count_keeps_the_newest_of_records_of_the_same_time(new_log):
    log = new_log()
    for i in range(5):
        log.record(action="delete-tag", account=A, actor="cli", target=f"t{i}", now=7.0)
    assert log.prune(None, 2, 100) == 3
    assert len(log.entries()) == 2
    assert log.prune(None, 2, 100) == 0


class _Statements:
    """A L{izreg.storage.pg.Database} that records the statements its transactions run."""

    def __init__(self, db) -> None:
        self.db = db
        self.seen: list[tuple[str, object]] = []

    def run(self, f, *args):
        spy = self

        class Cursor:
            def __init__(self, cur) -> None:
                self.cur = cur

            def execute(self, query, params=None):
                spy.seen.append((query, params))
                return self.cur.execute(query, params)

            def __getattr__(self, name):
                return getattr(self.cur, name)

        return self.db.run(lambda cur, *a: f(Cursor(cur), *a), *args)


@pytest.mark.postgres
def test_pg_prune_by_count_walks_the_time_index_once_per_prune_never_counting_the_table(pg_db):
    """
    max_entries: the cutoff (the newest record past the newest C{keep}) is
    found once by the index on time; each batch then deletes the oldest
    C{limit} up to it; no count(*) over the whole table, no sequential scan.
    """
    from izreg.storage.pgaudit import PgAuditLog

    def fill(cur, first, last):
        cur.execute("INSERT INTO audit_log (at_us, account, entry)"
                    " SELECT n::bigint * 1000000, NULL, '{}' FROM generate_series(%s, %s) AS n", (first, last))
        cur.execute("ANALYZE audit_log")
    pg_db.run(fill, 1, 50000)
    spied = _Statements(pg_db)
    log = PgAuditLog(spied)
    assert log.prune(None, 40000, 1000) == 1000
    assert [q.split()[0] for q, _ in spied.seen] == ["SELECT", "DELETE"]  # the cutoff, then a batch
    pg_db.run(fill, 50001, 50500)  # newer records meanwhile: the cutoff still keeps the newest 40,000
    assert log.prune(1500.0, 40000, 1000) == 1000  # both limits (keep_days and max_entries)
    assert [q.split()[0] for q, _ in spied.seen[2:]] == ["DELETE"]  # the same cutoff

    def plan(cur, query, params):
        cur.execute("EXPLAIN " + query, params)
        return "\n".join(row[0] for row in cur.fetchall())
    for query, params in spied.seen:
        assert "count(" not in query.lower()
        text = pg_db.run(plan, query, params)
        assert "Seq Scan" not in text and "audit_log_by_time" in text, text

    spied.seen.clear()
    assert prune(log, Retention(max_entries=40000), 0.0, batch=1000) == 8000  # up to the first cutoff: 10,000 in all
    assert [q.split()[0] for q, _ in spied.seen] == ["DELETE"] * 9  # 8 full batches and the empty one
    assert len(PgAuditLog(pg_db).entries()) == 40500  # the 500 newer ones stay, until the next prune
    assert prune(log, Retention(max_entries=40000), 0.0, batch=1000) == 500  # a new cutoff
    assert [e["time"] for e in PgAuditLog(pg_db).entries(limit=1)] == [10501.0]
