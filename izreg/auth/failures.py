# -*- test-case-name: tests.auth.test_authenticator -*-
"""
Failure accounting: which brake a failed authentication counts against,
and the brake checked before a key's secret is (pure, but for the log line).

Past C{limit} failures a minute from one address against one key id, that
key id is refused from that address with 429 C{TOOMANYREQUESTS} and
``Retry-After`` before its secret is even checked; failures that name no
known key (malformed credentials, unknown key ids, bad tokens) share one
brake per address. So a valid key is never refused because other clients
behind the same address (a proxy, a NAT, a CI runner) failed: only guessing
of that very key from there slows it down.

An address is counted by its group (L{izreg.core.netgroup.address_group}:
an IPv4 address, an IPv6 /64), as the connection caps and memory shares
count it: one IPv6 host has a whole /64 of addresses at will, so per
address it would guess past the brake from ever new ones, and fill the
limiter's table (C{max_addresses}, the stalest dropped: others' brakes
with it).

The counting itself is the limiter's (L{izreg.auth.ratelimit.FailureLimiter}
per process on LMDB, L{izreg.auth.clusterlimit.SharedFailureLimiter} across
nodes on PostgreSQL); the service picks one (L{izreg.service.backends}).
The log line names the key id at most, never a secret.
"""

from __future__ import annotations

from twisted.logger import Logger

from izreg.auth.credentials import _Failed
from izreg.auth.ratelimit import FailureLimiter
from izreg.core.netgroup import address_group

#: the brake of failures that name no known key, per address
ANY_KEY = "*"


class FailedAuthentications:
    """
    @param limiter: the counter (C{auth.failure_limit}, C{auth.failure_window}).
    """

    log = Logger()

    def __init__(self, limiter: FailureLimiter) -> None:
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"FailedAuthentications(limit={self.limiter.limit!r}, window={self.limiter.window!r})"

    def check(self, address: str, key_id: str, now: float) -> None:
        """
        The brake of C{key_id} from C{address}, before its secret is checked.

        @raise RegistryError: C{TOOMANYREQUESTS} with ``Retry-After``.
        """
        self.limiter.check((address_group(address), key_id), now)

    def failed(self, failed: _Failed, address: str, now: float) -> None:
        """
        Count C{failed} against its brake, and log it.

        @raise RegistryError: C{TOOMANYREQUESTS} when the brake is already
            on (past it a client gets a 429, not one more 401).
        """
        bucket = (address_group(address), failed.key_id if failed.known else ANY_KEY)
        self.limiter.check(bucket, now)
        self.limiter.record_failure(bucket, now)
        self.log.info(
            "failed authentication from {address}: {reason} (key id {key_id})",
            address=address,
            reason=failed.reason,
            key_id=failed.key_id or "-",
        )
