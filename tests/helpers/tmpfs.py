"""A small tmpfs the test mounts (root only; skipped, or failed under CI=true, elsewhere)."""

from __future__ import annotations

import contextlib
import os
import subprocess

from tests.conftest import require_tool


@contextlib.contextmanager
def tmpfs(path, options: str, why: str):
    """Mount a tmpfs with C{options} (C{"size=24m"}, C{"ro,size=1m"}) on the new directory C{path}; unmount after."""
    path.mkdir()
    can_mount = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    require_tool(can_mount, f"root and mount -t tmpfs ({why})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
