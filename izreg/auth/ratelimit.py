# -*- test-case-name: tests.auth.test_authenticator -*-
"""
Slowing down guessing: failed authentications per brake (pure, in memory).

A brake is any hashable key: the authenticator uses (client address, key
id) for failures against an existing key and (client address, "*") for
the rest, so a valid key is never refused for others' failures. Past
C{limit} failures within C{window} seconds, a brake refuses (429 with
``Retry-After``) until its oldest counted failure leaves the window. Requests without credentials do not count: ``docker login`` starts
with an anonymous ``GET /v2/`` by design. Time is always an argument.

The state is per process and lost on restart; that is fine for a brake on
online guessing of 256-bit secrets. Memory is bounded: at most
C{max_addresses} addresses are tracked, the stalest dropped first.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

from izreg.core.errors import ErrorCode, RegistryError


class FailureLimiter:
    def __init__(self, limit: int, window: float, max_addresses: int = 10000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until C{address} may try again, or C{None} if it may now."""
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def check(self, address: str, now: float) -> None:
        """@raise RegistryError: C{TOOMANYREQUESTS} with C{Retry-After} if C{address} is blocked."""
        wait = self.retry_after(address, now)
        if wait is not None:
            keyed = isinstance(address, tuple) and address[1] != "*"
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                {"retry_after": wait},
                "too many failed authentications with this key from this address; retry later" if keyed
                else "too many failed authentications from this address; retry later",
                headers={"Retry-After": str(wait)},
            )

    def record_failure(self, address: str, now: float) -> None:
        failures = self._recent(address, now)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        failures.append(now)
        self._failures.move_to_end(address)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
