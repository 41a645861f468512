# -*- test-case-name: tests.http.test_refusals -*-
"""
Warnings an attacker may cause at any rate, aggregated: L{RefusalLog}.

A refused device certificate is one warning line (at the TLS handshake,
L{izreg.service.tls.context}; at the HTTP layer, L{izreg.http.guard}), and a
client may present refused certificates as fast as it can connect. Per
reason, the first C{burst} (5) refusals of each C{window} (60 s) are logged
in full; the others are counted, and one line says how many when the window
ends ("12 more refused ... in the last 60 s"). L{RefusalLog.total} counts
every refusal (the metrics read it: C{izreg_device_certificates_refused}).
Each is owned by what refuses: the TLS listener's
L{izreg.service.tls.ServerTLS} and the HTTP layer's L{izreg.http.guard.AccessGuard}
(so two servers in one process, or two tests, never share a window).
"""

from __future__ import annotations

#: distinct reasons tracked at once; past this, they share one window (reasons are a small fixed set anyway)
MAX_REASONS = 64
OTHER = "(other reasons)"


class RefusalLog:
    """
    A L{twisted.logger.Logger}'s C{warn}, with each reason's lines limited
    to C{burst} per C{window} seconds and a count of the rest.

    @param what: what is refused, for the summary line ("TLS client certificates").
    @param clock: an C{IReactorTime} (the reactor when C{None}); call L{warn} on its thread.
    """

    def __init__(self, logger, what: str, burst: int = 5, window: float = 60.0, clock=None) -> None:
        self.logger = logger
        self.what = what
        self.burst = burst
        self.window = window
        self._clock = clock
        #: every refusal, logged in full or not
        self.total = 0
        self._windows: dict[str, list] = {}  # reason -> [start, logged, left out]
        self._flush_call = None

    @property
    def clock(self):
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def warn(self, format: str, **fields) -> None:
        """C{logger.warn(format, **fields)} unless this reason (C{fields["reason"]}) is over its burst."""
        self.total += 1
        now = self.clock.seconds()
        reason = str(fields.get("reason", ""))
        if reason not in self._windows and len(self._windows) >= MAX_REASONS:
            reason = OTHER
        window = self._windows.get(reason)
        if window is not None and now - window[0] >= self.window:
            self._summarize(reason, window, now)
            window = None
        if window is None:
            window = self._windows[reason] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            self.logger.warn(format, **fields)
            return
        window[2] += 1
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(max(0.0, window[0] + self.window - now), self._flush)

    def _summarize(self, reason: str, window: list, now: float) -> None:
        del self._windows[reason]
        if window[2]:
            self.logger.warn("{count} more refused {what} ({reason}) in the last {seconds:.0f} s",
                             count=window[2], what=self.what, reason=reason, seconds=now - window[0])

    def _flush(self) -> None:
        """A window with refusals left out has ended: its summary line, now rather than at the next refusal."""
        self._flush_call = None
        now = self.clock.seconds()
        for reason, window in list(self._windows.items()):
            if now - window[0] >= self.window - 1e-6:  # the timer may fire a hair early in float terms
                self._summarize(reason, window, now)
        pending = [window[0] for window in self._windows.values() if window[2]]
        if pending:
            self._flush_call = self.clock.callLater(max(0.0, min(pending) + self.window - now), self._flush)

    def reset(self) -> None:
        """Forget the windows (and cancel a pending summary): the next refusals are logged in full (tests)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._windows.clear()
