# -*- test-case-name: tests.http.test_shared_database -*-
"""
A request body whose caller is still being authenticated.

On a shared database (PostgreSQL) the key record or the device's
revocations are read off the reactor, so when a request's headers arrive
(L{izreg.http.app.RegistryAPI.body_for}) it is not yet known whether its
body may be kept, nor where it goes. L{PendingBody} stands in: it pauses
reading from the connection and keeps the few bytes already read; once the
caller is known it asks for the real sink (an upload's writer, a bounded
buffer) and hands them over, or answers the refusal at once and drops the
body, exactly as a refusal made at headers time. On LMDB the caller is known
at once and no PendingBody is made.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from izreg.core.errors import RegistryError
from izreg.http.bodies import Dropped, out_of_budget
from izreg.http.errors import as_registry_error

log = Logger()

#: the request attribute holding a refusal made once the body had already been read whole
BODY_ERROR = "_izreg_body_error"


class PendingBody:
    """
    The bytes held count against C{budget} (L{izreg.http.limits.BodyBudget}, the
    memory of request bodies across connections): past it the request is
    answered 503 at once and nothing more is kept. They are kept in one
    buffer: a body of tiny chunks (chunked encoding) costs its bytes, not an
    object per chunk.
    """

    def __init__(self, request, authorized: Deferred, make: Callable[[], object], budget=None) -> None:
        self.request = request
        self.make = make
        self.budget = budget
        # the caller is not known yet: its address's share (L{izreg.http.limits.budget_owner})
        self.owner = budget.owner(request) if budget is not None else None
        self.held = bytearray()
        self.reserved = 0
        self.size = 0
        self.complete = False
        self.stopped = False
        self.transport = getattr(getattr(request, "channel", None), "transport", None)
        if self.transport is not None:
            self.transport.pauseProducing()  # bytes already read still come: a read buffer at most
        authorized.addCallbacks(self._authorized, self._refused)

    # the file-like calls of twisted.web's Request on its content
    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.stopped:
            return
        if self.budget is not None:
            if not self.budget.reserve(len(data), self.owner):
                error = out_of_budget(self.budget, self.owner, len(data))
                self.stopped = True
                self._release()
                self.request.content = Dropped()
                self.request.refuse(error)
                return
            self.reserved += len(data)
        self.held += data

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> None:
        self.complete = True  # twisted.web seeks once the body is whole

    def read(self, size: int = -1) -> bytes:
        return b""

    def getvalue(self) -> bytes:
        return b""

    def close(self) -> None:
        # the request is done with its body (its client gone): no sink is made for it once its caller is known,
        # which would reserve its Content-Length in the budget with nothing left to give it back
        self.stopped = True
        self._release()

    def _release(self) -> None:
        self.held = bytearray()
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved, self.owner)
        self.reserved = 0

    def _authorized(self, _principal) -> None:
        if self.stopped:
            return
        try:
            sink = self.make()
        except Exception:
            self._refused(Failure())
            return
        held = bytes(self.held)
        self._release()
        if held:
            sink.write(held)
        if self.complete:
            sink.seek(0, 0)
        self.request.content = sink
        if isinstance(sink, PendingBody):
            return  # waits again (a chunk taking over from a gone holder: izreg.http.uploadholder); it resumes
        self._resume()

    def _refused(self, failure: Failure) -> None:
        if self.stopped:
            return
        error = failure.value if failure.check(RegistryError) else as_registry_error(failure)
        self._release()
        self.request.content = Dropped()
        if self.complete:
            setattr(self.request, BODY_ERROR, error)  # the handler runs: it answers this
        else:
            self.request.refuse(error)
        self._resume()

    def _resume(self) -> None:
        channel = getattr(self.request, "channel", None)
        if self.transport is not None and not getattr(channel, "_handlingRequest", False):
            self.transport.resumeProducing()
