"""L{BurstTrim}: when a burst of connections has closed, the heap is trimmed once, on the I/O pool."""

from __future__ import annotations

from twisted.internet import defer

from izreg.http.limits import ConnectionLimits
from izreg.service.bursttrim import BurstTrim


class Pool:
    """An I/O pool that runs each call when the test says (what ran, and on which turn)."""

    def __init__(self) -> None:
        self.calls: list = []

    def run(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, d))
        return d

    def finish(self) -> None:
        f, d = self.calls.pop(0)
        d.callback(f())


def connections(limits: ConnectionLimits, n: int, address: str = "10.0.0.1") -> None:
    for _ in range(n):
        assert limits.admit(address) is None


def close(limits: ConnectionLimits, n: int, address: str = "10.0.0.1") -> None:
    for _ in range(n):
        limits.release(address)


def make(limits, now):
    pool = Pool()
    trimmed = []
    burst = BurstTrim(limits, pool.run, lambda: now[0], trim=lambda: trimmed.append(1) or (50 << 20, 20 << 20),
                      min_burst=100, fraction=0.25, min_interval=30)
    return burst, pool, trimmed


def test_a_closed_burst_is_trimmed_once_on_the_pool():
    limits, now = ConnectionLimits(0, 0), [1000.0]
    burst, pool, trimmed = make(limits, now)
    assert burst.check() is None  # nothing yet
    connections(limits, 1000)
    assert burst.check() is None  # the burst is open
    close(limits, 700)
    assert burst.check() is None  # 300 open: more than a quarter of 1000
    close(limits, 100)
    d = burst.check()
    assert d is not None and trimmed == []  # handed to the pool, not run here
    assert burst.check() is None  # one at a time
    pool.finish()
    assert trimmed == [1] and d.called
    now[0] += 5
    assert burst.check() is None  # the high-water mark starts again from the 200 still open
    assert limits.peak == 200


def test_at_most_once_per_interval():
    limits, now = ConnectionLimits(0, 0), [1000.0]
    burst, pool, trimmed = make(limits, now)
    connections(limits, 500)
    close(limits, 500)
    burst.check()
    pool.finish()
    connections(limits, 500)  # a second burst at once
    close(limits, 500)
    now[0] += 10
    assert burst.check() is None  # too soon
    now[0] += 21
    assert burst.check() is not None  # 31 s after the first
    pool.finish()
    assert trimmed == [1, 1]


def test_small_bursts_are_left_alone():
    limits, now = ConnectionLimits(0, 0), [1000.0]
    burst, pool, trimmed = make(limits, now)
    connections(limits, 99)
    close(limits, 99)
    assert burst.check() is None and pool.calls == []


def test_without_connection_limits_nothing_happens():
    burst, pool, _ = make(None, [0.0])
    assert burst.check() is None
