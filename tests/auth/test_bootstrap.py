# -*- test-case-name: tests.auth.test_bootstrap -*-
from __future__ import annotations

import os
import stat

import pytest

from izreg.auth import keys
from izreg.auth.bootstrap import bootstrap, warn_if_left


def read_fields(path):
    fields = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("#") and "=" in line:
                k, v = line.strip().split("=", 1)
                fields[k] = v
    return fields


def test_first_start_writes_a_private_file(store, tmp_path):
    old = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        path = bootstrap(store, str(tmp_path), now=1000.0)
    finally:
        os.umask(old)
    assert path == str(tmp_path / "bootstrap.txt")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    fields = read_fields(path)
    key = keys.parse(fields["access_key"])
    record = store.get_key(key.key_id)
    assert record is not None and keys.verify(key, record.secret_hash)
    assert record.account == fields["account"] and fields["key_id"] == key.key_id
    assert [a.account_id for a in store.list_accounts()] == [fields["account"]]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_second_start_does_nothing(store, tmp_path):
    first = bootstrap(store, str(tmp_path), now=1000.0)
    content = open(first).read()
    assert bootstrap(store, str(tmp_path), now=2000.0) is None
    assert open(first).read() == content


def test_existing_accounts_mean_no_bootstrap(store, tmp_path):
    store.create_account(1.0)
    assert bootstrap(store, str(tmp_path), now=1000.0) is None
    assert not (tmp_path / "bootstrap.txt").exists()


def test_unwritable_directory_commits_nothing(store, tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(OSError):
        bootstrap(store, str(missing), now=1000.0)
    assert store.list_accounts() == []


def test_a_start_warns_while_the_file_holds_a_key(store, tmp_path):
    from twisted.logger import globalLogPublisher

    path = bootstrap(store, str(tmp_path), now=1000.0)
    secret = read_fields(path)["access_key"]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert warn_if_left(str(tmp_path)) is True
        with open(path, "w") as f:
            f.write("# moved to the vault\n")
        assert warn_if_left(str(tmp_path)) is False
        os.unlink(path)
        assert warn_if_left(str(tmp_path)) is False
    finally:
        globalLogPublisher.removeObserver(events)
    from twisted.logger import formatEvent

    warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "izreg.auth.bootstrap"]
    assert len(warnings) == 1 and "still holds an access key" in warnings[0] and secret not in warnings[0]
