# -*- test-case-name: tests.storage.test_batch -*-
"""
Small writes batched in memory, written in one transaction by a timer.

A request that must leave a trace (a device pulled a manifest, a key was
used) puts it here, a dict update with no I/O; the service's timer calls
C{flush()} on the writer thread every few seconds and at stop, so the
reactor never waits for an fsync and every LMDB write stays on that thread.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)


class LatestBatch(Generic[K]):
    """
    The latest time per key, until C{flush()} hands them to C{write} (one
    transaction; it returns how many it wrote). Thread-safe: the reactor puts
    while a worker thread flushes. If C{write} raises, the batch is kept
    (newer times win) and the error raised.
    """

    def __init__(self, write: Callable[[Mapping[K, float]], int]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: dict[K, float] = {}

    def put(self, key: K, at: float) -> None:
        with self._lock:
            if at >= self._pending.get(key, at):
                self._pending[key] = at

    def get(self, key: K) -> float | None:
        """The time waiting to be written for C{key}, if any."""
        return self._pending.get(key)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def items(self) -> list[tuple[K, float]]:
        """A snapshot of what waits to be written."""
        with self._lock:
            return list(self._pending.items())

    def flush(self) -> int:
        """Write everything put so far (blocking: call it on the writer thread)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            return self._write(batch)
        except BaseException:
            with self._lock:
                for k, at in batch.items():
                    if at > self._pending.get(k, float("-inf")):
                        self._pending[k] = at
            raise
