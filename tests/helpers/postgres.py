"""
A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries,
a cluster made by ``initdb`` in a temp dir, listening on a free loopback port,
started once per test session (fixture C{postgres_server}). Each test gets a
database of its own (C{pg_dsn}: empty; C{pg_db}: migrated to the current
schema, as a L{izreg.storage.pg.Database}).

PostgreSQL refuses to run as root; when the tests run as root (CI does) the
cluster belongs to the ``postgres`` user (made by the Debian package) or to
``nobody``, and its directory is theirs.

Durability is off in this throw-away cluster (fsync, synchronous_commit):
the tests check izreg's transactions, not the disk under PostgreSQL.

Tests that use these fixtures carry the ``postgres`` marker. Without the
binaries they skip, unless CI is set (then they fail).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.helpers.server import free_port

START_TIMEOUT = 60.0


def pg_bin(tool: str) -> str | None:
    """The path of a PostgreSQL server tool (initdb, pg_ctl, postgres), newest version first."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(os.path.join(d, tool)):
            return os.path.join(d, tool)
    return shutil.which(tool)


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise AssertionError("running as root with neither a postgres nor a nobody user")


class PostgresServer:
    def __init__(self, base_dir: str) -> None:
        self.base = str(base_dir)
        self.data = os.path.join(self.base, "data")
        self.sockets = os.path.join(self.base, "run")
        self.log_path = os.path.join(self.base, "postgres.log")
        self.port = free_port()
        self.user = "izreg"
        self.password = "izreg-test-" + uuid.uuid4().hex[:8]
        self._ids = _run_as()

    def _as_owner(self):
        ids = self._ids
        if ids is None:
            return None

        def demote():
            os.setgid(ids[1])
            os.setuid(ids[0])
        return demote

    def _run(self, *args: str) -> None:
        r = subprocess.run(list(args), preexec_fn=self._as_owner(), capture_output=True, text=True,
                           cwd=self.base, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def start(self) -> None:
        os.makedirs(self.sockets, exist_ok=True)
        pwfile = os.path.join(self.base, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password)
        if self._ids is not None:
            for path in (self.base, self.sockets, pwfile):
                os.chown(path, *self._ids)
        self._run(pg_bin("initdb"), "-D", self.data, "-U", self.user, "--pwfile", pwfile, "-A", "scram-sha-256",
                  "-E", "UTF8", "--locale", "C", "--no-sync")
        os.unlink(pwfile)
        self._run(pg_bin("pg_ctl"), "-D", self.data, "-l", self.log_path, "-w", "-t", str(int(START_TIMEOUT)),
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.sockets}"
                        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                  "start")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def postgres_available() -> bool:
    return pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None


@pytest.fixture(scope="session")
def postgres_server():
    from tests.conftest import require_tool

    require_tool(postgres_available(), "PostgreSQL server (postgresql)")
    # not under tmp_path_factory: pytest's base dir is 0700 root, closed to the postgres user
    base = tempfile.mkdtemp(prefix="izreg-pg-")
    os.chmod(base, 0o755)
    server = PostgresServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres_server) -> str:
    """The DSN of a new, empty database of the session's server."""
    return postgres_server.create_database()


@pytest.fixture
def pg_db(pg_dsn):
    """A L{izreg.storage.pg.Database} on a new database, upgraded to the current schema."""
    from izreg.storage.pg import Database

    db = Database(pg_dsn, max_size=4)
    db.upgrade()
    try:
        yield db
    finally:
        db.close()
