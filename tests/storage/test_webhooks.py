"""
The webhook store contract (IWebhookStore) on both backends: izreg.storage.webhooks
over a real LMDB environment, izreg.storage.pgwebhooks over a real PostgreSQL
database. Delivery over HTTP is tests/e2e/test_webhooks.py.
"""

from __future__ import annotations

import pytest

from izreg.core.cloudevents import DELETE, PULL, PUSH
from izreg.storage.interfaces import IWebhookStore
from izreg.storage.lmdbenv import open_env
from izreg.storage.webhooks import DELIVERED, FAILED, PENDING, WebhookError, WebhookStore

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
SECRET = "s3cret-s3cret-s3cret"
EVENT = {"account": A, "repository": f"{A}/app", "digest": "sha256:" + "a" * 64, "tag": "v1"}


@pytest.fixture(params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_store(request, tmp_path):
    """A function making a webhook store over one database and one key dir (each call: another node)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    if request.param == "postgresql":
        from izreg.storage.pgwebhooks import PgWebhookStore

        db = request.getfixturevalue("pg_db")
        yield lambda **kw: PgWebhookStore(db, str(keys), **kw)
        return
    env = open_env(str(tmp_path), map_size=16 * 1024 * 1024)
    yield lambda **kw: WebhookStore(env, str(keys))
    env.close()


@pytest.fixture
def store(new_store):
    return new_store()


def test_provides_the_interface(store):
    assert IWebhookStore.providedBy(store)


def test_hooks_add_list_remove(store):
    one = store.add(A, "https://hooks.example/a", SECRET, (PUSH, DELETE), 10.0)
    two = store.add(B, "http://hooks.example/b", SECRET + "2", (PULL,), 11.0)
    assert one.public() == {"id": one.id, "account": A, "url": "https://hooks.example/a", "events": [PUSH, DELETE],
                            "created": 10.0}
    assert store.hooks(A) == [one] and store.hooks(B) == [two]
    assert sorted(store.hooks(), key=lambda h: h.account) == [one, two]
    assert store.wants(A, PUSH) == [one] and store.wants(A, PULL) == []
    assert store.secret(A, one.id) == SECRET.encode() and store.secret(B, two.id) == (SECRET + "2").encode()
    assert store.secret(B, one.id) is None
    assert store.remove(one.id) == one and store.remove(one.id) is None
    assert store.hooks(A) == [] and store.secret(A, one.id) is None


def test_bad_hooks_are_refused(store):
    with pytest.raises(WebhookError):
        store.add(A, "https://hooks.example/a", "short", (PUSH,), 1.0)
    with pytest.raises(WebhookError):
        store.add(A, "ftp://hooks.example/a", SECRET, (PUSH,), 1.0)
    with pytest.raises(WebhookError):
        store.add(A, "https://user:pw@hooks.example/a", SECRET, (PUSH,), 1.0)
    assert store.hooks() == []


def test_secrets_are_sealed(store, new_store, tmp_path):
    hook = store.add(A, "https://hooks.example/a", SECRET, (PUSH,), 1.0)
    assert new_store().secret(A, hook.id) == SECRET.encode()  # another handle, same key file
    if hasattr(store, "db"):
        def dump(cur):
            cur.execute("SELECT w::text FROM webhooks AS w")
            return "".join(r[0] for r in cur.fetchall())

        assert SECRET not in store.db.run(dump)
    else:
        with store.env.begin() as txn:
            assert not any(SECRET.encode() in bytes(v) for _, v in txn.cursor(db=store._hooks))


def test_the_queue(store):
    hook = store.add(A, "https://hooks.example/a", SECRET, (PUSH,), 1.0)
    store.add(A, "https://hooks.example/b", SECRET, (PULL,), 1.0)
    assert store.enqueue(DELETE, 5.0, **EVENT) == []  # nobody listens
    assert store.next_due() is None
    [first] = store.enqueue(PUSH, 5.0, **EVENT)
    [second] = store.enqueue(PUSH, 6.0, **EVENT)
    assert first < second
    assert store.next_due() == 5.0
    assert store.due(4.0, 10) == []
    due = store.due(10.0, 10)
    assert [d for d, _ in due] == [first, second]
    record = due[0][1]
    assert (record["hook"], record["account"], record["url"], record["status"], record["attempts"]) == (
        hook.id, A, hook.url, PENDING, 0)
    assert record["event"]["subject"] == f"{A}/app:v1"

    retried = store.finish(first, 11.0, 500, "the receiver answered 500", 20.0)
    assert retried["attempts"] == 1 and retried["status"] == PENDING and retried["next_try"] == 20.0
    done = store.finish(second, 11.0, 204, None, None)
    assert done["status"] == DELIVERED and done["done"] == 11.0
    assert [d for d, _ in store.due(15.0, 10)] == []
    assert [d for d, _ in store.due(20.0, 10)] == [first]
    gave_up = store.finish(first, 21.0, None, "refused", None)
    assert gave_up["status"] == FAILED and gave_up["attempts"] == 2
    assert store.due(100.0, 10) == [] and store.next_due() is None
    assert store.finish("00" * 16, 1.0, 200, None, None) is None

    assert [d["id"] for d in store.deliveries()] == [second, first]
    assert [d["id"] for d in store.deliveries(account=A, hook_id=hook.id, limit=1)] == [second]
    assert store.deliveries(account=B) == []
    assert store.prune(15.0) == 1  # the delivered one (done at 11)
    assert [d["id"] for d in store.deliveries()] == [first]


def test_due_leaves_out_busy_and_honours_the_limit(store):
    store.add(A, "https://hooks.example/a", SECRET, (PUSH,), 1.0)
    ids = [store.enqueue(PUSH, float(t), **EVENT)[0] for t in range(3)]
    assert [d for d, _ in store.due(10.0, 1)] == ids[:1]
    assert [d for d, _ in store.due(10.0, 5, busy={ids[0]})] == ids[1:]
    assert store.due(10.0, 0) == []


@pytest.mark.postgres
def test_each_delivery_is_claimed_by_one_node_until_its_lease_ends(pg_db, tmp_path):
    from izreg.storage.pgwebhooks import PgWebhookStore

    one, two = PgWebhookStore(pg_db, str(tmp_path), lease=60.0), PgWebhookStore(pg_db, str(tmp_path), lease=60.0)
    one.add(A, "https://hooks.example/a", SECRET, (PUSH,), 1.0)
    ids = [one.enqueue(PUSH, float(t), **EVENT)[0] for t in range(3)]
    assert [d for d, _ in one.due(10.0, 2)] == ids[:2]
    assert [d for d, _ in two.due(10.0, 10)] == ids[2:]  # the others are one's
    assert two.due(11.0, 10) == []
    one.finish(ids[0], 12.0, 204, None, None)
    # one died holding ids[1]: after the lease another node sends it again (at least once)
    assert [d for d, _ in two.due(71.0, 10)] == [ids[1], ids[2]]


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_delivery(pg_db, tmp_path):
    import threading

    from izreg.storage.pgwebhooks import PgWebhookStore

    store = PgWebhookStore(pg_db, str(tmp_path))
    store.add(A, "https://hooks.example/a", SECRET, (PUSH,), 1.0)
    ids = [store.enqueue(PUSH, 1.0, **EVENT)[0] for _ in range(40)]
    got: list[list[str]] = []
    barrier = threading.Barrier(4)

    def node():
        mine = PgWebhookStore(pg_db, str(tmp_path))
        barrier.wait()
        taken = []
        while batch := mine.due(10.0, 3):
            taken.extend(d for d, _ in batch)
        got.append(taken)

    threads = [threading.Thread(target=node) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [d for taken in got for d in taken]
    assert sorted(every) == sorted(ids)  # each exactly once


@pytest.mark.postgres
def test_the_first_node_on_an_empty_database_fixes_the_key_every_other_node_needs(pg_db, tmp_path):
    # two nodes started together on an empty database, each with a key of its own: the second is
    # refused at start, not later when it cannot open the token key the first one sealed
    from izreg.storage.pgwebhooks import check_sealing_key

    from cryptography.fernet import Fernet

    first, keyless, own, copy = (tmp_path / name for name in ("first", "keyless", "own", "copy"))
    for d in (first, keyless, own, copy):
        d.mkdir()
    check_sealing_key(pg_db, str(first))
    assert (first / "webhook.key").exists()
    check_sealing_key(pg_db, str(first))  # again, as at its next start
    with pytest.raises(WebhookError, match="copy it from another node"):
        check_sealing_key(pg_db, str(keyless))
    assert not (keyless / "webhook.key").exists()
    (own / "webhook.key").write_bytes(Fernet.generate_key())
    with pytest.raises(WebhookError, match="not the key"):
        check_sealing_key(pg_db, str(own))
    (copy / "webhook.key").write_bytes((first / "webhook.key").read_bytes())
    check_sealing_key(pg_db, str(copy))
