"""
The audit log contract (IAuditLog) on both backends: izreg.storage.audit over a
real LMDB environment in tmp_path, izreg.storage.pgaudit over a real PostgreSQL database.
"""

from __future__ import annotations

import pytest

from izreg.storage import schema
from izreg.storage.audit import AuditLog, iso
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
