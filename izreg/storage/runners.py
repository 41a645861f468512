# -*- test-case-name: tests.storage.test_runners -*-
"""
One loop body for a store's blocking steps, whoever runs them.

A loop over store calls (the audit log's prune, the collector's sweep) is
written once, as a coroutine that calls each step through a runner
(C{run(f, *args)}) and takes its result with L{settled}. The server passes
its runners (the writer thread, the I/O pool: Deferreds); ``izreg`` passes
L{inline} and drives the coroutine to its end here with L{run_inline}
(nothing ever waits, so it never suspends). L{izreg.auth.runners} builds on
these for the request path.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred


def inline(f: Callable[..., Any], *args: Any) -> Any:
    """The LMDB reader (and ``izreg``'s every step): call C{f} here and now."""
    return f(*args)


async def settled(value: Any) -> Any:
    """In a coroutine: C{value}, or what the Deferred C{value} fires with."""
    if isinstance(value, Deferred):
        return await value
    return value


def run_inline(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """
    The result of C{coroutine}, whose steps all ran inline (plain values, no
    Deferred): it runs to its end in one step. One that would wait is an error.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a step meant to run inline waited for a result")
