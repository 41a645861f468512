"""
One real izreg node over a real PostgreSQL (blobs on its disk): how it
behaves when the database is slow, locked or gone, and what it says at
start-up (the hardening of #16).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import stat
import subprocess
import sys
import time

import psycopg
import pytest
import requests

from tests.helpers.largemanifest import padded_manifest
from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.ocilayout import random_bytes
from tests.helpers.postgres import frozen
from tests.helpers.server import REPO_ROOT, RegistryProcess, free_port
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


#: the nodes' [metadata] query_timeout: a call on a frozen or cut-off database is a 503 after that
QUERY_TIMEOUT = 4


def node_config(path, dsn: str) -> str:
    with open(path, "w") as f:
        f.write(f'[metadata]\nbackend = "postgresql"\ndsn = "{dsn}"\npool_size = 4\n'
                f"statement_timeout = 2\nlock_timeout = 1\nquery_timeout = {QUERY_TIMEOUT}\n")
    return str(path)


@pytest.fixture(scope="module")
def node(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("pgnode")
    dsn = postgres_server.create_migrated_database()
    registry = RegistryProcess(data_dir=str(base / "data"), config=node_config(base / "izreg.toml", dsn))
    registry.dsn = dsn
    registry.start()
    yield registry
    registry.close()
    postgres_server.drop_database(dsn)


def test_the_start_up_line_says_what_is_open_and_no_password(node):
    line = next(line for line in node.log_lines if "storage open" in line)
    database = node.dsn.rsplit("/", 1)[1]
    assert f"blobs on the file system in {node.data_dir}" in line
    assert f"metadata in PostgreSQL izreg@127.0.0.1:{node.dsn.rsplit(':', 1)[1].split('/')[0]}/{database}" in line
    password = node.dsn.split("@")[0].split(":")[-1]
    assert password not in node.log_text()


def test_a_locked_table_is_a_503_with_retry_after_not_a_hung_node(node):
    # LOCK TABLE in psql + concurrent catalog requests: every thread waited as long as the lock was held
    holder = psycopg.connect(node.dsn)
    try:
        holder.execute("LOCK TABLE repos IN ACCESS EXCLUSIVE MODE")

        def catalog(_):
            return requests.get(f"{node.url}/v2/_catalog", auth=node.requests_auth, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(catalog, range(8)))
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After")
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert r.json()["errors"][0]["detail"] == {"reason": "database call timed out"}
    finally:
        holder.close()
    assert requests.get(f"{node.url}/v2/_catalog", auth=node.requests_auth, timeout=60).status_code == 200


@contextlib.contextmanager
def database_gone(node):
    """The node's database refuses connections and its open ones are cut; back (and the node ready) after."""
    name = node.dsn.rsplit("/", 1)[1]
    admin = psycopg.connect(node.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        deadline = time.monotonic() + 60
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone():
            assert time.monotonic() < deadline, "the node's connections did not end"
            time.sleep(0.05)  # another process: poll with a deadline
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
    deadline = time.monotonic() + 60
    while requests.get(f"{node.url}/readyz", timeout=60).status_code != 200:  # the pool reconnects by itself
        assert time.monotonic() < deadline, "not ready again after the database came back"
        time.sleep(0.2)


def test_readyz_says_not_ready_quickly_while_the_database_is_down(node):
    # /readyz waited for a pool connection (10 s) while the database was down: longer than a health check
    with database_gone(node):
        for _ in range(6):  # more than pool_size: the broken connections fail at once, then the wait
            started = time.monotonic()
            r = requests.get(f"{node.url}/readyz", timeout=60)
            assert r.status_code == 503 and not r.json()["checks"]["index"]["ok"], r.text
            assert time.monotonic() - started < 7.0  # it was 10 s and more; READY_WAIT is 2 s


def test_a_timer_task_failing_while_the_database_is_down_is_one_line(node):
    # the batched "last used" stamps of keys (every 5 s) logged a critical traceback at every try
    key = node.cli("key", "create", node.account).strip()
    assert requests.get(f"{node.url}/v2/", auth=("KEY", key), timeout=60).status_code == 200  # a stamp to write
    mark = node.log_mark()
    with database_gone(node):
        line = node.wait_for_log("recording when keys were last used failed", mark, timeout=60)
        assert "#warn]" in line and "DatabaseUnavailable" in line, line
        logged = "\n".join(list(node.log_lines)[-(node.lines_logged - mark):])
        assert "Traceback" not in logged, logged[-3000:]


@pytest.mark.parametrize("key", [None, "another"])
def test_a_node_without_the_nodes_webhook_key_refuses_to_start(tmp_path, pg_schema_dsn, key):
    # it made a key of its own, and opened no token key or webhook secret another node had sealed
    from cryptography.fernet import Fernet

    from izreg.auth.pgstore import PgTokenKey
    from izreg.storage.pg import Database

    pg_dsn = pg_schema_dsn
    first = tmp_path / "first"
    first.mkdir()
    (first / "webhook.key").write_bytes(Fernet.generate_key())
    db = Database(pg_dsn, max_size=1)
    try:
        PgTokenKey(db, str(first)).rotate()  # the first node sealed something
    finally:
        db.close()
    data = tmp_path / "data"
    data.mkdir()
    if key:
        (data / "webhook.key").write_bytes(Fernet.generate_key())
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.run(
        [twistd, "-n", "--logfile=-", "--pidfile=", "izreg", "server", "--config",
         node_config(tmp_path / "izreg.toml", pg_dsn), "--data-dir", str(data),
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("izreg:")]
    assert len(lines) == 1 and "webhook.key" in lines[0] and "copy" in lines[0], proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (data / "webhook.key").exists() or key


def test_a_first_node_started_with_init_makes_its_data_dir(tmp_path, pg_schema_dsn):
    # --init on a data dir that did not exist: a FileNotFoundError traceback, webhook.key written
    # into it before startService made the directory
    data = tmp_path / "data"
    registry = RegistryProcess(data_dir=str(data), config=node_config(tmp_path / "izreg.toml", pg_schema_dsn),
                               extra_args=["--init"], create_data_dir=False)
    try:
        registry.start()
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(data / "webhook.key").st_mode) == 0o600
        assert requests.get(f"{registry.url}/v2/", auth=registry.requests_auth, timeout=60).status_code == 200
        assert "Traceback" not in registry.log_text()
    finally:
        registry.close()


def _pushed(node, repo: str, tag: str) -> tuple[OCIClient, bytes]:
    client = OCIClient(node.url, auth=node.requests_auth)
    config = random_bytes(300, repo + tag)
    expect(client.push_blob_monolithic(repo, config), 201)
    manifest = padded_manifest(config, 600, tag=tag)
    expect(client.put_manifest(repo, tag, manifest), 201)
    return client, manifest


def _no_answer(call) -> None:
    """C{call()} answers 503 UNAVAILABLE with Retry-After, after query_timeout and well before TCP gives up."""
    started = time.monotonic()
    r = call()
    took = time.monotonic() - started
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers.get("Retry-After") and r.json()["errors"][0]["code"] == "UNAVAILABLE", r.text
    assert took < 2 * QUERY_TIMEOUT + 2, took  # it hung until the freeze ended (minutes)


def test_a_frozen_backend_is_a_503_within_query_timeout_and_new_connections_serve(node):
    # a backend stopped mid-call (SIGSTOP: its kernel still acknowledges, so neither keepalives nor
    # tcp_user_timeout end the connection) held the request, and the thread, as long as it stayed stopped
    repo = f"{node.account}/frozen-backend"
    client, manifest = _pushed(node, repo, "v1")
    name = node.dsn.rsplit("/", 1)[1]
    with psycopg.connect(node.dsn, autocommit=True) as admin:
        backends = [pid for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'izreg'", (name,))]
        assert backends
        with frozen(backends):
            _no_answer(lambda: client.get_manifest(repo, "v1"))
            # the cut connections are closed, not pooled again: new ones serve while the old stay stopped
            wait_until(lambda: client.get_manifest(repo, "v1").status_code == 200,
                       what="served by new connections", timeout=8 * QUERY_TIMEOUT)
            assert expect(client.get_manifest(repo, "v1"), 200).content == manifest


def test_a_frozen_server_is_a_503_within_query_timeout_and_serves_when_it_resumes(node, postgres_server):
    # the whole server stopped (a hung database host): manifest GETs and pushes answered 503 in time,
    # nothing half-written, and the node serves again when the server resumes
    repo = f"{node.account}/frozen-server"
    client, manifest = _pushed(node, repo, "v1")
    config = random_bytes(300, "during")
    expect(client.push_blob_monolithic(repo, config), 201)  # blobs on disk; the manifest's record in the database
    during = padded_manifest(config, 600, tag="v2")
    with frozen(postgres_server.pids()):
        _no_answer(lambda: client.get_manifest(repo, "v1"))
        _no_answer(lambda: client.put_manifest(repo, "v2", during))
        _no_answer(lambda: client.get_manifest(repo, "v1"))  # not one connection is back in the pool
    wait_until(lambda: client.get_manifest(repo, "v1").status_code == 200, what="serving after the freeze",
               timeout=60)
    assert expect(client.get_manifest(repo, "v1"), 200).content == manifest
    # the push told 503 either never reached the database or committed whole: its tag and its manifest
    tagged = expect(client.get_manifest(repo, "v2"), 200, 404)
    if tagged.status_code == 200:
        assert tagged.content == during
    expect(client.put_manifest(repo, "v2", during), 201)  # a retry succeeds
    assert expect(client.get_manifest(repo, "v2"), 200).content == during
