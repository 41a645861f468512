"""
Fixtures shared by every test package.

- C{docker_engine}: one real Docker engine for the session
  (L{tests.helpers.dockerd.DockerEngine}: our own dockerd with vfs on its own
  socket). Skipped where dockerd is not installed, except in CI (``CI=true``),
  where that is a failure.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.dockerd import DockerEngine, dockerd_path
from tests.helpers.s3 import moto_server, s3_bucket  # noqa: F401  (session moto server, a bucket per test)


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
from tests.helpers.postgres import pg_db, pg_dsn, postgres_server  # noqa: F401,E402  (session PostgreSQL, a database per test)
