# -*- test-case-name: tests.http.test_bodies -*-
"""
What a client may hold of the server before it is known to be welcome:
request bodies in memory (L{BodyBudget}), connections (L{ConnectionLimits})
and time (L{SlowSenders}). Configured under ``[connections]`` and
``[limits]`` (etc/izreg.toml).
"""

from __future__ import annotations

import resource
import time

from twisted.logger import Logger

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.netgroup import address_group

log = Logger()


class ThrottledLog:
    """One warning line per C{interval} seconds at most, saying how many were left out."""

    def __init__(self, logger: Logger, interval: float = 10.0, clock=time.monotonic) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last = None
        self._skipped = 0

    def warn(self, line: str) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return
        if self._skipped:
            line = f"{line} (and {self._skipped} more like it in the last {now - self._last:.0f} s)"
        self._last, self._skipped = now, 0
        self.logger.warn("{line}", line=line)


class BodyBudget:
    """Bytes of request bodies held in memory, across every connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, length: int) -> bool:
        if self.used + length > self.limit:
            return False
        self.used += length
        return True

    def release(self, length: int) -> None:
        self.used = max(0, self.used - length)


class ConnectionLimits:
    """
    Open connections, in total and per client address. Addresses in
    C{exempt} (trusted reverse proxies, whose connections carry many
    clients) count towards the total only. A limit of 0 is no limit.

    IPv6 addresses count per /64 (L{address_group}): a host picks addresses
    in its /64 at will, so per address there would be no cap at all, and a
    /64 is one site as one IPv4 address behind a NAT is. IPv4 addresses
    count each, whatever C{[tls] group_ipv4_prefix} says: this cap refuses
    (429), where the handshake slots only make a connection wait, and a /24
    holds unrelated clients (a provider's pool, cloud neighbours).
    """

    def __init__(self, max_total: int, max_per_address: int, exempt=()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.exempt = exempt
        self.total = 0
        self.peak = 0  # the most open at once since L{izreg.service.bursttrim.BurstTrim} last reset it
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> tuple[RegistryError, str] | None:
        """Count a new connection from C{address}; or (the error to answer, a log line) if it is over a cap."""
        if self.max_total and self.total >= self.max_total:
            return (
                RegistryError(ErrorCode.UNAVAILABLE, None, "the registry has as many connections open as it may; retry later",
                              headers={"Retry-After": "1"}),
                f"refused a connection from {address}: {self.total} connections open"
                f" (connections.max_connections = {self.max_total})",
            )
        group = self._group(address)
        count = self.by_address.get(group, 0)
        if self.max_per_address and count >= self.max_per_address and not _exempt(address, self.exempt):
            return (
                RegistryError(ErrorCode.TOOMANYREQUESTS, None, "too many connections from your address; retry later",
                              headers={"Retry-After": "1"}),
                f"refused a connection from {address}: {count} connections open from"
                f" {'this address' if group == address else group}"
                f" (connections.max_per_address = {self.max_per_address})",
            )
        self.total += 1
        if self.total > self.peak:
            self.peak = self.total
        self.by_address[group] = count + 1
        return None

    def _group(self, address: str) -> str:
        group = address_group(address)
        if group != address and _exempt(address, self.exempt):
            return address  # a trusted proxy's many connections do not count against its /64's other hosts
        return group

    def release(self, address: str) -> None:
        self.total = max(0, self.total - 1)
        group = self._group(address)
        count = self.by_address.get(group, 0) - 1
        if count > 0:
            self.by_address[group] = count
        else:
            self.by_address.pop(group, None)


def _exempt(address: str, exempt) -> bool:
    if callable(exempt):
        return exempt(address)
    return address in exempt


class SlowSenders:
    """
    Closes connections whose request headers take longer than
    C{header_timeout} seconds, or whose body, once C{body_grace} seconds
    have passed, has come at less than C{body_min_rate} bytes a second on
    average. (twisted's idle timeout alone restarts on every byte: one byte
    every 30 s would hold a connection for ever.) One timer for all
    connections, every C{interval} seconds while any is being watched.
    """

    def __init__(self, clock, header_timeout: float, body_min_rate: int, body_grace: float,
                 interval: float = 1.0) -> None:
        self.clock = clock
        self.header_timeout = header_timeout
        self.body_min_rate = body_min_rate
        self.body_grace = body_grace
        self.interval = interval
        self.watched: dict[object, list] = {}  # channel -> [phase, started, bytes]
        self._call = None
        self._log = ThrottledLog(log)

    def headers_started(self, channel) -> None:
        self.watched[channel] = ["headers", self.clock.seconds(), 0]
        self._arm()

    def body_started(self, channel) -> None:
        self.watched[channel] = ["body", self.clock.seconds(), 0]
        self._arm()

    def received(self, channel, count: int) -> None:
        state = self.watched.get(channel)
        if state is not None:
            state[2] += count

    def done(self, channel) -> None:
        self.watched.pop(channel, None)

    def _arm(self) -> None:
        if self._call is None and self.watched:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for channel, (phase, started, count) in list(self.watched.items()):
            elapsed = now - started
            reason = None
            if phase == "headers" and self.header_timeout and elapsed > self.header_timeout:
                reason = f"the request headers took longer than {self.header_timeout:g} s"
            elif (phase == "body" and self.body_min_rate and elapsed > self.body_grace
                  and count < self.body_min_rate * elapsed):
                reason = f"the request body came slower than {self.body_min_rate} bytes/s"
            if reason is not None:
                self.watched.pop(channel, None)
                address = getattr(channel, "address", None) or "?"
                self._log.warn(f"closed a connection from {address}: {reason} (connections.header_timeout,"
                               " connections.body_min_rate)")
                channel.too_slow(reason)
        self._arm()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit of open files towards C{wanted} (never past the hard limit)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
