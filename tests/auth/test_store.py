# -*- test-case-name: tests.auth.test_store -*-
"""
The accounts-and-keys contract (IAuthStore), on both backends: AuthStore over a
real LMDB environment in tmp_path, PgAuthStore over a real PostgreSQL database.
"""

from __future__ import annotations

import re

import pytest

from izreg.auth import keys
from izreg.auth.interfaces import IAuthStore
from izreg.auth.store import AuthStore, InvalidName, UnknownAccount, UnknownKey
from izreg.storage.lmdbenv import open_env
from tests.auth.conftest import BACKENDS, stored_text


@pytest.fixture(params=BACKENDS)
def store(request):
    if request.param == "lmdb":
        return AuthStore(request.getfixturevalue("env"))
    from izreg.auth.pgstore import PgAuthStore

    return PgAuthStore(request.getfixturevalue("pg_db"))


def test_provides_the_interface(store):
    assert IAuthStore.providedBy(store)


def test_accounts(store):
    assert store.list_accounts() == []
    a = store.create_account(10.0, name="ops")
    b = store.create_account(11.0)
    assert re.fullmatch(r"[0-9a-f]{32}", a.account_id)
    assert store.get_account(a.account_id) == a
    assert a.name == "ops" and a.created == 10.0
    assert store.list_accounts() == sorted([a, b], key=lambda x: x.account_id)
    assert store.get_account("f" * 32) is None
    assert store.get_account("") is None
    assert store.get_account("not hex") is None


def test_names_are_checked(store):
    with pytest.raises(InvalidName):
        store.create_account(1.0, name="a\nb")
    with pytest.raises(InvalidName):
        store.create_account(1.0, name="x" * 201)
    account = store.create_account(1.0)
    with pytest.raises(InvalidName):
        store.create_key(account.account_id, 1.0, name="\x1b[31m")


def test_create_and_get_key(store):
    account = store.create_account(1.0)
    record, key = store.create_key(account.account_id, 2.0, name="ci", read_only=True)
    assert record.key_id == key.key_id and record.account == account.account_id
    assert record.read_only and record.scope == "read-only" and record.name == "ci"
    assert record.created == 2.0 and record.last_used is None and record.active
    assert store.get_key(key.key_id) == record
    assert keys.verify(key, record.secret_hash)
    assert key.secret not in repr(record) and record.secret_hash not in repr(record)


def test_only_a_hash_is_stored(store):
    account = store.create_account(1.0)
    record, key = store.create_key(account.account_id, 2.0)
    stored = stored_text(store)
    assert record.secret_hash.encode() in stored and key.secret.encode() not in stored


def test_create_key_unknown_account(store):
    with pytest.raises(UnknownAccount):
        store.create_key("f" * 32, 1.0)
    with pytest.raises(UnknownAccount):
        store.create_key("nope", 1.0)


def test_list_keys(store):
    a = store.create_account(1.0)
    b = store.create_account(1.0)
    k2, _ = store.create_key(a.account_id, 5.0)
    k1, _ = store.create_key(a.account_id, 3.0)
    kb, _ = store.create_key(b.account_id, 4.0)
    assert store.list_keys(a.account_id) == [k1, k2]
    assert store.list_keys(b.account_id) == [kb]
    with pytest.raises(UnknownAccount):
        store.list_keys("f" * 32)


def test_revoke(store):
    a = store.create_account(1.0)
    record, _ = store.create_key(a.account_id, 2.0)
    revoked = store.revoke_key(record.key_id, 7.0)
    assert revoked.revoked == 7.0 and not revoked.active
    assert store.get_key(record.key_id) == revoked
    # idempotent: keeps the first time
    assert store.revoke_key(record.key_id, 9.0).revoked == 7.0
    with pytest.raises(UnknownKey):
        store.revoke_key("0" * 16, 1.0)
    with pytest.raises(UnknownKey):
        store.revoke_key("bad", 1.0)


def test_touch(store):
    a = store.create_account(1.0)
    record, _ = store.create_key(a.account_id, 2.0)
    assert store.touch_keys({record.key_id: 100.0}) == 1
    assert store.get_key(record.key_id).last_used == 100.0
    assert store.touch_keys({record.key_id: 50.0}) == 0  # never moves backwards
    assert store.get_key(record.key_id).last_used == 100.0
    assert store.touch_keys({"0" * 16: 1.0, "bad": 1.0}) == 0  # unknown: ignored


def test_get_key_rejects_bad_ids(store):
    assert store.get_key("") is None
    assert store.get_key("0" * 16) is None


def test_data_survives_reopen(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    store = AuthStore(env)
    account = store.create_account(1.0)
    record, _ = store.create_key(account.account_id, 2.0)
    env.close()
    env = open_env(str(tmp_path), 1 << 30)
    try:
        assert AuthStore(env).get_key(record.key_id) == record
    finally:
        env.close()


@pytest.mark.postgres
def test_a_revocation_on_one_node_is_seen_by_another(pg_db):
    """Two nodes: two pools on one database; nothing is cached between requests."""
    from izreg.auth.pgstore import PgAuthStore
    from izreg.storage.pg import Database

    other_db = Database(pg_db.dsn, max_size=2)
    try:
        one, two = PgAuthStore(pg_db), PgAuthStore(other_db)
        account = one.create_account(1.0)
        record, _ = one.create_key(account.account_id, 2.0)
        assert two.get_key(record.key_id).active
        one.revoke_key(record.key_id, 3.0)
        assert not two.get_key(record.key_id).active
        two.delete_account(account.account_id)
        assert one.get_key(record.key_id) is None and one.get_account(account.account_id) is None
    finally:
        other_db.close()


@pytest.mark.postgres
def test_nodes_starting_at_once_make_one_first_account(pg_db):
    import threading

    from izreg.auth.pgstore import PgAuthStore

    stores = [PgAuthStore(pg_db) for _ in range(4)]
    made, barrier = [], threading.Barrier(len(stores))

    def start(store):
        barrier.wait()
        made.append(store.create_first_account(1.0, "boot", "k", then=lambda a, k: None))

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([a for a in made if a is not None]) == 1
    assert len(stores[0].list_accounts()) == 1


def test_create_first_account(store):
    seen = []
    account = store.create_first_account(1.0, "boot", "bootkey", then=lambda a, k: seen.append((a, k)))
    assert account is not None and seen[0][0] == account
    key = seen[0][1]
    record = store.get_key(key.key_id)
    assert record.account == account.account_id and not record.read_only and record.name == "bootkey"
    assert store.create_first_account(2.0, "again", "k", then=lambda a, k: seen.append(1)) is None
    assert len(seen) == 1 and len(store.list_accounts()) == 1


def test_create_first_account_rolls_back_when_then_fails(store):
    def fail(account, key):
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.create_first_account(1.0, "boot", "k", then=fail)
    assert store.list_accounts() == []


@pytest.fixture(params=BACKENDS)
def new_token_key(request, tmp_path):
    """A function making the token key of one registry (each call: another node's handle)."""
    if request.param == "lmdb":
        from izreg.auth.tokenkey import TokenKey

        return lambda: TokenKey(str(tmp_path))
    from izreg.auth.pgstore import PgTokenKey

    db = request.getfixturevalue("pg_db")
    return lambda: PgTokenKey(db, str(tmp_path))


def test_token_key_is_shared_and_rotates(new_token_key):
    one, two = new_token_key(), new_token_key()
    secret = one.secret()
    assert len(secret) == 32 and one.secret() == secret == two.secret()
    one.rotate(replace=False)
    assert two.secret() == secret
    one.rotate()
    assert two.secret() != secret and two.secret() == one.secret()
    assert secret.hex() not in repr(one)


@pytest.mark.postgres
def test_the_token_key_is_sealed_in_the_database(pg_db, tmp_path):
    from izreg.auth.pgstore import PgAuthStore, PgTokenKey

    secret = PgTokenKey(pg_db, str(tmp_path)).secret()
    stored = stored_text(PgAuthStore(pg_db))
    assert secret.hex().encode() not in stored and secret not in stored and b"token.key" in stored


@pytest.mark.postgres
def test_a_node_with_another_sealing_key_is_told_so(pg_db, tmp_path):
    from izreg.auth.pgstore import PgTokenKey
    from izreg.storage.webhooks import WebhookError

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    PgTokenKey(pg_db, str(tmp_path / "one")).secret()
    with pytest.raises(WebhookError, match="every node needs the same file"):
        PgTokenKey(pg_db, str(tmp_path / "two")).secret()


def test_a_key_read_after_another_store_revokes_it_is_revoked(env):
    """get_key keeps only the decoding of the bytes it reads: a revocation by another process holds at the next read."""
    reader, writer = AuthStore(env), AuthStore(env)  # two processes on one data dir (the CLI and the server)
    account = writer.create_account(1.0)
    record, _ = writer.create_key(account.account_id, 2.0)
    assert reader.get_key(record.key_id).active and reader.get_key(record.key_id) == record
    writer.revoke_key(record.key_id, 3.0)
    assert not reader.get_key(record.key_id).active
    writer.touch_keys({record.key_id: 4.0})
    assert reader.get_key(record.key_id).last_used == 4.0


def test_the_decoded_keys_are_bounded(env, monkeypatch):
    from izreg.auth import store as store_module

    monkeypatch.setattr(store_module, "DECODED_KEYS", 3)
    store = AuthStore(env)
    account = store.create_account(1.0)
    ids = [store.create_key(account.account_id, 2.0 + i)[0].key_id for i in range(5)]
    for key_id in ids * 2:
        assert store.get_key(key_id).key_id == key_id
        assert len(store._decoded) <= 3
