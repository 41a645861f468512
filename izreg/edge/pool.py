# -*- test-case-name: tests.edge.test_pool -*-
"""
The protocol factory of the edge's upstream connection pool, over Twisted's
private HTTP client classes.

L{izreg.edge.upstream.MutualTLSPolicy} explains a failed TLS connection with
the certificates presented on that connection; for that it must hear, for
each connection, that it ended and why, before the request hears it.
Twisted's C{HTTPConnectionPool} has no public hook for that: the edge sets
the pool's private C{_factory} to a subclass of Twisted's private
C{_HTTP11ClientFactory} whose protocols, subclasses of
C{twisted.web._newclient.HTTP11ClientProtocol}, tell C{lost}; it also logs
no "Starting factory" line per connection.

L{POOL_NEEDS} lists those names; they are checked once, when the edge starts
(L{izreg.http.internals.fast_path}, as the server's fast paths are). If this
Twisted lacks one, one warning names the Twisted version and what is missing,
and the pool keeps Twisted's own factory: pulls, the cache and the offline
answers work the same; what is lost is the certificates in the sentence of
a TLS failure (L{izreg.edge.unreachable}: an expired registry certificate is
then told as one the CA did not sign) and the quiet log.
C{IZREG_STOCK_TWISTED=1} forces Twisted's factory here too.
"""

from __future__ import annotations

import functools
from typing import Callable

from izreg.http.internals import Needs, fast_path

_CLIENT, _NEWCLIENT = "twisted.web.client", "twisted.web._newclient"

#: every private name this module uses (tests.edge.test_pool keeps the list complete); the factory's
#: C{buildProtocol} is replaced by a copy (C{exactly}), the rest must exist and still be used as here
POOL_NEEDS = (
    Needs(_CLIENT, "HTTPConnectionPool._factory"),
    Needs(_CLIENT, "HTTPConnectionPool._newConnection", ("_factory",)),
    Needs(_CLIENT, "_HTTP11ClientFactory.__init__", ("_quiescentCallback",)),
    Needs(_CLIENT, "_HTTP11ClientFactory.buildProtocol", ("HTTP11ClientProtocol", "_quiescentCallback"),
          exactly=True),
    Needs(_NEWCLIENT, "HTTP11ClientProtocol.__init__", ("_quiescentCallback",)),
    Needs(_NEWCLIENT, "HTTP11ClientProtocol.connectionLost"),
)

#: what the warning says the fallback costs
COST = ("pulls work the same; a failed TLS connection to the registry is told without the certificates"
        " it presented, and each upstream connection logs a line")


def noting_factory(lost: Callable, **check) -> type | None:
    """
    The pool's protocol factory whose protocols call C{lost(transport, reason)} when their connection
    ends, before the request hears it; C{None} where Twisted's own must serve (C{check}: L{fast_path}'s
    C{environ}, C{import_module}).
    """
    if not fast_path("the edge's upstream connections", "_HTTP11ClientFactory", POOL_NEEDS, cost=COST, **check):
        return None
    return _build(lost)


def _build(lost: Callable) -> type:
    from twisted.web._newclient import HTTP11ClientProtocol
    from twisted.web.client import _HTTP11ClientFactory

    class NotingProtocol(HTTP11ClientProtocol):
        """Twisted's HTTP client protocol, telling C{lost} its transport and why it ended."""

        def connectionLost(self, reason=None):
            if reason is not None:
                lost(self.transport, reason)
            super().connectionLost(reason)

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

        def buildProtocol(self, addr):
            return NotingProtocol(self._quiescentCallback)

    return QuietFactory


@functools.cache
def checked() -> bool:
    """Whether this Twisted has L{POOL_NEEDS} (checked, and any warning logged, once a process)."""
    return noting_factory(lambda transport, reason: None) is not None


def install(pool, lost: Callable) -> bool:
    """Give C{pool} (an C{HTTPConnectionPool}) the L{noting_factory} if this Twisted allows; whether it did."""
    if not checked():
        return False
    pool._factory = _build(lost)
    return True
