# -*- test-case-name: tests.http.test_api -*-
"""Response helpers: streaming blob bodies with back-pressure."""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import SingleRangeStaticProducer

log = Logger()


class FileBody(Resource):
    """
    C{length} bytes of an open file from C{start}, written by a pull producer:
    the transport asks for the next 64 KiB only when it has sent the last, so
    a slow client never makes the server buffer a blob.
    """

    isLeaf = True

    def __init__(self, file, start: int, length: int) -> None:
        super().__init__()
        self.file, self.start, self.length = file, start, length

    def render(self, request):
        if self.length == 0:
            self.file.close()
            return b""
        SingleRangeStaticProducer(request, self.file, self.start, self.length).start()
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
