# -*- test-case-name: tests.http.test_api -*-
"""Response helpers: streaming blob bodies with back-pressure."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

log = Logger()


#: bytes read per turn: large enough that per-chunk Python work is small next
#: to the copy, small enough that a slow client pins little memory
READ_SIZE = 512 * 1024


@implementer(IPushProducer)
class FileSender:
    """
    Sends C{length} bytes of a blob reader (L{IBlobReader}) from C{offset}
    as a push producer: it writes until the transport's buffer is full and
    says pause, and goes on when the transport has drained it. (A pull
    producer would be driven through twisted.web's cooperator, one small
    step per reactor turn.) A reader whose reads wait on the network (S3)
    answers with a Deferred: one read is in flight at a time, so memory
    stays flat.
    """

    def __init__(self, request, file, offset: int, length: int) -> None:
        self.request, self.file, self.remaining = request, file, length
        self.paused = False
        self.reading = False
        file.seek(offset)

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.reading and self.request is not None and self.remaining:
            data = self.file.read(min(READ_SIZE, self.remaining))
            if isinstance(data, defer.Deferred):
                self.reading = True
                data.addCallbacks(self._read, self._failed)
                return
            self._send(data)
        self._finish_if_done()

    def _read(self, data: bytes) -> None:
        self.reading = False
        if self.request is None:
            return
        self._send(data)
        if not self.paused:
            self.resumeProducing()
        else:
            self._finish_if_done()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        log.failure("reading a blob failed with {remaining} bytes to send", failure, remaining=self.remaining)
        if self.request is not None:
            self.request.loseConnection()
            self.stopProducing()

    def _send(self, data: bytes) -> None:
        if not data:
            log.error("blob ended {remaining} bytes early", remaining=self.remaining)
            self.request.loseConnection()
            self.stopProducing()
            return
        self.remaining -= len(data)
        self.request.write(data)

    def _finish_if_done(self) -> None:
        if self.request is not None and not self.remaining:
            request = self.request
            self.stopProducing()
            request.unregisterProducer()
            request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.file.close()
        self.request = None


class FileBody(Resource):
    """C{length} bytes of a blob reader from C{start}, streamed with back-pressure (L{FileSender})."""

    isLeaf = True

    def __init__(self, file, start: int, length: int) -> None:
        super().__init__()
        self.file, self.start, self.length = file, start, length

    def render(self, request):
        if self.length == 0:
            self.file.close()
            return b""
        FileSender(request, self.file, self.start, self.length).start()
        return NOT_DONE_YET


def shield(coroutine) -> defer.Deferred:
    """
    Run C{coroutine} to completion even if the request that awaits it is
    cancelled (Klein cancels a handler when its client goes away); commits
    must not stop half way.
    """
    inner = defer.ensureDeferred(coroutine)
    outer: defer.Deferred = defer.Deferred()

    def relay(result):
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Failure):
            log.failure("shielded operation failed after its request went away", result)

    inner.addBoth(relay)
    return outer
