"""``izreg db upgrade`` and ``izreg db status`` against a real PostgreSQL (izreg.db_cli)."""

from __future__ import annotations

import io

import pytest

from izreg.cli import main
from izreg.storage.pg import latest_version

pytestmark = pytest.mark.postgres


def run(*argv, environ=None):
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), environ=environ or {}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_upgrade_then_status(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("IZREG_DATABASE_URL", pg_dsn)
    status, out, err = run("db", "status")
    assert status == 1, err
    # one statement, not the versions twice
    assert out.strip() == (f"the database has schema version 0; this izreg needs {latest_version()}:"
                           " run `izreg db upgrade` first"), out
    status, out, err = run("db", "upgrade")
    assert status == 0, err
    assert "applied 0001_schema.sql" in out
    assert f"from schema version 0 to {latest_version()}" in out
    status, out, err = run("db", "upgrade")
    assert (status, out.strip()) == (0, f"the database is up to date (schema version {latest_version()})")
    status, out, err = run("db", "status")
    assert status == 0 and out.strip().endswith("up to date"), out


def test_dsn_from_the_config_file(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.delenv("IZREG_DATABASE_URL", raising=False)
    config = tmp_path / "izreg.toml"
    config.write_text(f'[metadata]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n')
    status, out, err = run("--config", str(config), "db", "upgrade")
    assert status == 0, err
    status, out, err = run("--config", str(config), "db", "status")
    assert status == 0, err


def test_a_newer_schema_is_refused(pg_db, monkeypatch):
    monkeypatch.setenv("IZREG_DATABASE_URL", pg_db.dsn)
    pg_db.run(lambda cur: cur.execute("INSERT INTO izreg_schema VALUES (9999, '9999_future.sql', now())"))
    status, out, err = run("db", "upgrade")
    assert status == 2
    assert "9999" in err and "upgrade izreg" in err and len(err.strip().splitlines()) == 1
    status, out, err = run("db", "status")
    assert status == 1 and "9999" in out


def test_unreachable_database_is_one_line_without_the_password(monkeypatch):
    from tests.helpers.server import free_port

    from izreg.storage import pg

    monkeypatch.setenv("IZREG_DATABASE_URL", f"postgresql://izreg:s3cret-pw@127.0.0.1:{free_port()}/izreg?connect_timeout=2")
    # the pool retries a refused port until its timeout (10 s by default): 1 s shows the same message
    opened = pg.Database.__init__
    monkeypatch.setattr(pg.Database, "__init__", lambda self, dsn, *args, **kw: opened(self, dsn, *args, **{**kw, "timeout": 1.0}))
    status, out, err = run("db", "status")
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "s3cret-pw" not in err, err


def test_no_dsn_is_an_error(monkeypatch, tmp_path):
    monkeypatch.delenv("IZREG_DATABASE_URL", raising=False)
    config = tmp_path / "izreg.toml"
    config.write_text('[metadata]\nbackend = "postgresql"\n')
    status, out, err = run("--config", str(config), "db", "status")
    assert status == 2 and "IZREG_DATABASE_URL" in err


@pytest.mark.parametrize("command", ["status", "upgrade"])
def test_on_lmdb_it_says_there_is_nothing_to_do(monkeypatch, command):
    # the default registry: it said 'metadata.backend = "postgresql" needs metadata.dsn', a database it does not use
    monkeypatch.delenv("IZREG_DATABASE_URL", raising=False)
    status, out, err = run("db", command)
    assert (status, out) == (2, "")
    assert err == ("izreg: error: izreg db is for a PostgreSQL metadata database ([metadata] backend = \"postgresql\","
                   " docs/deploy.rst); this registry's metadata is in LMDB, whose index the server upgrades itself"
                   " when it starts: nothing to do. For a database, give --config with [metadata] dsn, or"
                   " $IZREG_DATABASE_URL\n")


@pytest.mark.parametrize("command", [("backup", "out"), ("restore", "in")])
def test_backup_and_restore_are_refused_on_postgresql(pg_db, tmp_path, command):
    config = tmp_path / "izreg.toml"
    config.write_text(f'[metadata]\nbackend = "postgresql"\ndsn = "{pg_db.dsn}"\n')
    status, out, err = run("--config", str(config), "--data-dir", str(tmp_path / "data"), command[0],
                           str(tmp_path / command[1]))
    assert status == 2 and "pg_dump" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [("token", "rotate-key"), ("webhook", "add", "ACCOUNT", "http://hooks.example/x", "--secret", "whsec-0123456789abcdef")])
def test_a_command_on_postgresql_never_makes_a_second_webhook_key(pg_db, tmp_path, command):
    # docs/deploy.rst: the nodes share one webhook.key; a command run where
    # data_dir lacks it must say so, not seal with a new key no node has
    config = tmp_path / "izreg.toml"
    config.write_text(f'[metadata]\nbackend = "postgresql"\ndsn = "{pg_db.dsn}"\n')
    data = tmp_path / "data"
    data.mkdir()
    base = ("--config", str(config), "--data-dir", str(data))
    status, account, err = run(*base, "account", "create", "--name", "acme")
    assert status == 0, err
    argv = [account.strip() if arg == "ACCOUNT" else arg for arg in command]
    status, out, err = run(*base, *argv)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no {data / 'webhook.key'}: copy the nodes' webhook.key there" in err
    assert not (data / "webhook.key").exists()
    (data / "webhook.key").write_bytes(_fernet_key())  # the copy from a node
    status, out, err = run(*base, *argv)
    assert status == 0, err


def _fernet_key() -> bytes:
    from cryptography.fernet import Fernet

    return Fernet.generate_key()
