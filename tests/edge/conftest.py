"""
Fixtures for the edge tests: a registry with a TLS listener and a device CA
(``izreg dev-certs``), the real edge process in front of it with the
gateway's device certificate, and images pushed with skopeo.

- C{stack}: module-scoped (one registry, one edge, one image), for tests
  that leave both running;
- C{make_stack}: a factory for tests that stop, restart or revoke.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

import pytest

from tests.helpers.edge import EdgeProcess, tls_registry
from tests.helpers.ocilayout import build_layout
from tests.helpers.server import RegistryProcess
from tests.helpers.skopeo import SKOPEO, Skopeo

pytestmark = pytest.mark.edge


@dataclass
class Stack:
    registry: RegistryProcess
    edge: EdgeProcess
    certs: str
    tmp: object
    upstream: str
    processes: list = field(default_factory=list)

    @property
    def account(self) -> str:
        return self.registry.account

    def repo(self, name: str = "app") -> str:
        return f"{self.account}/t{secrets.token_hex(3)}/{name}"

    def push(self, repo: str, tag: str = "v1", layers=(4096, 150_000), seed: int = 1) -> dict:
        """Build an OCI layout and push it to the registry (with the access key); return the image."""
        image = build_layout(self.tmp / f"src-{secrets.token_hex(4)}", tag=tag, layers=list(layers), seed=seed)
        Skopeo(self.registry, self.tmp).copy(f"oci:{image['path']}:{tag}", f"docker://{self.registry.host}/{repo}:{tag}")
        return image

    def new_edge(self, *extra_args: str, label: str = "edge2") -> EdgeProcess:
        (self.tmp / label).mkdir(parents=True, exist_ok=True)
        edge = EdgeProcess(str(self.tmp / label / "cache"), self.upstream, self.certs,
                           log_path=str(self.tmp / label / "edge.log"), extra_args=extra_args)
        self.processes.append(edge)
        return edge

    def close(self) -> None:
        for process in [self.edge, *self.processes, self.registry]:
            process.close()


def _make(tmp, edge_args=()) -> Stack:
    if not os.path.exists(SKOPEO):
        pytest.skip("skopeo is not installed")
    tmp.mkdir(parents=True, exist_ok=True)
    registry = RegistryProcess(data_dir=str(tmp / "registry"), log_path=str(tmp / "registry.log"))
    registry.start()
    certs = str(tmp / "certs")
    upstream = tls_registry(registry, certs)
    edge = EdgeProcess(str(tmp / "edge-cache"), upstream, certs, log_path=str(tmp / "edge.log"),
                       extra_args=edge_args)
    stack = Stack(registry, edge, certs, tmp, upstream)
    try:
        edge.start()
    except BaseException:
        stack.close()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = _make(tmp_path_factory.mktemp("edge-stack"))
    yield s
    s.close()


@pytest.fixture
def make_stack(tmp_path):
    made = []

    def make(*edge_args: str) -> Stack:
        s = _make(tmp_path / f"s{len(made)}", edge_args)
        made.append(s)
        return s

    make.stacks = made
    yield make
    for s in made:
        s.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    stacks = [v for v in funcargs.values() if isinstance(v, Stack)]
    for value in funcargs.values():
        stacks += getattr(value, "stacks", [])
    for s in stacks:
        for process in [s.edge, *s.processes, s.registry]:
            report.sections.append((f"log {process.url}", process.log_tail(80)))
