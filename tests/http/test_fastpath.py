"""
L{RepositoryFastPath.render} with a dispatcher of our own: the handler's
answer is written and the request finished once; a client that goes away
cancels the handler and gets nothing written; a handler that finishes the
request itself is not finished again.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from izreg.http.fastpath import RepositoryFastPath

pytestmark = pytest.mark.fast


def _request(path: bytes = b"/v2/acct/app/tags/list") -> DummyRequest:
    request = DummyRequest(path.split(b"/")[1:])
    request.path = path
    return request


def _root(dispatch, errors: list) -> RepositoryFastPath:
    def error(request, failure):
        errors.append(failure)
        return b"error"

    return RepositoryFastPath(dispatch, error, Resource(), frozenset(), ["GET"])


def test_an_answer_is_written_and_finished_once():
    async def dispatch(request, rest):
        return rest.encode()

    request, errors = _request(), []
    assert _root(dispatch, errors).render(request) is NOT_DONE_YET
    assert request.written == [b"acct/app/tags/list"]
    assert request.finished == 1 and errors == []


def test_a_client_that_goes_away_cancels_the_handler():
    waiting: Deferred = Deferred()
    seen = []

    async def dispatch(request, rest):
        try:
            return await waiting
        except CancelledError:
            seen.append("cancelled")
            raise

    request, errors = _request(), []
    _root(dispatch, errors).render(request)
    assert seen == [] and request.finished == 0
    request.processingFailed(Failure(ConnectionError("gone")))
    assert seen == ["cancelled"]
    assert request.written == [] and request.finished == 0 and errors == []  # nothing answered to no one


def test_a_handler_that_finishes_the_request_itself_is_not_finished_again():
    async def dispatch(request, rest):
        request.write(b"streamed")
        request.finish()
        return None

    request, errors = _request(), []
    _root(dispatch, errors).render(request)
    assert request.written == [b"streamed"] and request.finished == 1 and errors == []


def test_an_error_raised_before_any_wait_is_answered_by_the_error_handler():
    async def dispatch(request, rest):
        raise KeyError("no such thing")

    request, errors = _request(), []
    _root(dispatch, errors).render(request)
    assert request.written == [b"error"] and request.finished == 1
    assert len(errors) == 1 and errors[0].check(KeyError)


def test_a_handler_that_finishes_the_request_then_waits_is_not_finished_again():
    waiting: Deferred = Deferred()

    async def dispatch(request, rest):
        request.write(b"streamed")
        request.finish()
        await waiting
        return None

    request, errors = _request(), []
    _root(dispatch, errors).render(request)
    waiting.callback(None)
    assert request.written == [b"streamed"] and request.finished == 1 and errors == []


def test_a_handler_that_waits_is_answered_when_it_ends():
    waiting: Deferred = Deferred()

    async def dispatch(request, rest):
        return await waiting + rest.encode()

    request, errors = _request(), []
    _root(dispatch, errors).render(request)
    assert request.written == [] and request.finished == 0
    waiting.callback(b"read: ")
    assert request.written == [b"read: acct/app/tags/list"] and request.finished == 1 and errors == []
