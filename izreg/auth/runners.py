"""
Runners: how code on the reactor calls a synchronous store (the seam of
#16, built in L{izreg.service.backends}). Here, below the HTTP layer, so
that the authenticator, the guard and the handlers share them.

``run_read(f, *args)`` and ``run_write(f, *args)`` call C{f(*args)} somewhere
and give back its value: on LMDB reads run inline (L{inline}: microseconds,
no thread hop, the value itself), on PostgreSQL every call runs on a bounded
thread pool and the runner returns a Deferred. Code written for both takes
the result with L{then}, which stays synchronous when the value is there.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from izreg.storage.runners import inline, settled  # noqa: F401  (the request path's too)


def then(value: Any, f: Callable[[Any], Any]) -> Any:
    """C{f(value)}, now if C{value} is plain, else once the Deferred C{value} fires (a Deferred)."""
    if isinstance(value, Deferred):
        return value.addCallback(f)
    return f(value)

