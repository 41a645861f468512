# -*- test-case-name: tests.test_cli -*-
"""The izreg admin command, through main([...]) and once as a real process."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from izreg import cli
from izreg.auth import keys
from izreg.auth.store import AuthStore
from izreg.core.argv import options_first
from izreg.storage.lmdbenv import open_env

NOW = 1_700_000_000.0


def run(capsys, data_dir, *argv, environ=None):
    args = ["--data-dir", str(data_dir), *argv] if data_dir is not None else list(argv)
    code = cli.main(args, environ=environ or {}, now=lambda: NOW)
    out, err = capsys.readouterr()
    return code, out, err


def lines(text):
    return text.splitlines()


def init(data_dir) -> None:
    """Make izreg data in C{data_dir}, as the server's first start does."""
    open_env(str(data_dir), 1 << 30).close()


@pytest.fixture
def account(capsys, tmp_path):
    init(tmp_path)
    code, out, err = run(capsys, tmp_path, "account", "create", "--name", "ops")
    assert code == 0 and err == ""
    return out.strip()


def test_account_create_prints_only_the_id(capsys, tmp_path):
    init(tmp_path)
    code, out, err = run(capsys, tmp_path, "account", "create")
    assert code == 0
    assert re.fullmatch(r"[0-9a-f]{32}\n", out)
    assert err == ""


def test_account_list(capsys, tmp_path, account):
    code, out, _ = run(capsys, tmp_path, "account", "list")
    assert code == 0
    header, row = lines(out)
    assert header.split() == ["ACCOUNT", "NAME", "CREATED"]
    assert row.split() == [account, "ops", "2023-11-14T22:13:20Z"]
    code, out, _ = run(capsys, tmp_path, "account", "list", "--json")
    assert [json.loads(line) for line in lines(out)] == [{"id": account, "name": "ops", "created": "2023-11-14T22:13:20Z"}]


def test_key_create_prints_only_the_key_and_it_verifies(capsys, tmp_path, account):
    code, out, err = run(capsys, tmp_path, "key", "create", account, "--name", "ci", "--read-only")
    assert code == 0
    assert len(lines(out)) == 1
    key = keys.parse(out.strip())
    assert err == f"key id {key.key_id} (for izreg key revoke); the key is not shown again\n"
    assert out.strip() not in err
    env = open_env(str(tmp_path), 1 << 30)
    try:
        record = AuthStore(env).get_key(key.key_id)
    finally:
        env.close()
    assert record.account == account and record.read_only and record.name == "ci"
    assert keys.verify(key, record.secret_hash)


def test_key_list_never_shows_secrets(capsys, tmp_path, account):
    _, key_ro, _ = run(capsys, tmp_path, "key", "create", account, "--name", "ci", "--read-only")
    _, key_rw, _ = run(capsys, tmp_path, "key", "create", account)
    code, out, err = run(capsys, tmp_path, "key", "list", account)
    assert code == 0 and err == ""
    rows = [line.split() for line in lines(out)]
    assert rows[0] == ["KEY_ID", "NAME", "SCOPE", "CREATED", "LAST_USED", "STATUS"]
    ro, rw = keys.parse(key_ro.strip()), keys.parse(key_rw.strip())
    assert sorted(r[:3] for r in rows[1:]) == sorted([[ro.key_id, "ci", "read-only"], [rw.key_id, "-", "read-write"]])
    assert all(r[3:] == ["2023-11-14T22:13:20Z", "never", "active"] for r in rows[1:])
    code, out_json, _ = run(capsys, tmp_path, "key", "list", account, "--json")
    for text in (out, out_json):
        assert ro.secret not in text and rw.secret not in text
    assert {json.loads(line)["scope"] for line in lines(out_json)} == {"read-only", "read-write"}


def test_key_revoke(capsys, tmp_path, account):
    _, text, _ = run(capsys, tmp_path, "key", "create", account)
    key = keys.parse(text.strip())
    code, out, err = run(capsys, tmp_path, "key", "revoke", key.key_id)
    assert (code, out, err) == (0, f"revoked {key.key_id}\n", "")
    _, out, _ = run(capsys, tmp_path, "key", "list", account, "--json")
    assert json.loads(out)["revoked"] == "2023-11-14T22:13:20Z"
    _, out, _ = run(capsys, tmp_path, "key", "list", account)
    assert lines(out)[1].split()[-2:] == ["revoked", "2023-11-14T22:13:20Z"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["key", "create", "f" * 32], "izreg: error: no such account: " + "f" * 32),
        (["key", "create", "xyz"], "izreg: error: invalid account id 'xyz': expected 32 lowercase hex characters"),
        (["key", "create", "F" * 32], "izreg: error: invalid account id"),
        (["key", "list", "f" * 32], "izreg: error: no such account: " + "f" * 32),
        (["key", "list", "nope"], "izreg: error: invalid account id 'nope'"),
        (["key", "revoke", "0" * 16], "izreg: error: no such key: " + "0" * 16),
        (["key", "revoke", "zz"], "izreg: error: invalid key id: expected 16 lowercase hex characters"),
        (["key", "revoke", "izr_" + "0" * 16 + "_" + "a" * 43], "(give the key id, not the key)"),
        (["account", "create", "--name", "a\nb"], "izreg: error: names are at most 200 printable characters"),
        (["account"], "izreg: error: the following arguments are required: COMMAND"),
        (["frobnicate"], "izreg: error: argument GROUP: invalid choice"),
        ([], "izreg: error: the following arguments are required: GROUP"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, tmp_path, account, argv, message):
    code, out, err = run(capsys, tmp_path, *argv)
    assert code == 2
    assert out == ""
    assert len(lines(err)) == 1
    assert message in err
    assert "a" * 43 not in err  # a pasted key is never echoed back


def test_missing_data_dir_is_an_error(capsys, tmp_path):
    """A mistyped --data-dir never creates a new registry, account create included (the server's first start does)."""
    missing = tmp_path / "nothing-here"
    for argv in (["account", "list"], ["account", "create"], ["key", "list", "a" * 32], ["key", "revoke", "0" * 16],
                 ["token", "rotate-key"]):
        code, out, err = run(capsys, missing, *argv)
        assert code == 2 and out == ""
        assert lines(err) == [f"izreg: error: no izreg data in {str(missing)!r}: the server's first start makes it "
                              "(twistd izreg server); else set --data-dir or IZREG_DATA_DIR"]
    assert not missing.exists()


def test_version(capsys):
    from izreg import __version__

    assert cli.main(["--version"], environ={}) == 0
    assert capsys.readouterr().out.strip() == f"izreg {__version__}"


def test_data_dir_from_environment_and_flag_wins(capsys, tmp_path):
    by_env, by_flag = tmp_path / "env", tmp_path / "flag"
    init(by_env)
    init(by_flag)
    code, out, _ = run(capsys, None, "account", "create", environ={"IZREG_DATA_DIR": str(by_env)})
    assert code == 0
    env_account = out.strip()
    code, out, _ = run(capsys, by_flag, "account", "create", environ={"IZREG_DATA_DIR": str(by_env)})
    assert code == 0
    flag_account = out.strip()
    _, listed_env, _ = run(capsys, None, "account", "list", "--json", environ={"IZREG_DATA_DIR": str(by_env)})
    _, listed_flag, _ = run(capsys, by_flag, "account", "list", "--json")
    assert [json.loads(x)["id"] for x in lines(listed_env)] == [env_account]
    assert [json.loads(x)["id"] for x in lines(listed_flag)] == [flag_account]


def test_the_commands_own_options_may_follow_the_command(capsys, tmp_path, account):
    # a newcomer types `izreg images ACCOUNT --data-dir DIR` or `izreg gc --dry-run --config F`; argparse said
    # "unrecognized arguments: --data-dir <account id>", as if the option did not exist
    config = tmp_path / "izreg.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n')
    for argv in (["account", "list", "--data-dir", str(tmp_path)], ["account", "list", f"--data-dir={tmp_path}"],
                 ["account", "list", "--config", str(config)], ["--config", str(config), "account", "list"]):
        code, out, err = run(capsys, None, *argv)
        assert (code, err) == (0, ""), argv
        assert lines(out)[1].split()[0] == account, argv


@pytest.mark.parametrize("argv, moved", [
    (["images", "A", "--data-dir", "D"], ["--data-dir", "D", "images", "A"]),
    (["gc", "--dry-run", "--config=F", "--grace", "0"], ["--config=F", "gc", "--dry-run", "--grace", "0"]),
    (["--data-dir", "D", "gc"], ["--data-dir", "D", "gc"]),
    (["webhook", "add", "A", "U", "--", "--config", "F"], ["webhook", "add", "A", "U", "--", "--config", "F"]),
])
def test_global_options_first(argv, moved):
    assert options_first(argv, cli.GLOBAL_OPTIONS) == moved


@pytest.mark.parametrize("argv", [["key", "list", "A", "--data-dir"], ["key", "list", "--data-dir"],
                                  ["gc", "--config"], ["--data-dir"]])
def test_an_option_given_last_without_its_value_is_said_to_need_one(capsys, argv):
    # argparse said "unrecognized arguments: --data-dir", or that the account id was missing, as if the option
    # did not exist or had been taken
    code, out, err = run(capsys, None, *argv)
    assert (code, out) == (2, "")
    assert err == f"izreg: error: argument {argv[-1]}: expected one argument (see izreg --help)\n"


def test_default_data_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    init(tmp_path / "izreg-data")
    code, _, _ = run(capsys, None, "account", "create")
    assert code == 0
    assert (tmp_path / "izreg-data" / "index").is_dir()


def test_help_exits_0(capsys):
    assert cli.main(["--help"], environ={}) == 0
    assert "account" in capsys.readouterr().out


def test_another_module_can_add_a_group(capsys, tmp_path):
    def register(subparsers):
        device = subparsers.add_parser("plugin-group")
        device.set_defaults(handler=lambda args, context: context.out("plugin!") or 0)

    cli.GROUPS.append(register)
    try:
        code, out, _ = run(capsys, tmp_path, "plugin-group")
    finally:
        cli.GROUPS.remove(register)
    assert (code, out) == (0, "plugin!\n")


class ReaderGone(io.StringIO):
    """A pipe whose reader went away (| head)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_gone_is_quiet(tmp_path, account):
    stderr = io.StringIO()
    code = cli.main(["--data-dir", str(tmp_path), "account", "list"], environ={}, stdout=ReaderGone(), stderr=stderr)
    assert (code, stderr.getvalue()) == (141, "")


@pytest.mark.e2e  # a real izreg process
def test_a_real_process_whose_reader_went_away_is_quiet(tmp_path, account):
    """``izreg images ACCOUNT --json | head -c 100`` printed "izreg: error: [Errno 32] Broken pipe"."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "izreg.cli", "--data-dir", str(tmp_path), "images", account, "--json"],
            env={**os.environ, "PYTHONPATH": root}, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.e2e  # a real izreg process
def test_real_process_while_the_server_holds_the_environment_open(tmp_path):
    """The console module as its own process, next to an open environment (the running server)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    environment = {**os.environ, "PYTHONPATH": root, "IZREG_DATA_DIR": str(tmp_path)}

    def izreg(*argv):
        return subprocess.run(
            [sys.executable, "-m", "izreg.cli", *argv], env=environment, capture_output=True, text=True, timeout=60
        )

    server_env = open_env(str(tmp_path), 1 << 30)  # what the running server holds
    try:
        server_store = AuthStore(server_env)
        created = izreg("account", "create")
        assert created.returncode == 0, created.stderr
        account = created.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{32}", account)
        made = izreg("key", "create", account)
        assert made.returncode == 0, made.stderr
        key = keys.parse(made.stdout.strip())
        assert server_store.get_key(key.key_id).active
        assert izreg("key", "revoke", key.key_id).returncode == 0
        assert not server_store.get_key(key.key_id).active
        bad = izreg("key", "create", "0" * 32)
        assert bad.returncode == 2
        assert bad.stdout == "" and bad.stderr == f"izreg: error: no such account: {'0' * 32}\n"
    finally:
        server_env.close()


def test_account_delete_refused_with_repositories_unless_purge(capsys, tmp_path, account):
    from izreg.core.digest import Digest
    from izreg.storage.audit import AuditLog
    from izreg.storage.lmdbindex import Index

    code, out, _ = run(capsys, tmp_path, "key", "create", account)
    env = open_env(str(tmp_path), 1 << 30)
    try:
        index = Index(env)
        blob = Digest.of(b"layer")
        index.commit_blob(f"{account}/app", blob, 5, NOW, None)
        index.put_manifest(f"{account}/app", Digest.of(b"m"), {"mediaType": "x", "subject": None, "created": NOW},
                           b"m", [(str(blob), 5)], [], "v1", None, NOW)
    finally:
        env.close()
    code, out, err = run(capsys, tmp_path, "images", account)
    assert code == 0, err
    assert out.splitlines()[-1] == "1 repository, 1 manifest, 6 B referenced"  # was "1 repositories, 1 manifests"
    code, out, err = run(capsys, tmp_path, "account", "delete", account)
    assert code == 2 and "has 1 repository;" in err and "--purge" in err
    code, out, err = run(capsys, tmp_path, "account", "delete", account, "--purge")
    assert code == 0, err
    assert out == f"deleted account {account}: 1 key, 1 repository, 1 manifest (garbage collection reclaims their blobs)\n"
    env = open_env(str(tmp_path), 1 << 30)
    try:
        index = Index(env)
        assert AuthStore(env).get_account(account) is None
        with env.begin() as txn:
            assert [k for k, v in txn.cursor(db=env.open_db(b"keys")) if json.loads(v)["account"] == account] == []
        assert index.list_repos("", None, 10) == ([], False)
        assert not index.blob_referenced(Digest.of(b"layer"))
        assert sorted((e["action"], e["actor"]) for e in AuditLog(env).entries() if e["action"].startswith("delete")) == [
            ("delete-account", "cli"), ("delete-repository", "cli")]  # same clock time: any order
    finally:
        env.close()
    code, _, err = run(capsys, tmp_path, "account", "delete", account)
    assert code == 2 and "no such account" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_gc_and_fsck_draw_a_progress_bar_on_a_terminal_only(tmp_path, account):
    from izreg.core.digest import Digest
    from izreg.storage.blobs import BlobStore
    from izreg.storage.lmdbindex import Index

    env = open_env(str(tmp_path), 1 << 30)
    try:
        blobs = BlobStore(str(tmp_path))
        for i in range(3):
            data = b"unreferenced %d" % i
            Index(env).commit_blob(f"{account}/app", Digest.of(data), len(data), NOW - 7200, None,
                                   place=lambda d=Digest.of(data), b=data: blobs.put_bytes(d, b))
    finally:
        env.close()
    for argv, unit in ((["fsck"], "blob"), (["gc"], "item")):
        out, err = io.StringIO(), _Terminal()
        code = cli.main(["--data-dir", str(tmp_path), *argv], environ={}, now=lambda: NOW, stdout=out, stderr=err)
        assert code == 0, out.getvalue()
        assert "100%" in err.getvalue() and unit in err.getvalue()
    assert out.getvalue() == f"freed 3 files, {3 * 14} bytes (42 B); unlinked 0 stale links\n"
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--data-dir", str(tmp_path), "fsck"], environ={}, now=lambda: NOW, stdout=out, stderr=err) == 0
    assert err.getvalue() == "" and out.getvalue() == "checked 0 blobs and 0 manifests: clean\n"


def test_gc_says_what_the_grace_period_holds_back(capsys, tmp_path, account):
    """A new user's dry run right after a delete said "would free 0 files": the grace period kept them."""
    from izreg.core.digest import Digest
    from izreg.storage.blobs import BlobStore
    from izreg.storage.lmdbindex import Index

    env = open_env(str(tmp_path), 1 << 30)
    try:
        blobs = BlobStore(str(tmp_path))
        for data, at in ((b"old enough", NOW - 7200), (b"just deleted 1", NOW - 60), (b"just deleted 2", NOW - 10)):
            Index(env).commit_blob(f"{account}/app", Digest.of(data), len(data), at, None,
                                   place=lambda d=Digest.of(data), b=data: blobs.put_bytes(d, b))
    finally:
        env.close()
    held = "; 2 files (28 B) held back by the grace period (1h), collectable within 1h\n"
    code, out, _ = run(capsys, tmp_path, "gc", "--dry-run")
    assert (code, out) == (0, "would free 1 file, 10 bytes (10 B); would unlink 1 stale link" + held)
    code, out, _ = run(capsys, tmp_path, "gc")
    assert (code, out) == (0, "freed 1 file, 10 bytes (10 B); unlinked 0 stale links" + held)
    code, out, _ = run(capsys, tmp_path, "gc", "--grace", "15m", "--dry-run")
    assert out.endswith("; 2 files (28 B) held back by the grace period (15m), collectable within 15m\n")
    code, out, _ = run(capsys, tmp_path, "gc", "--grace", "5s")
    assert out == "freed 2 files, 28 bytes (28 B); unlinked 0 stale links\n"  # nothing held back: not mentioned


def test_fsck_after_a_crash_warns_of_orphans_and_exits_0(tmp_path):
    """
    A crash between a blob's bytes and its record (or a killed upload) leaves an orphan: no damage,
    gc reclaims it, so fsck says so and exits 0 (1 is for what needs the operator).
    """
    from izreg.core.digest import Digest
    from izreg.storage.blobs import BlobStore

    open_env(str(tmp_path), 1 << 30).close()
    orphan = Digest.of(b"left by a crash")
    BlobStore(str(tmp_path)).put_bytes(orphan, b"left by a crash")

    def fsck(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", str(tmp_path), "fsck", *argv], environ={}, now=lambda: NOW, stdout=out,
                        stderr=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = fsck()
    assert (code, err) == (0, ""), out
    assert out.splitlines() == [
        f"warning: orphan blob {orphan}: stored, but no index entry names it",
        "warning: 1 orphan blob: expected after a crash or a killed upload; gc reclaims them after the grace"
        " period, or fsck --repair re-indexes them",
        "checked 0 blobs and 0 manifests: clean, 1 orphan blob (a warning)"]
    code, out, _ = fsck("--repair")
    assert code == 0 and f"repaired: orphan blob {orphan}: indexed again" in out
    assert fsck() == (0, "checked 1 blob and 0 manifests: clean\n", "")


def test_the_config_file_and_environment_are_read_as_by_the_server(capsys, tmp_path):
    config = tmp_path / "izreg.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "from-config"}"\n[storage]\nlmdb_map_size = {1 << 30}\n')
    init(tmp_path / "from-config")  # the server's first start
    code, out, err = run(capsys, None, "--config", str(config), "account", "create")
    assert code == 0 and err == ""
    assert (tmp_path / "from-config" / "index").is_dir()
    env_dir = tmp_path / "from-env"
    code, out, err = run(capsys, None, "--config", str(config), "account", "list",
                         environ={"IZREG_DATA_DIR": str(env_dir)})
    assert code == 2 and f"no izreg data in {str(env_dir)!r}" in err
    code, out, err = run(capsys, None, "--config", str(tmp_path / "missing.toml"), "account", "list")
    assert code == 2 and err.startswith("izreg: error: cannot read config file ")
