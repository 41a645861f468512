"""
Fixtures for the end-to-end suite: a real ``twistd izreg server`` process on
a free loopback port, with its own temporary data dir.

- C{registry}: module-scoped (one process per test module, the fast path);
  tests that share it use their own random account id, so they never see
  each other's repositories.
- C{fresh_registry}: function-scoped, for tests that stop, kill -9 or
  restart the process. C{any_registry}: the same once per storage backend
  (the filesystem, and S3 on a moto server: marker ``s3``).
- C{repo} / C{new_repo}: full repository names ``<32 hex account>/t<random>/<name>``
  in the account the registry's credentials reach (C{registry.creds}, read from
  izreg's bootstrap.txt after the first start).

On a test failure the tail of every server log the test used is attached to
the report ("registry log" section); the full log is ``server.log`` next to
the data dir under pytest's tmp dir.

Environment:

- ``IZREG_E2E_BACKEND=distribution`` runs the same suite against CNCF
  distribution 2.8 (``apt-get install docker-registry``) to check the tests
  themselves; izreg-only behaviour is skipped there.
- ``IZREG_E2E_START_TIMEOUT`` (seconds, default 30): how long to wait for the
  "starting on" line.

Run: ``python -m pytest tests/e2e -q`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.helpers.ociclient import OCIClient
from tests.helpers.server import BACKEND, RegistryProcess, running
from tests.helpers.skopeo import SKOPEO, Skopeo


def _make_registry(tmp_path_factory, label: str) -> RegistryProcess:
    base = tmp_path_factory.mktemp(f"izreg-{label}")
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"))
    return reg


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One running registry for the whole test module."""
    with running(_make_registry(tmp_path_factory, "module")) as reg:
        yield reg


@pytest.fixture
def fresh_registry(tmp_path_factory):
    """A registry of its own for one test (stop/kill9/restart are fine)."""
    with running(_make_registry(tmp_path_factory, "fn")) as reg:
        yield reg


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def any_registry(request, tmp_path_factory):
    """Like C{fresh_registry}, once per storage backend: blobs on disk, or in a bucket of a moto S3 server."""
    if request.param == "filesystem":
        yield request.getfixturevalue("fresh_registry")
        return
    from tests.helpers.s3 import s3_registry

    if BACKEND != "izreg":
        pytest.skip("izreg's S3 backend")
    with running(s3_registry(tmp_path_factory, request.getfixturevalue("moto_server"), "s3-fn")) as registry:
        yield registry


@pytest.fixture
def start_registry(tmp_path_factory):
    """A factory for registries with extra server options: C{start_registry("--token-service")}."""
    started = []

    def start(*extra_args: str) -> RegistryProcess:
        reg = _make_registry(tmp_path_factory, "custom")
        reg.extra_args = list(extra_args)
        started.append(reg)
        reg.start()
        return reg

    start.registries = started
    yield start
    for reg in started:
        reg.close()


@pytest.fixture
def oras_guard(monkeypatch, tmp_path):
    """
    For tests that drive oras-py: no ~/.docker/config.json (DOCKER_CONFIG points at
    an empty dir), and its retry decorator fails at once instead of sleeping
    2 + 3**n seconds after an error (which would hide a server error behind minutes).
    """
    import types

    pytest.importorskip("oras.client")  # first: oras.decorator imported alone hits oras-py's circular import
    oras_decorator = pytest.importorskip("oras.decorator")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))

    def no_sleep(seconds):
        raise AssertionError(f"oras hit an error and would retry after {seconds} s (see the log above)")

    monkeypatch.setattr(oras_decorator, "time", types.SimpleNamespace(sleep=no_sleep))


@pytest.fixture
def izreg_only(registry):
    """Skip under IZREG_E2E_BACKEND=distribution (behaviour distribution 2.8 lacks)."""
    if registry.backend != "izreg":
        pytest.skip(f"izreg-specific behaviour (backend {registry.backend})")


@pytest.fixture
def account(registry) -> str:
    """The account the registry's credentials reach (izreg: the bootstrap account)."""
    return registry.account


@pytest.fixture
def new_repo(account):
    """
    A factory: C{new_repo("app")} -> ``<account>/t<random>/app``. The random path
    component keeps tests that share one registry (and one account) apart.
    """
    namespace = "t" + secrets.token_hex(4)
    return lambda name="app": f"{account}/{namespace}/{name}"


@pytest.fixture
def repo(new_repo) -> str:
    return new_repo("app")


@pytest.fixture
def client(registry) -> OCIClient:
    return OCIClient(registry.url, auth=registry.requests_auth)


@pytest.fixture
def skopeo(registry, tmp_path) -> Skopeo:
    if not os.path.exists(SKOPEO):
        pytest.skip("skopeo is not installed (apt-get install -y skopeo)")
    tmp = tmp_path / "skopeo-tmp"
    tmp.mkdir()
    return Skopeo(registry, tmp)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    for name, value in funcargs.items():
        for reg in [value] if isinstance(value, RegistryProcess) else getattr(value, "registries", []):
            report.sections.append((f"registry log ({name}, {reg.url})", reg.log_tail(150)))

