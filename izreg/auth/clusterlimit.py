# -*- test-case-name: tests.auth.test_clusterlimit -*-
"""
The failed-authentication brake of several nodes: each failure is counted
in the shared database (L{izreg.storage.cluster.FailureCounts}), so a guesser
that a round-robin balancer spreads over N nodes is braked by the sum.

The reactor never waits for the database: C{check} answers from this
node's view, which every failure recorded here refreshes with the
cluster-wide count of its brake (the write, on the database pool, returns
the brake's latest C{limit} failure times from every node). So a brake
that other nodes filled closes here at this node's next failure on it:
across N nodes at most C{limit + N - 1} failures pass a window, instead of
C{N * limit} with per-node counting. That holds for guesses sent one after
another; a burst sent to every node at once is checked against views the
other nodes' writes have not reached yet, and may pass up to C{N * limit}
(measured on two nodes, limit 10: 11 to 16 of 200 concurrent guesses).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.logger import Logger

from izreg.auth.ratelimit import FailureLimiter


class SharedFailureLimiter(FailureLimiter):
    """
    @param counts: a L{izreg.storage.cluster.FailureCounts} (blocking).
    @param run_write: runs a blocking call off the reactor (the database pool); returns a Deferred.
    """

    log = Logger()

    def __init__(self, limit: int, window: float, counts, run_write: Callable, max_addresses: int = 10000) -> None:
        super().__init__(limit, window, max_addresses)
        self.counts = counts
        self.run_write = run_write

    def record_failure(self, address, now: float) -> None:
        super().record_failure(address, now)
        brake = _brake(address)
        d = self.run_write(self.counts.record, brake, now, self.window, self.limit)
        d.addCallbacks(lambda times: self._seen(address, times),
                       lambda f: self.log.failure("counting a failed authentication in the database failed", f))

    def _seen(self, address, times: list[float]) -> None:
        """The cluster-wide failure times of C{address}'s brake: this node's view from now on."""
        if not times:
            return
        local = self._failures.get(address)
        merged = sorted(set(times) | set(local or ()))[-self.limit:]
        if local is None:
            self._failures[address] = deque(merged, maxlen=self.limit)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        else:
            local.clear()
            local.extend(merged)


def _brake(address) -> tuple[str, str]:
    """The database's (address, key id) of a brake: the authenticator's tuple, or an address alone."""
    if isinstance(address, tuple):
        return str(address[0]), str(address[1])
    return str(address), "*"
