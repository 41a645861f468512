"""izreg audit, webhook and backup/restore through main([...]) (in process)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from izreg import ops_cli
from izreg.core.digest import Digest
from izreg.storage.backup import BackupError, backup, restore
from izreg.storage.blobs import BlobStore
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import Index
from izreg.storage.webhooks import WebhookStore
from tests.test_cli import NOW, init, run

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def account(capsys, tmp_path):
    init(tmp_path)  # the server's first start makes the data
    code, out, _ = run(capsys, tmp_path, "account", "create")
    assert code == 0
    return out.strip()


def test_parse_since():
    assert ops_cli.parse_since("2h", NOW) == NOW - 7200
    assert ops_cli.parse_since("7d", NOW) == NOW - 7 * 86400
    assert ops_cli.parse_since("2023-11-14T22:13:20Z", 0) == NOW
    assert ops_cli.parse_since("2023-11-14", 0) == NOW - (22 * 3600 + 13 * 60 + 20)


def test_audit_lists_cli_changes(capsys, tmp_path, account):
    code, out, _ = run(capsys, tmp_path, "key", "create", account)
    code, out, _ = run(capsys, tmp_path, "audit", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["action"] for r in records) == ["account-create", "key-create"]  # same clock: any order
    assert all(r["actor"] == "cli" and r["time"] == "2023-11-14T22:13:20Z" for r in records)
    code, out, err = run(capsys, tmp_path, "audit", "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err
    code, out, _ = run(capsys, tmp_path, "audit", "--account", "f" * 32)
    assert code == 0 and len(out.splitlines()) == 1  # the header


def test_izreg_gc_prunes_the_audit_log_to_the_configured_retention(capsys, tmp_path, account):
    from izreg import cli

    # a second later than the account's creation: the newest record
    assert cli.main(["--data-dir", str(tmp_path), "key", "create", account], environ={}, now=lambda: NOW + 1) == 0
    config = tmp_path / "izreg.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n[audit]\nkeep_days = 0\nmax_entries = 1\n')
    code, out, err = run(capsys, None, "--config", str(config), "gc", "--dry-run")
    assert code == 0 and "audit" not in out  # a dry run deletes nothing
    code, out, err = run(capsys, None, "--config", str(config), "gc")
    assert code == 0 and out.rstrip().endswith("; pruned 1 audit record"), out + err
    code, out, _ = run(capsys, tmp_path, "audit", "--json")
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["key-create"]


@pytest.mark.parametrize("argv, message", [
    (["ftp://x/hook", "--secret", SECRET], "must be http:// or https://"),
    (["http://u:p@x/hook", "--secret", SECRET], "no credentials in the webhook URL"),
    (["http://x/hook", "--secret", "short"], "at least 16 characters"),
    (["http://x/hook", "--secret", SECRET, "--events", "push,build"], "events must be"),
])
def test_bad_webhooks_are_refused(capsys, tmp_path, account, argv, message):
    code, _, err = run(capsys, tmp_path, "webhook", "add", account, *argv)
    assert code == 2 and message in err


def test_webhook_secrets_are_sealed(capsys, tmp_path, account):
    code, out, _ = run(capsys, tmp_path, "webhook", "add", account, "https://hooks.example/x", "--secret", SECRET)
    hook_id = out.strip()
    assert code == 0 and len(hook_id) == 16
    key_file = tmp_path / "webhook.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert SECRET.encode() not in (tmp_path / "index" / "data.mdb").read_bytes()
    env = open_env(str(tmp_path), 1 << 30)
    try:
        assert WebhookStore(env, str(tmp_path)).secret(account, hook_id) == SECRET.encode()
    finally:
        env.close()
    code, out, _ = run(capsys, tmp_path, "webhook", "list", "--json")
    assert SECRET not in out and json.loads(out)["events"] == ["push", "delete"]
    assert run(capsys, tmp_path, "webhook", "remove", hook_id)[0] == 0
    assert run(capsys, tmp_path, "webhook", "remove", hook_id)[0] == 2


def test_the_queue_retries_then_gives_up(tmp_path, account):
    env = open_env(str(tmp_path), 1 << 30)
    try:
        store = WebhookStore(env, str(tmp_path))
        store.add(account, "http://127.0.0.1:1/", SECRET, ("push",), NOW)
        assert store.enqueue("delete", NOW, account=account, repository=f"{account}/a", digest="sha256:x") == []
        [delivery] = store.enqueue("push", NOW, account=account, repository=f"{account}/a", digest=None, tag="v1")
        [(found, record)] = store.due(NOW, 10)
        assert found == delivery and record["event"]["subject"] == f"{account}/a:v1"
        assert store.due(NOW, 10, busy={delivery}) == []
        store.finish(delivery, NOW, None, "refused", NOW + 5)
        assert store.due(NOW + 4, 10) == [] and store.next_due() == NOW + 5
        store.finish(delivery, NOW + 5, 500, "the receiver answered 500", None)
        [done] = store.deliveries()
        assert (done["status"], done["attempts"], done["last_status"]) == ("failed", 2, 500)
        assert store.due(NOW + 100, 10) == []
        assert store.prune(NOW + 6) == 1 and store.deliveries() == []
    finally:
        env.close()


def test_backup_and_restore_in_process(tmp_path):
    data, target, again = str(tmp_path / "data"), str(tmp_path / "backup"), str(tmp_path / "again")
    env = open_env(data, 1 << 30)
    blobs = BlobStore(data)
    payload = b"a blob" * 1000
    digest = Digest.of(payload, "sha256")
    blobs.put_bytes(digest, payload)
    Index(env).commit_blob(f"{'a' * 32}/app", digest, len(payload), NOW, None)
    env.close()
    for name in ("token.key", "webhook.key"):  # the secrets beside the index go along, still private
        with open(os.path.join(data, name), "w") as f:
            f.write(name)
    summary = backup(data, target, 1 << 30, now=lambda: NOW)
    assert (summary.blobs, summary.bytes) == (1, len(payload))
    with pytest.raises(BackupError, match="must be an empty directory"):
        backup(data, target, 1 << 30)
    with pytest.raises(BackupError, match="must be an empty directory"):
        restore(target, data, 1 << 30)
    restore(target, again, 1 << 30)
    with BlobStore(again).open(digest) as f:
        assert f.read() == payload
    for name in ("token.key", "webhook.key"):
        restored = os.path.join(again, name)
        assert open(restored).read() == name and stat.S_IMODE(os.stat(restored).st_mode) == 0o600
    assert backup(data, str(tmp_path / "index-only"), 1 << 30, index_only=True).blobs == 0
    restore(str(tmp_path / "index-only"), str(tmp_path / "again2"), 1 << 30)
    assert BlobStore(str(tmp_path / "again2")).open(digest) is None
    # a damaged blob is found while copying
    with open(BlobStore(data).path(digest), "r+b") as f:
        f.write(b"X")
    with pytest.raises(BackupError, match="does not match its digest"):
        backup(data, str(tmp_path / "bad"), 1 << 30)
