# -*- test-case-name: tests.auth.test_bootstrap -*-
"""
First start: one account, one key, written to ``<data dir>/bootstrap.txt``.

The file is created with mode 0600 from the start (``os.open`` with
``O_CREAT | O_EXCL`` and mode 0600 on a temporary name, then
``os.replace``), so the key is never readable by others, not even for a
moment. It is written inside the transaction that creates the account:
if writing fails, nothing is committed and the next start tries again.
"""

from __future__ import annotations

import datetime
import os

from twisted.logger import Logger

from izreg.auth.keys import AccessKey
from izreg.auth.store import Account, AuthStore
from izreg.storage.blobs import write_private

FILENAME = "bootstrap.txt"

log = Logger(namespace="izreg.auth.bootstrap")


def bootstrap(store: AuthStore, data_dir: str, now: float) -> str | None:
    """
    If there is no account yet, create one with a read-write key, write
    them to C{data_dir/bootstrap.txt} and return that path; else C{None}.

    Call it once at startup, after the LMDB environment is open. It logs
    where the file is (never its content).
    """
    path = os.path.join(data_dir, FILENAME)

    def write(account: Account, key: AccessKey) -> None:
        _write_private(path, render(account, key, now))

    account = store.create_first_account(now, name="bootstrap", key_name="bootstrap", then=write)
    if account is None:
        return None
    log.warn(
        "created account {account} and its first access key; the key is in {path} (mode 0600): "
        "save it and delete the file",
        account=account.account_id,
        path=path,
    )
    return path


def render(account: Account, key: AccessKey, now: float) -> str:
    created = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"# izreg bootstrap credentials, created {created}\n"
        "# izreg keeps only a hash of this key: save it elsewhere, then delete this file.\n"
        f"account={account.account_id}\n"
        f"key_id={key.key_id}\n"
        f"access_key={key.reveal()}\n"
        "# docker login <registry host> -u KEY --password-stdin   (paste the access_key)\n"
        f"# push to: <registry host>/{account.account_id}/<name>:<tag>\n"
    )


def _write_private(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    # the temporary file's name is this process's: another izreg starting beside it writes its own
    write_private(path, text.encode("utf-8"), os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp"))


def warn_if_left(data_dir: str) -> bool:
    """At start: say so (never what) when C{bootstrap.txt} still holds a key; C{True} if it does."""
    path = os.path.join(data_dir, FILENAME)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            holds_key = any(line.startswith("access_key=") for line in f)
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warn("cannot read {path}: {error}", path=path, error=e.strerror)
        return False
    if holds_key:
        log.warn("{path} still holds an access key: save it elsewhere (a password manager, your CI's secrets) "
                 "and delete the file", path=path)
    return holds_key
