# -*- test-case-name: tests.http.test_pg_routes -*-
"""
A body whose sink is not known when its headers arrive: a chunk of an
upload session this process does not hold, whose record must first be read
from a metadata index that is never read on the reactor (PostgreSQL: a
session another node started).

The connection is paused at once; the bytes already read from the socket
are held (at most what one read delivered), then handed to the sink once it
is found, and reading resumes. If the session cannot be had, the request is
answered with the error at once (or, when the body is already complete, by
the handler, which awaits L{PendingSink.wait}).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from izreg.http.bodies import Dropped
from izreg.http.errors import as_registry_error


class PendingSink:
    def __init__(self, request, find: Callable[[], Awaitable[Any]]) -> None:
        self.request = request
        self.sink = None
        self.error = None
        self.received = 0
        self._held: list[bytes] = []
        self._closed = False
        self._transport = getattr(request.channel, "transport", None)
        if self._transport is not None:
            self._transport.pauseProducing()
        self._found = defer.ensureDeferred(self._find(find))

    async def _find(self, find: Callable[[], Awaitable[Any]]) -> None:
        try:
            sink = await find()
        except Exception:
            self.error = as_registry_error(Failure())
            sink = Dropped()
            self.request.refuse(self.error)
        held, self._held = self._held, []
        self.sink = sink
        for data in held:
            sink.write(data)
        if self._closed:
            sink.close()
        if self._transport is not None:
            self._transport.resumeProducing()

    async def wait(self):
        """The sink, once found (raises the error that kept it from being found)."""
        await self._found
        if self.error is not None:
            raise self.error
        return self.sink

    # -- the file-like face Twisted writes the body to --

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.sink is not None:
            self.sink.write(data)
        else:
            self._held.append(data)

    def tell(self) -> int:
        return self.sink.tell() if self.sink is not None else self.received

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        else:
            self._closed = True
