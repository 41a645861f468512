"""
The OCI distribution-spec conformance suites (``../shared/conformance``,
prebuilt: ``head`` and the released ``v1.1.1``), run against any registry:

    result = run_conformance("http://127.0.0.1:5000", f"{account}/conformance/repo1",
                             "KEY", access_key, suite="v1.1.1")
    assert result.failed == 0, result.summary()

The suites' directory is ``$IZREG_CONFORMANCE_DIR``, else ``shared/conformance``
beside the repository (or beside the main checkout of a worktree).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from tests.helpers.server import REPO_ROOT

SUITES = ("head", "v1.1.1")
BINARIES = {"head": "oci-conformance-head", "v1.1.1": "oci-conformance-v1.1.1"}
_SUMMARY = re.compile(r"(\d+) passed, (\d+) failed, (\d+) skipped")


def conformance_dir() -> str | None:
    """Where run.sh and bin/ are, or C{None}."""
    candidates = [os.environ.get("IZREG_CONFORMANCE_DIR"),
                  os.path.join(os.path.dirname(REPO_ROOT), "shared", "conformance"),
                  os.path.join(os.path.dirname(os.path.dirname(REPO_ROOT)), "shared", "conformance")]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "run.sh")):
            return candidate
    return None


def suite_available(suite: str) -> bool:
    base = conformance_dir()
    return base is not None and os.access(os.path.join(base, "bin", BINARIES[suite]), os.X_OK)


@dataclass
class ConformanceResult:
    suite: str
    passed: int
    failed: int
    skipped: int
    output: str
    results_dir: str
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = "\n  ".join(self.failures[:50])
        return (f"conformance {self.suite}: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"
                f" (report: {self.results_dir}/report.html)\n  {names}\n--- output tail ---\n{self.output[-4000:]}")


def run_conformance(url: str, namespace: str, username: str = "", password: str = "", suite: str = "head",
                    results_dir: str | None = None, timeout: float = 900) -> ConformanceResult:
    """Run one suite against C{url} (repository C{namespace}, and C{namespace}-crossmount)."""
    base = conformance_dir()
    if base is None:
        raise FileNotFoundError("the OCI conformance suites are not found (set IZREG_CONFORMANCE_DIR)")
    results_dir = results_dir or tempfile.mkdtemp(prefix=f"conformance-{suite}-")
    env = dict(os.environ, CONFORMANCE_SUITE=suite)
    proc = subprocess.run(["bash", os.path.join(base, "run.sh"), url, namespace, username, password, results_dir],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"the conformance suite {suite} could not run (exit {proc.returncode}):\n{output[-4000:]}")
    matches = _SUMMARY.findall(output)
    if not matches:
        raise RuntimeError(f"no summary line from the conformance suite {suite}:\n{output[-4000:]}")
    passed, failed, skipped = (int(n) for n in matches[-1])
    return ConformanceResult(suite, passed, failed, skipped, output, results_dir, _failures(results_dir))


def _failures(results_dir: str) -> list[str]:
    try:
        tree = ET.parse(os.path.join(results_dir, "junit.xml"))
    except (OSError, ET.ParseError):
        return []
    return [f"{case.get('classname', '')} {case.get('name', '')}".strip()
            for case in tree.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None]
