# -*- test-case-name: tests.edge.test_edge_e2e,tests.edge.test_edge_upstream -*-
"""
One upstream fetch of a blob, shared by every client that wants it.

A L{Download} writes the upstream body to a temporary file in the cache
while hashing it; each client is a L{Follower} that sends the file from
its own offset (C{os.pread} on the download's descriptor), so a second
pull of the same uncached blob streams from the same download instead of
fetching it again.

Nothing unverified is ever complete at a client: until the digest has
been checked, followers hold back the last byte. If the body is corrupt
(wrong digest, wrong length) or breaks off, every follower's connection
is cut (C{cut: unreadable}), so the client's own length and digest checks
fail, and the temporary file is deleted; a follower that had sent nothing
yet answers 502 instead.

Back-pressure: a follower is a push producer for its client connection;
when even the fastest follower is more than L{WINDOW} bytes behind the
download, the upstream connection is paused until one catches up.
Memory stays flat whatever the blob size: the data in flight is on disk.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import defer, protocol, threads
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.edge.upstream import Unreachable, collect
from izreg.http.accesslog import CUT_SLOW_READER, CUT_UNREADABLE
from izreg.http.errors import cut, render_error, started

log = Logger()

#: bytes per read for a follower
READ_SIZE = 512 * 1024
#: how far the fastest follower may lag behind the upstream before the upstream is paused
WINDOW = 16 * 1024 * 1024
#: the body of an upstream error reply that is passed on (401, 404, ...)
ERROR_BODY_LIMIT = 64 * 1024

CONNECTING, STREAMING, VERIFIED, FAILED, REPLY = "connecting", "streaming", "verified", "failed", "reply"


def broke_off(reason) -> str:
    """Why an upstream body ended before its end, in words (Twisted's ResponseFailed says a list of Failures)."""
    reasons = reason.value.reasons if isinstance(reason.value, ResponseFailed) else [reason]
    words = [r.getErrorMessage() for r in reasons if not r.check(PotentialDataLoss) and r.getErrorMessage()]
    return "; ".join(words) or reason.value.__class__.__name__


def upstream_failed(request, reason: str) -> None:
    """
    End C{request}, whose answer from the registry failed: a 502 if nothing of it was sent yet, else its
    connection cut (C{cut: unreadable}: its client must not take what it got for the whole).
    """
    if started(request):
        cut(request, CUT_UNREADABLE)
        return
    for name in (b"Docker-Content-Digest", b"ETag", b"Content-Range", b"Accept-Ranges"):
        request.responseHeaders.removeHeader(name)
    body = render_error(request, RegistryError(ErrorCode.BAD_GATEWAY, {"reason": reason[:300]},
                                               "the registry's answer broke off; nothing was cached"))
    request.write(body)
    request.finish()


class Reply:
    """An upstream answer that is not the blob (401, 403, 404, 429...), passed on as it is."""

    def __init__(self, code: int, headers, body: bytes) -> None:
        self.code, self.headers, self.body = code, headers, body


class Download:
    def __init__(self, cache, upstream, repository: str, digest: str, now: Callable[[], float],
                 on_finish: Callable[["Download"], None]) -> None:
        self.cache, self.upstream = cache, upstream
        self.repository, self.digest = repository, digest
        self.expected = Digest.parse(digest)
        self.now, self.on_finish = now, on_finish
        self.state = CONNECTING
        self.size: int | None = None
        self.written = 0
        self.followers: set[Follower] = set()
        self.reply: Reply | None = None
        self.error: str | None = None
        self.transport = None  # the upstream body's producer
        self.paused = False
        self._file = None
        self._fd: int | None = None
        self._temp: str | None = None
        self._hasher = self.expected.hasher()
        self._header_waiters: list[defer.Deferred] = []
        self._done_waiters: list[defer.Deferred] = []
        self._headers_result = None
        self._finished = False

    # -- waiting ---------------------------------------------------------------------

    def headers(self) -> defer.Deferred:
        """Fires (None) once the upstream answered, or fails with L{Unreachable}. One Deferred per caller."""
        return self._wait(self._header_waiters, self.state != CONNECTING, self._headers_result)

    def done(self) -> defer.Deferred:
        """Fires with True once the blob is verified and in the cache, False if it failed."""
        return self._wait(self._done_waiters, self._finished, self.state == VERIFIED)

    def _wait(self, waiters: list, ready: bool, result) -> defer.Deferred:
        d = defer.Deferred(lambda d: waiters.remove(d) if d in waiters else None)
        if ready:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
        else:
            waiters.append(d)
        return d

    def _fire(self, waiters: list, result) -> None:
        pending, waiters[:] = list(waiters), []
        for d in pending:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)

    # -- the fetch -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            response = await self.upstream.request(
                "GET", f"/v2/{self.repository}/blobs/{self.digest}", {"Accept": ["*/*"]})
        except Unreachable as e:
            self._headers_result = e
            self.state = FAILED
            self.error = e.reason
            self._fire(self._header_waiters, e)
            self._finish()
            return
        if response.code != 200:
            try:
                body = await collect(response, ERROR_BODY_LIMIT)
            except Exception:
                body = b""
            self.reply = Reply(response.code, response.headers, body)
            self.state = REPLY
            self._fire(self._header_waiters, None)
            self._finish()
            return
        if response.length is not None and isinstance(response.length, int):
            self.size = response.length
        self._temp = self.cache.temp_path()
        self._file = open(self._temp, "wb", buffering=0)
        self._fd = os.open(self._temp, os.O_RDONLY)
        self.state = STREAMING
        self._fire(self._header_waiters, None)
        response.deliverBody(_Receiver(self))

    def data(self, data: bytes) -> None:
        if self.state != STREAMING:
            return
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]
        self._hasher.update(data)
        self.written += len(data)
        if self.size is not None and self.written > self.size:
            self.transport.stopProducing()
            self.fail(f"the registry sent more than the {self.size} bytes it announced")
            return
        for follower in list(self.followers):
            follower.wake()
        self.pressure()

    def body_done(self, reason) -> None:
        if self.state != STREAMING:
            return
        if not reason.check(ResponseDone):
            self.fail(f"the registry's answer broke off after {self.written} bytes: {broke_off(reason)}")
        elif self.size is not None and self.written != self.size:
            self.fail(f"the registry sent {self.written} of {self.size} bytes")
        elif not self.expected.matches(self._hasher):
            self.fail(f"the registry's bytes have digest {self.expected.algorithm}:{self._hasher.hexdigest()},"
                      f" not {self.digest}")
        else:
            self.size = self.written
            self.state = VERIFIED
            for follower in list(self.followers):
                follower.wake()
            threads.deferToThread(self._persist).addCallbacks(self._persisted, self._persist_failed)

    def _persist(self) -> list[str]:
        os.fsync(self._file.fileno())
        self._file.close()
        return self.cache.commit(self._temp, self.digest, self.size, "", self.now())

    def _persisted(self, evicted) -> None:
        log.info("cached {digest} ({size} bytes){evicted}", digest=self.digest, size=self.size,
                 evicted=f", evicted {len(evicted)}" if evicted else "")
        self._finish()

    def _persist_failed(self, failure) -> None:
        log.failure("could not keep {digest} in the cache", failure, digest=self.digest)
        self._discard()
        self._finish()

    def fail(self, reason: str) -> None:
        """Corrupt or broken upstream body: cut every follower, keep nothing."""
        log.error("refused {digest} from the registry: {reason}", digest=self.digest, reason=reason)
        self.state = FAILED
        self.error = reason
        for follower in list(self.followers):
            follower.failed(reason)
        self._discard()
        self._finish()

    def _discard(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.on_finish(self)
        self._fire(self._done_waiters, self.state == VERIFIED)
        self._maybe_close_fd()

    def _maybe_close_fd(self) -> None:
        if self._finished and not self.followers and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- followers ----------------------------------------------------------------------

    def follow(self, request) -> "Follower":
        follower = Follower(self, request)
        self.followers.add(follower)
        return follower

    def left(self, follower: "Follower") -> None:
        self.followers.discard(follower)
        self._maybe_close_fd()
        self.pressure()

    def readable(self) -> int:
        """How many bytes a follower may send now: all once verified, else all but the last."""
        if self.state == VERIFIED:
            return self.size
        if self.state != STREAMING:
            return 0
        return self.written if self.size is None else min(self.written, self.size - 1)

    def read(self, offset: int, count: int) -> bytes:
        return os.pread(self._fd, count, offset)

    def pressure(self) -> None:
        """Pause the upstream while every follower lags more than WINDOW; resume when one catches up."""
        if self.transport is None or self.state != STREAMING:
            return
        behind = bool(self.followers) and min(self.written - f.sent for f in self.followers) > WINDOW
        if behind and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        elif not behind and self.paused:
            self.paused = False
            self.transport.resumeProducing()


class _Receiver(protocol.Protocol):
    def __init__(self, download: Download) -> None:
        self.download = download

    def connectionMade(self) -> None:
        self.download.transport = self.transport

    def dataReceived(self, data: bytes) -> None:
        self.download.data(data)

    def connectionLost(self, reason) -> None:
        self.download.body_done(reason)


@implementer(IPushProducer)
class Follower:
    """
    Sends a download's bytes to one client, as fast as the client reads them;
    one that reads nothing for edge.send_timeout is cut (the site's
    L{izreg.http.limits.SlowReaders}, which watches L{handed}).
    """

    what = "a blob"  # (the slow-reader watch's warning line)

    def __init__(self, download: Download, request) -> None:
        self.download, self.request = download, request
        self.sent = 0
        self.paused = False
        self.readers = getattr(getattr(request, "site", None), "readers", None)

    @property
    def handed(self) -> int:
        return self.sent

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self._gone())
        if self.readers is not None:
            self.readers.started(self, self.request.transport)
        self.pump()

    def pump(self) -> None:
        download = self.download
        while not self.paused and self.request is not None:
            count = min(READ_SIZE, download.readable() - self.sent)
            if count <= 0:
                break
            data = download.read(self.sent, count)
            if not data:
                self.abort(CUT_UNREADABLE)
                return
            self.sent += len(data)
            self.request.write(data)
        if self.request is not None and download.state == VERIFIED and self.sent == download.size:
            request = self.request
            self._gone()
            request.unregisterProducer()
            request.finish()

    def wake(self) -> None:
        if not self.paused:
            self.pump()

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()
        self.download.pressure()

    def pauseProducing(self) -> None:
        self.paused = True
        self.download.pressure()

    def stopProducing(self) -> None:
        self._gone()

    def too_slow(self) -> None:
        """Called by L{izreg.http.limits.SlowReaders}: the client read nothing for edge.send_timeout."""
        self.abort(CUT_SLOW_READER)

    def failed(self, reason: str) -> None:
        """The download failed: a 502 if nothing was sent yet, else the connection cut."""
        self._end(lambda request: upstream_failed(request, reason))

    def abort(self, why: str) -> None:
        """Cut the client's connection (before the last byte: its digest check fails); C{why}, for its log line."""
        self._end(lambda request: cut(request, why))

    def _end(self, end: Callable) -> None:
        request = self.request
        self._gone()
        if request is not None:
            request.unregisterProducer()
            end(request)

    def _gone(self) -> None:
        if self.request is None:
            return
        self.request = None
        if self.readers is not None:
            self.readers.done(self)
        self.download.left(self)
