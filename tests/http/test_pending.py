"""
L{izreg.http.pending.PendingBody}: the body of a request whose caller is still
being read from the database counts against the body memory budget.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from izreg.core.errors import ErrorCode
from izreg.http.bodies import Dropped
from izreg.http.limits import BodyBudget
from izreg.http.pending import PendingBody


class Request:
    channel = None

    def __init__(self) -> None:
        self.refused = []
        self.content = None

    def refuse(self, error) -> None:
        self.refused.append(error)


class Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data) -> None:
        self.data += data

    def seek(self, offset, whence=0) -> None:
        pass


def test_held_bytes_count_against_the_budget_and_past_it_the_request_is_503():
    # many slow-to-authenticate requests each held what one read brought (64 KiB, more as
    # tiny chunks), outside limits.body_memory: 800 connections grew the server by 130 MiB
    budget, request, authorized = BodyBudget(1000), Request(), Deferred()
    pending = PendingBody(request, authorized, Sink, budget)
    for _ in range(600):
        pending.write(b"x")  # tiny chunks: kept in one buffer
    assert budget.used == 600 and len(pending.held) == 600
    pending.write(b"y" * 600)
    assert [e.code for e in request.refused] == [ErrorCode.UNAVAILABLE]
    assert budget.used == 0 and isinstance(request.content, Dropped)
    pending.write(b"z")
    authorized.callback("principal")  # the caller is known after the refusal: nothing more happens
    assert budget.used == 0 and isinstance(request.content, Dropped) and len(request.refused) == 1


def test_the_held_bytes_go_to_the_sink_and_leave_the_budget():
    budget, request, authorized = BodyBudget(1000), Request(), Deferred()
    pending = PendingBody(request, authorized, Sink, budget)
    for part in (b"ab", b"c", b"def"):
        pending.write(part)
    authorized.callback("principal")
    assert request.content.data == b"abcdef" and budget.used == 0 and request.refused == []
