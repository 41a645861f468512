"""
The metadata backend from the config (izreg.service.backends, [metadata]):
validation, the LMDB stores and runners, and a server that refuses a
database schema it does not know (a real twistd, a real PostgreSQL).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import pytest_twisted
from twisted.internet import defer

from izreg.service.backends import BackendError, open_backend
from izreg.service.config import Config, ConfigError, load
from tests.helpers.server import REPO_ROOT, free_port


def write(tmp_path, text: str) -> str:
    path = tmp_path / "izreg.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_lmdb(tmp_path):
    config = load(None, {})
    assert (config.metadata_backend, config.metadata_dsn, config.metadata_pool_size) == ("lmdb", None, 8)


@pytest.mark.parametrize("text, message", [
    ('[metadata]\nbackend = "mysql"\n', 'metadata.backend must be "lmdb" or "postgresql"'),
    ('[metadata]\nbackend = "postgresql"\n', "needs metadata.dsn or $IZREG_DATABASE_URL"),
    ('[metadata]\nbackend = "postgresql"\ndsn = "db.example.net"\n', "postgresql:// URL"),
    ('[metadata]\nbackend = "postgresql"\ndsn = "postgresql://x@y/z"\npool_size = 0\n', "pool_size must be at least 1"),
    ('[metadata]\ndsn = "postgresql://x@y/z"\n', 'backend is "lmdb"'),
    ('[metadata]\nquery_timeout = 5\n', "query_timeout must be 0 (no limit) or more than statement_timeout (5 s), not 5"),
])
def test_bad_metadata_config_is_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("IZREG_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), {})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_dsn_may_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IZREG_DATABASE_URL", "postgresql://izreg@db.example.net/izreg")
    config = load(write(tmp_path, '[metadata]\nbackend = "postgresql"\npool_size = 3\n'), {})
    assert (config.metadata_backend, config.metadata_pool_size) == ("postgresql", 3)
    assert "postgresql://" not in repr(config)


def test_the_dsn_is_never_in_the_repr(tmp_path):
    config = load(write(tmp_path, '[metadata]\nbackend = "postgresql"\ndsn = "postgresql://u:pw@h/d"\n'), {})
    assert "pw@" not in repr(config)


def test_lmdb_backend_reads_inline_and_writes_on_the_writer(tmp_path):
    from twisted.internet import reactor

    backend = open_backend(Config(data_dir=str(tmp_path / "data")))
    try:
        assert not backend.shared
        backend.start(reactor)
        assert backend.run_read(backend.auth.list_accounts) == []  # the value itself: no thread hop
        assert backend.index_error() is None
        assert type(backend.sweep_lock()).__name__ == "SweepLock"
        assert type(backend.failure_limiter(3, 60)).__name__ == "FailureLimiter"
    finally:
        backend.close()


def test_lmdb_without_create_needs_an_index(tmp_path):
    with pytest.raises(BackendError) as e:
        open_backend(Config(data_dir=str(tmp_path / "nothing")), create=False)
    assert "no izreg data" in str(e.value)


@pytest.mark.postgres
def test_open_refuses_an_unknown_schema(pg_dsn, tmp_path):
    config = Config(data_dir=str(tmp_path), metadata_backend="postgresql", metadata_dsn=pg_dsn)
    with pytest.raises(BackendError) as e:
        open_backend(config)
    assert "izreg db upgrade" in str(e.value)


@pytest.mark.postgres
def test_the_server_refuses_an_unknown_schema_in_one_line(pg_dsn, tmp_path):
    import os

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    config = write(tmp_path, f'[metadata]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n')
    proc = subprocess.run(
        [twistd, "-n", "--logfile=-", "--pidfile=", "izreg", "server", "--config", config, "--init",
         "--data-dir", str(tmp_path / "data"), "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("izreg:")]
    assert len(lines) == 1 and "run `izreg db upgrade` first" in lines[0], proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert pg_dsn.split("@")[0].split(":")[-1] not in proc.stdout + proc.stderr  # the password


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_database_call_waiting_too_long_for_a_thread_is_unavailable_and_never_runs():
    # while the database blocked every connection (a lock held elsewhere, a dead link), every
    # request queued behind them for as long: the node hung instead of answering 503
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool

    from izreg.service.backends import CallQueue, bounded_runner
    from izreg.storage.pg import DatabaseUnavailable

    pool = ThreadPool(1, 1, "test-db")
    pool.start()
    release, ran = threading.Event(), []
    try:
        queue = CallQueue()  # what the pool's metrics read (waiting, and given up)
        run = bounded_runner(reactor, pool, 0.2, queue)
        blocked = run(release.wait, 60)
        late = run(ran.append, "late")
        assert queue.waiting == 2 or (queue.waiting == 1 and not ran)  # the first may be on its thread already
        with pytest.raises(DatabaseUnavailable, match="no database connection free"):
            await late
        assert (queue.waiting, queue.expired) == (0, 1)
        release.set()
        assert await blocked is True
        assert await run(lambda: "next") == "next"  # the pool serves again; the expired call was skipped
        assert ran == []
        assert (queue.waiting, queue.expired) == (0, 1)
        with pytest.raises(ZeroDivisionError):  # a call's own error still comes through
            await run(lambda: 1 / 0)
    finally:
        release.set()
        pool.stop()
