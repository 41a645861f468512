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
from izreg.http.bodies import Dropped
from izreg.http.errors import as_registry_error

log = Logger()

#: the request attribute holding a refusal made once the body had already been read whole
BODY_ERROR = "_izreg_body_error"


class PendingBody:
    def __init__(self, request, authorized: Deferred, make: Callable[[], object]) -> None:
        self.request = request
        self.make = make
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.transport = getattr(getattr(request, "channel", None), "transport", None)
        if self.transport is not None:
            self.transport.pauseProducing()  # bytes already read still come: a read buffer at most
        authorized.addCallbacks(self._authorized, self._refused)

    # the file-like calls of twisted.web's Request on its content
    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))
        self.size += len(data)

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> None:
        self.complete = True  # twisted.web seeks once the body is whole

    def read(self, size: int = -1) -> bytes:
        return b""

    def getvalue(self) -> bytes:
        return b""

    def close(self) -> None:
        self.chunks = []

    def _authorized(self, _principal) -> None:
        try:
            sink = self.make()
        except Exception:
            self._refused(Failure())
            return
        for chunk in self.chunks:
            sink.write(chunk)
        self.chunks = []
        if self.complete:
            sink.seek(0, 0)
        self.request.content = sink
        self._resume()

    def _refused(self, failure: Failure) -> None:
        error = failure.value if failure.check(RegistryError) else as_registry_error(failure)
        self.chunks = []
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
