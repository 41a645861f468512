"""
A network partition between a node and its PostgreSQL mid-call (packets
dropped, not refused): the call fails within query_timeout, not after TCP's
~15 minutes, and the pool serves again when the network is back.

It runs in a network namespace of its own (tests/helpers/partition.py), the
only way here to drop packets without touching other processes' traffic
(iptables is not installed; tc's netem module is not loaded). Needs root
(unshare -n), else skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers.postgres import postgres_available
from tests.helpers.server import REPO_ROOT

pytestmark = pytest.mark.postgres

QUERY_TIMEOUT = 3


def _namespaces() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _namespaces(), reason="no network namespaces (unshare -n needs root)")
def test_a_partition_mid_call_fails_within_query_timeout_and_the_pool_recovers():
    from tests.conftest import require_tool

    require_tool(postgres_available(), "PostgreSQL server (postgresql)")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "tests.helpers.partition", str(QUERY_TIMEOUT)],
                          cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["before"] == 1 and seen["after"] == 1, seen
    assert not seen["hung"], seen  # without query_timeout: until the network came back (53 s here)
    # the watchdog's cut or libpq's tcp_user_timeout (both query_timeout): a 503 either way
    assert seen["during"].startswith(("DatabaseNoAnswer", "DatabaseUnavailable")), seen
    assert QUERY_TIMEOUT - 0.5 <= seen["took"] < QUERY_TIMEOUT + 3, seen
