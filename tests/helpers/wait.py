"""Waiting on another process's state, where no event tells the test."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str = "condition", timeout: float = 60.0) -> T:
    """Poll C{condition} (another process's state) until it is true; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(0.2)
