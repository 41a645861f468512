"""
Fixtures shared by every test package.

Markers (pyproject.toml): every test of tests/e2e and tests/edge is marked
C{e2e} here (it starts the real twistd izreg); a test that needs nothing
outside this process (no twistd, no client program, no moto, PostgreSQL,
dockerd, chromium or haproxy) is marked C{fast}: ``python -m pytest`` with no
path, C{-m} or C{-k} runs only those, the quick loop of development;
``python -m pytest tests`` runs every test (README.rst, L{quick_loop}).

Temporary directories (C{tmp_path}, C{tmp_path_factory}, C{tempfile}) live
in RAM (/dev/shm) when it is a tmpfs with room and exec allowed, else in the
usual place; C{IZREG_TEST_TMPDIR} names another. The same code runs either way
(every fsync is still made, it just does not wait for a disk): the tests check
izreg's order of writes and renames, and a process killed with SIGKILL loses
nothing the page cache holds; no test pulls the power. On a loaded disk an
fsync takes tens of milliseconds, and the route tests make thousands.
A passing test's directory is removed (pyproject.toml:
C{tmp_path_retention_policy = "failed"}), a failing one's is kept.

- C{docker_engine}: one real Docker engine for the session
  (L{tests.helpers.dockerd.DockerEngine}: our own dockerd with vfs on its own
  socket). Skipped where dockerd is not installed, except in CI (``CI=true``),
  where that is a failure.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.helpers.dockerd import DockerEngine, dockerd_path
from tests.helpers.s3 import moto_proxy, moto_server, s3_bucket  # noqa: F401  (session moto server, a bucket per test)


#: the room a RAM temp dir needs: a whole run holds about 1.5 GB at once (the edge stack's images)
RAM_TMP_ROOM = 6 << 30


def _ram_tmpdir() -> str | None:
    """/dev/shm when it has room and allows exec (a container's is often 64 MB, noexec)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < RAM_TMP_ROOM or st.f_flag & os.ST_NOEXEC or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm"


# set before pytest makes its base temp dir (on the first use of tmp_path), in this process only
tempfile.tempdir = os.environ.get("IZREG_TEST_TMPDIR") or _ram_tmpdir() or tempfile.gettempdir()


#: the markers of tests that start a process or need a server outside the test process
EXTERNAL = ("e2e", "docker", "browser", "conformance", "s3", "edge", "postgres", "cluster")
_E2E_DIRS = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), d) + os.sep for d in ("e2e", "edge"))


def quick_loop(config) -> bool:
    """
    C{python -m pytest} with no path, no C{-m} and no C{-k}: the quick loop of
    development, the tests marked C{fast} only. C{python -m pytest tests} (README's
    test command, .ci/run) or any path, C{-m} or C{-k} selects as usual.
    """
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not config.option.markexpr and not config.option.keyword)


def pytest_report_header(config):
    if quick_loop(config):
        return ["izreg: the quick loop, tests marked fast only; `python -m pytest tests` runs every test"]
    return None


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(_E2E_DIRS):
            item.add_marker(pytest.mark.e2e)
        if not any(item.get_closest_marker(name) for name in EXTERNAL):
            item.add_marker(pytest.mark.fast)
    if quick_loop(config):
        kept = [item for item in items if item.get_closest_marker("fast")]
        if len(kept) < len(items):
            config.hook.pytest_deselected(items=[item for item in items if not item.get_closest_marker("fast")])
            items[:] = kept


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(present: bool, what: str) -> None:
    """Skip when C{what} is missing, but fail in CI (the README's test command installs it)."""
    if present:
        return
    if in_ci():
        pytest.fail(f"{what} is missing in CI (see the apt-get line of README.rst)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory):
    require_tool(dockerd_path() is not None and os.path.exists("/usr/bin/docker"), "dockerd (docker.io)")
    engine = DockerEngine(tmp_path_factory.mktemp("dockerd"))
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
from tests.helpers.postgres import pg_db, pg_dsn, pg_schema_dsn, postgres_server  # noqa: F401,E402  (session PostgreSQL, a database per test)
