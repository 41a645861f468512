"""
Every store over the LMDB index is built from the handles opened with the
environment (izreg.storage.lmdbenv), never with C{env.open_db}: py-lmdb's
open_db without a transaction starts a write transaction of its own, so a
store built on the reactor while the writer thread held one used to wait
for it, forever when that writer waited on the reactor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lmdb
import pytest

from izreg.auth.store import AuthStore
from izreg.storage import schema
from izreg.storage.lmdbenv import handle, index_path, open_env

MAP = 16 * 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: run in a child process: with the old code the builder waited for the write lock holding the GIL,
#: so the whole process hung (the holder thread never got to release it): only a deadline from outside ends it
CHILD = textwrap.dedent("""
    import sys, threading
    from izreg.auth.devicestore import DeviceStore
    from izreg.auth.store import AuthStore
    from izreg.service.metrics import StorageCollector
    from izreg.storage.audit import AuditLog
    from izreg.storage.lmdbenv import open_env
    from izreg.storage.lmdbindex import Index
    from izreg.storage.webhooks import WebhookStore

    root = sys.argv[1]
    env = open_env(root, 16 * 1024 * 1024)
    holding, release = threading.Event(), threading.Event()

    def writer():
        with env.begin(write=True):
            holding.set()
            release.wait()

    held = threading.Thread(target=writer)
    held.start()
    holding.wait()
    for name, build in [("AuthStore", lambda: AuthStore(env)), ("DeviceStore", lambda: DeviceStore(env)),
                        ("AuditLog", lambda: AuditLog(env)), ("WebhookStore", lambda: WebhookStore(env, root)),
                        ("Index", lambda: Index(env)), ("StorageCollector", lambda: StorageCollector(Index(env), env))]:
        build()
        print(name, flush=True)
    release.set()
    held.join()
""")


def test_every_store_is_built_while_another_thread_holds_a_write_transaction(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
                              env=env, timeout=60)
    except subprocess.TimeoutExpired as e:
        built = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"building the stores waited for another thread's write transaction (built: {built.split()})")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AuthStore", "DeviceStore", "AuditLog", "WebhookStore", "Index", "StorageCollector"]


def test_a_database_not_opened_with_the_environment_is_a_clear_error(tmp_path):
    open_env(str(tmp_path), map_size=MAP).close()
    env = lmdb.open(index_path(str(tmp_path)), map_size=MAP, max_dbs=schema.MAX_DBS)
    try:
        with pytest.raises(LookupError, match="open_env"):
            handle(env, schema.ACCOUNTS)
    finally:
        env.close()


def test_readonly_opens_the_existing_databases(tmp_path):
    env = open_env(str(tmp_path), map_size=MAP)
    AuthStore(env).create_account(1.0, "a")
    env.close()
    env = open_env(str(tmp_path), map_size=MAP, readonly=True)
    try:
        assert [a.name for a in AuthStore(env).list_accounts()] == ["a"]
    finally:
        env.close()
