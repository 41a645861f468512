"""
The ``izreg`` admin command against PostgreSQL: the same handlers, with a
context whose stores are the PostgreSQL ones (what L{izreg.cli.Context.open_stores}
hands them when the backend is PostgreSQL). Accounts, keys, devices, audit,
webhooks and the token key; nothing of them is left in the data directory.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from izreg import cli

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000.0


@pytest.fixture
def command(pg_db, tmp_path):
    from izreg.auth.pgstore import PgAuthStore, PgDeviceStore, PgTokenKey
    from izreg.storage.pgaudit import PgAuditLog
    from izreg.storage.pgwebhooks import PgWebhookStore

    class PgContext(cli.Context):
        def open_stores(self, create: bool = False) -> dict:
            return {
                "auth": lambda: PgAuthStore(pg_db),
                "devices": lambda: PgDeviceStore(pg_db),
                "audit": lambda: PgAuditLog(pg_db),
                "webhooks": lambda: PgWebhookStore(pg_db, self.data_dir),
                "token_key": lambda: PgTokenKey(pg_db, self.data_dir),
                "close": lambda: None,
            }

    data_dir = tmp_path / "node"
    data_dir.mkdir()

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(data_dir), *argv], environ={}, now=lambda: NOW, stdout=out, stderr=err,
                        context_class=PgContext)
        return code, out.getvalue(), err.getvalue()

    run.db, run.data_dir = pg_db, data_dir
    return run


def test_accounts_keys_and_audit(command):
    code, out, err = command("account", "create", "--name", "ops")
    assert code == 0, err
    account = out.strip()
    code, out, _ = command("account", "list", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [account]
    code, out, err = command("key", "create", account, "--name", "ci")
    assert code == 0, err
    key_id = [line for line in (out + err).split() if line.startswith("izr_")][0].split("_")[1]
    code, out, _ = command("key", "list", account, "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [key_id]
    assert command("key", "revoke", key_id)[0] == 0
    assert command("key", "revoke", "0" * 16)[0] == 2
    code, out, _ = command("audit", "--json")
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert "account-create" in actions and any("key" in a for a in actions)
    assert os.listdir(command.data_dir) == []  # nothing of it in the node's directory


def test_devices(command):
    code, out, err = command("device", "revoke", "--serial", "AB:CD", "--note", "stolen")
    assert (code, out) == (0, "revoked: serial abcd\n"), err
    code, out, _ = command("device", "list-revoked")
    assert "abcd" in out and "stolen" in out
    assert command("device", "unrevoke", "--serial", "abcd")[1] == "unrevoked: serial abcd\n"
    code, _, err = command("device", "pulls", "f" * 32)
    assert code == 2 and "no such account" in err


def test_webhooks_and_the_token_key(command):
    account = command("account", "create")[1].strip()
    code, out, err = command("webhook", "add", account, "https://hooks.example/x", "--secret", "s" * 20)
    assert code == 0, err
    code, out, _ = command("webhook", "list", account, "--json")
    [hook] = [json.loads(line) for line in out.splitlines()]
    assert hook["url"] == "https://hooks.example/x" and "secret" not in hook
    from izreg.auth.pgstore import PgTokenKey

    key = PgTokenKey(command.db, str(command.data_dir))
    before = key.secret()
    code, _, err = command("token", "rotate-key")
    assert code == 0 and "rotated" in err
    assert key.secret() != before
