# -*- test-case-name: tests.service.test_bursttrim -*-
"""
The heap handed back after a burst of connections (L{BurstTrim}).

A burst of connections (a fleet of devices reconnecting, a CI fan-out) leaves
the memory of their transports, TLS state, channels and buffers free inside
glibc's heaps once they close, and the process's RSS stays at the burst's
high-water mark: C{malloc_trim} (L{izreg.service.heap.trim}) otherwise runs
only after a garbage-collection sweep. Here a timer looks, every few seconds,
at the open-connection count and its high-water mark since the last trim
(L{izreg.http.limits.ConnectionLimits}): when at least C{min_burst}
connections were open and the count has since fallen to a quarter of that,
it trims, on the I/O pool (the trim walks every heap and takes milliseconds),
at most once per C{min_interval} seconds.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from izreg.service.heap import trim

log = Logger()

#: connections open at once that make a burst worth trimming after
MIN_BURST = 100
#: the count has fallen to this fraction of the burst's high-water mark
FRACTION = 0.25
#: seconds between two trims at least
MIN_INTERVAL = 30.0
#: seconds between two looks at the counts (the server's timer)
CHECK_INTERVAL = 5.0


class BurstTrim:
    """
    @param limits: the site's L{izreg.http.limits.ConnectionLimits} (C{total}, C{peak}).
    @param run_io: C{run_io(f) -> Deferred}: C{f} on the I/O pool.
    @param clock: C{() -> seconds}.
    @param trim: what gives the heap back: C{() -> (before, after) or None} (L{izreg.service.heap.trim}).
    """

    def __init__(self, limits, run_io: Callable, clock: Callable[[], float], trim: Callable = trim,
                 min_burst: int = MIN_BURST, fraction: float = FRACTION, min_interval: float = MIN_INTERVAL) -> None:
        self.limits = limits
        self.run_io = run_io
        self.clock = clock
        self.trim = trim
        self.min_burst = min_burst
        self.fraction = fraction
        self.min_interval = min_interval
        self.trims = 0
        self._last: float | None = None
        self._running = False

    def check(self):
        """Timer task: trim if a burst has passed (a Deferred while it runs), else C{None}."""
        limits = self.limits
        if limits is None or self._running:
            return None
        peak, open_now = limits.peak, limits.total
        if peak < self.min_burst or open_now > peak * self.fraction:
            return None
        now = self.clock()
        if self._last is not None and now - self._last < self.min_interval:
            return None
        self._last, self._running = now, True
        limits.peak = open_now  # the next burst is measured from here
        self.trims += 1
        d = self.run_io(self.trim)
        d.addCallback(self._trimmed, peak, open_now)
        d.addErrback(lambda f: log.failure("trimming the heap after a burst of connections failed", f))
        d.addBoth(self._done)
        return d

    def _trimmed(self, sizes, peak: int, open_now: int) -> None:
        if sizes is not None and sizes[0] - sizes[1] >= 1 << 20:
            log.info("heap: malloc_trim after a burst of {peak} connections ({open_now} open now) gave back"
                     " {mib:.1f} MiB ({before:.1f} -> {after:.1f} MiB anonymous)", peak=peak, open_now=open_now,
                     mib=(sizes[0] - sizes[1]) / 2**20, before=sizes[0] / 2**20, after=sizes[1] / 2**20)

    def _done(self, result):
        self._running = False
        return None
