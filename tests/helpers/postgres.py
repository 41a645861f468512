"""
A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries,
a cluster made by ``initdb`` in a temp dir, listening on a free loopback port,
started once per test session (fixture C{postgres_server}). Each test gets a
database of its own (C{pg_dsn}: empty; C{pg_schema_dsn}: at the current
schema, a copy of a template database migrated once per session; C{pg_db}:
that one as a L{izreg.storage.pg.Database}).

PostgreSQL refuses to run as root; when the tests run as root (CI does) the
cluster belongs to the ``postgres`` user (made by the Debian package) or to
``nobody``, and its directory is theirs.

Durability is off in this throw-away cluster (fsync, synchronous_commit):
the tests check izreg's transactions, not the disk under PostgreSQL.
A test's database is dropped after it, and the WAL is kept small: the
cluster stays around a hundred MB (a database per test left in place made
it 3.5 GB by the end of a run, in RAM when the temp dir is a tmpfs). A
database at the current schema is emptied and used again instead, when the
test left its schema as it was: what is still connected to it is cut off,
every table but izreg_schema truncated (sequences restarted), as new.

Tests that use these fixtures carry the ``postgres`` marker. Without the
binaries they skip, unless CI is set (then they fail).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
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
                        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
                        " -c max_wal_size=64MB -c min_wal_size=32MB",
                  "start")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")

    def pids(self) -> list[int]:
        """The server's processes: the postmaster, then its children (backends, checkpointer, ...)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # the field after the state: the parent
                children.append(int(entry))
        return [postmaster, *children]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of C{template}; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.dsn(name)

    _schema_template: str | None = None
    _schema_shape: tuple | None = None
    _clean: list[str] = []

    def create_migrated_database(self) -> str:
        """
        A new database at the current schema: a copy of a template migrated
        on the first call (copying is as quick as making an empty one; the
        migrations took as long again, on every test).
        """
        from psycopg.conninfo import conninfo_to_dict

        from izreg.storage.pg import Database

        if self._schema_template is None:
            dsn = self.create_database()
            db = Database(dsn, max_size=1)
            try:
                db.upgrade()
            finally:
                db.close()  # a template may have no connections while it is copied
            self._schema_template = conninfo_to_dict(dsn)["dbname"]
            self._schema_shape = self._shape(dsn)
            self._clean = []
        if self._clean:
            return self.dsn(self._clean.pop())
        return self.create_database(template=self._schema_template)

    @staticmethod
    def _shape(dsn: str, conn=None) -> tuple:
        """What a schema is made of (relations, functions, types, applied migrations): equal means the same schema."""
        import psycopg

        def read(conn):
            def rows(sql):
                return tuple(sorted(conn.execute(sql).fetchall()))
            user = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            return (rows(f"SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                         f" WHERE {user}"),
                    rows(f"SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {user}"),
                    rows(f"SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {user}"),
                    rows("SELECT version, name FROM izreg_schema"))
        if conn is not None:
            return read(conn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            return read(conn)

    def release_migrated_database(self, dsn: str) -> None:
        """Empty a test's database at the current schema for the next test; drop it if its schema changed."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            try:
                same = self._shape(dsn, conn) == self._schema_shape
            except psycopg.Error:  # izreg_schema dropped, ...
                same = False
            if same:
                tables = [t for (t,) in conn.execute("SELECT quote_ident(tablename) FROM pg_tables"
                                                      " WHERE schemaname = 'public' AND tablename <> 'izreg_schema'")]
                conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        if same:
            self._clean.append(name)
        else:
            self.drop_database(dsn)

    def drop_database(self, dsn: str) -> None:
        """Drop the database of C{dsn} (a test's), closing what is still connected to it."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def frozen(pids):
    """The processes C{pids} stopped (SIGSTOP: their kernel still acknowledges their TCP traffic), continued after."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


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
    """The DSN of a new, empty database of the session's server (dropped after the test)."""
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn)


@pytest.fixture
def pg_schema_dsn(postgres_server) -> str:
    """The DSN of a new database of the session's server at the current schema (dropped after the test)."""
    dsn = postgres_server.create_migrated_database()
    yield dsn
    postgres_server.release_migrated_database(dsn)


@pytest.fixture
def pg_db(pg_schema_dsn):
    """A L{izreg.storage.pg.Database} on a new database, upgraded to the current schema."""
    from izreg.storage.pg import Database

    db = Database(pg_schema_dsn, max_size=4)
    db.upgrade()
    try:
        yield db
    finally:
        db.close()
