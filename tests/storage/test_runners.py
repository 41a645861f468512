"""izreg.storage.runners: one loop body, driven inline (izreg) or through the server's runners (Deferreds)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed

from izreg.storage.runners import inline, run_inline, settled


async def _twice(run):
    return [await settled(run(lambda x: x * 2, 1)), await settled(run(lambda x: x * 2, 2))]


def test_a_loop_of_inline_steps_runs_to_its_end_here():
    assert run_inline(_twice(inline)) == [2, 4]
    assert run_inline(_twice(lambda f, *a: succeed(f(*a)))) == [2, 4]  # fired Deferreds do not wait


def test_a_step_that_would_wait_is_an_error_not_a_silently_dropped_loop():
    pending = Deferred()
    with pytest.raises(RuntimeError, match="waited"):
        run_inline(_twice(lambda f, *a: pending))
