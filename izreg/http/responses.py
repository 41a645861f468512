# -*- test-case-name: tests.http.test_blobs -*-
"""
Response helpers: streaming blob bodies with back-pressure, and large
bodies held in memory (manifests, tag lists, catalog pages) sent the same way.
"""

from __future__ import annotations

import errno
import socket
from collections import deque

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from izreg.http.accesslog import CUT_SLOW_READER, CUT_UNREADABLE
from izreg.http.errors import abort, cut
from izreg.http.limits import SIOCOUTQ, BodyBudget, queued_bytes, refusal, tcp_under

log = Logger()

#: the errors of a sendfile(2) to a client that went away (the rest: the file could not be read)
CLIENT_GONE_ERRORS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


#: bytes read per turn: large enough that per-chunk Python work is small next
#: to the copy, small enough that a slow client pins little memory
READ_SIZE = 512 * 1024

#: the least read when the socket has little room (L{FileSender}, TLS): a
#: whole TLS write of izreg.service.fasttls (48 KiB) and some
MIN_READ = 64 * 1024

#: the share of the socket's send buffer (SO_SNDBUF, which counts the
#: kernel's own overhead per segment, a few per cent) a read may fill
ROOM_SHARE = 7 / 8

#: most bytes handed to the kernel by one sendfile(2) call: whole TCP
#: segments (L{call_size}), one on loopback (MSS 65483). The client reads
#: each segment while the next call queues another; larger calls were much
#: slower here: 512 MiB pulled by one client at 3.8 GB/s with a segment a
#: call, 2.9 with two, 3.1 with eight, 1.9-2.3 with 4 MiB calls
#: (docs/benchmark.md)
SENDFILE_SIZE = 64 * 1024

#: most bytes sent in one reactor turn: calls follow each other while the
#: socket takes all it is given, then the producer waits for the socket to
#: be writable again, so one fast client cannot hold the reactor for a whole blob
SENDFILE_TURN = 16 * 1024 * 1024

#: a response body held in memory and longer than this is sent by a L{FileSender}
#: (L{held_body}); a shorter one is written whole, as before, at no extra cost
LARGE_BODY = 64 * 1024


def plain_tcp(request) -> tcp.Connection | None:
    """
    The TCP connection under C{request} when its bytes go to the socket as
    they are (so sendfile(2) may write them), else C{None}. Wrappers that pass
    writes through unchanged (L{ProtocolWrapper} without its own C{write},
    such as the plain listener's TLS refusal) are looked through; anything
    that transforms bytes (TLS) is not.
    """
    transport = getattr(request, "transport", None)
    while isinstance(transport, ProtocolWrapper) and type(transport).write is ProtocolWrapper.write:
        transport = transport.transport
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    return transport


def call_size(sock) -> int:
    """
    The bytes of one sendfile(2) call to C{sock}: as many whole segments
    (its current MSS) as fit in L{SENDFILE_SIZE}, at least one (the MSS of a
    fresh loopback connection is 32 KiB and grows to 65483 with the window).
    """
    try:
        mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    except OSError:  # not TCP (a Unix socket)
        return SENDFILE_SIZE
    if mss <= 0:
        return SENDFILE_SIZE
    return max(mss, SENDFILE_SIZE // mss * mss)


def release_buffers(transport) -> bool:
    """
    Have the TLS layer under C{transport} give back what it keeps between
    writes (C{releaseBuffers} of L{izreg.service.fasttls.FastTLSTransport}:
    a send BIO grown to a whole large write); C{False} where there is none.
    """
    while transport is not None:
        release = getattr(type(transport), "releaseBuffers", None)
        if release is not None:
            return release(transport)
        transport = getattr(transport, "transport", None)
    return False


def _when_writable(transport) -> None:
    """
    Have C{transport} resume its producer (the HTTP channel, which resumes the
    request's producer) once the socket is writable and its own buffer empty.
    This is C{FileDescriptor.doWrite}'s contract for a producer it paused
    itself; the sendfile path writes around the buffer, so it asks for it.
    """
    if transport.connected and not transport.disconnecting:
        transport.producerPaused = True
        transport.startWriting()


@implementer(IPushProducer)
class FileSender:
    """
    Sends C{length} bytes of a blob reader from C{offset} as a push producer.

    On plain TCP, when the reader offers C{sendfile(out_fd, offset, count)},
    the kernel copies the file to the socket, a few segments a call
    (L{call_size}), as many calls as the socket takes in a turn, and the
    transport tells us when it can take more. Otherwise (TLS) it
    reads C{READ_SIZE} at a time and writes until the transport's buffer is
    full and says pause, and goes on when the transport has drained it. (A pull
    producer would be driven through twisted.web's cooperator, one small step
    per reactor turn.)
    """

    def __init__(self, request, reader, offset: int, length: int, what: str = "a blob") -> None:
        self.request, self.reader, self.offset, self.remaining = request, reader, offset, length
        #: what is sent, for the slow-reader watch's warning line
        self.what = what
        self.paused = False
        self.reading = False
        #: bytes given to the transport (or to the socket) so far, which L{SlowReaders} watches
        self.handed = 0
        #: the site's watch on clients that stop reading (izreg.http.limits.SlowReaders), if any
        self.readers = getattr(getattr(request, "site", None), "readers", None)
        self.tcp = plain_tcp(request) if callable(getattr(reader, "sendfile", None)) else None
        #: the TCP transport under the TLS layer, whose room sizes the reads (L{_read_size})
        self.under = None
        if self.tcp is None:
            reader.seek(offset)
            self.under = tcp_under(getattr(request, "transport", None))

    def start(self) -> None:
        self.request.registerProducer(self, True)
        if self.readers is not None:
            self.readers.started(self, self.request.transport)
        if self.tcp is None:
            self.resumeProducing()
        else:
            # the headers go into the transport's buffer; the body follows once they are sent
            self.request.write(b"")
            _when_writable(self.tcp)

    def resumeProducing(self) -> None:
        self.paused = False
        if self.tcp is not None:
            self._send_file()
            return
        while not self.paused and not self.reading and self.request is not None and self.remaining:
            try:
                data = self.reader.read(min(self._read_size(), self.remaining))
            except Exception:  # an I/O error (EIO): raised here it would reach the reactor, or Klein after the head
                self._failed(Failure())
                return
            if isinstance(data, defer.Deferred):
                # a reader that waits on the network (S3): one read in flight, memory stays flat
                self.reading = True
                data.addCallbacks(self._read, self._failed)
                return
            if not self._write(data):
                return
        self._maybe_finish()

    def _read_size(self) -> int:
        """
        L{READ_SIZE}, or less when the socket has less room: what the socket
        does not take waits, sealed, in the transport's buffer (in RSS) until
        the client reads, and with reads of READ_SIZE a client that stopped
        reading left up to that much there (half of it on average); now
        Twisted's pause threshold (64 KiB) and one L{MIN_READ}, and what the
        kernel's overhead makes of the room. The room is the socket's
        send buffer (a share: L{ROOM_SHARE}) less what it queues (C{SIOCOUTQ})
        and the transport holds.
        """
        sock = getattr(self.under, "socket", None)
        if sock is None or SIOCOUTQ is None:
            return READ_SIZE
        try:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            return READ_SIZE
        room = int(size * ROOM_SHARE) - queued_bytes(self.under)
        return max(MIN_READ, min(READ_SIZE, room))

    def _write(self, data: bytes) -> bool:
        if not data:
            self._short()
            return False
        self.remaining -= len(data)
        self.handed += len(data)
        self.request.write(data)
        return True

    def _read(self, data: bytes) -> None:
        self.reading = False
        if self.request is not None and self._write(data):
            if self.paused:
                self._maybe_finish()
            else:
                self.resumeProducing()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        if self.request is None:
            return  # stopped meanwhile (the connection is gone): nothing failed that anyone waits for
        log.failure("reading a blob failed with {remaining} bytes to send", failure, remaining=self.remaining)
        self._cut(CUT_UNREADABLE)

    def _send_file(self) -> None:
        request = self.request
        if request is None or not self.remaining:
            self._maybe_finish()
            return
        turn, fd, step = 0, self.tcp.fileno(), call_size(self.tcp.socket)
        while self.remaining and turn < SENDFILE_TURN:
            asked = min(step, self.remaining)
            try:
                sent = self.reader.sendfile(fd, self.offset, asked)
            except BlockingIOError:
                break
            except OSError as e:
                # the client went away (EPIPE, ECONNRESET), or the file cannot be read (EIO)
                log.debug("sendfile stopped: {error}", error=e)
                self._cut(None if e.errno in CLIENT_GONE_ERRORS else CUT_UNREADABLE)
                return
            if sent == 0:
                self._short()
                return
            self.offset += sent
            self.remaining -= sent
            self.handed += sent
            request.sentLength += sent
            turn += sent
            if sent < asked:
                break  # the socket is full
        if self.remaining:
            _when_writable(self.tcp)
        else:
            self._maybe_finish()

    def _short(self) -> None:
        log.error("blob file ended {remaining} bytes early", remaining=self.remaining)
        self._cut(CUT_UNREADABLE)

    def _cut(self, why: str | None) -> None:
        """
        The body cannot be finished (its reader failed or ended early, or its
        client reads nothing: L{too_slow}): the connection is aborted (a
        reset), so the client learns at once that its answer is cut, and no
        other answer follows on it. An orderly close would wait until the
        client has read all that is queued for it, which one that stopped
        reading never does: with bytes still in the transport's buffer the
        connection stayed open for ever (the idle timeout is off while a
        response is sent, and this sender no longer watched by
        L{SlowReaders}); with them all in the kernel's (sendfile), the
        close, and the client's view of it, waited behind them, the socket
        holding them meanwhile. C{why} (L{izreg.http.accesslog}: C{CUT_UNREADABLE},
        C{CUT_SLOW_READER}) is what the access log says of it; C{None}: the client went away.
        """
        request = self.request
        if request is None:
            return
        self.stopProducing()
        if why is None:
            abort(request)
        else:
            cut(request, why)

    def _maybe_finish(self) -> None:
        if self.request is not None and not self.remaining:
            request = self.request
            self.stopProducing()
            request.unregisterProducer()
            request.finish()
            if self.tcp is None:
                release_buffers(request.transport)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.reader.close()
        self.request = None
        if self.readers is not None:
            self.readers.done(self)

    def stalled(self) -> None:
        """Called by L{SlowReaders}: the client read nothing since the last look; keep only what must be sent."""
        if self.request is not None and self.tcp is None:
            release_buffers(self.request.transport)

    def too_slow(self) -> None:
        """Called by L{SlowReaders}: the client read nothing for connections.send_timeout; close at once."""
        self._cut(CUT_SLOW_READER)


class FileBody(Resource):
    """C{length} bytes of a blob reader from C{start}, streamed with back-pressure (L{FileSender})."""

    isLeaf = True
    what = "a blob"

    def __init__(self, reader, start: int, length: int, what: str | None = None) -> None:
        super().__init__()
        self.reader, self.start, self.length = reader, start, length
        if what is not None:  # what the slow-reader watch's warning calls it
            self.what = what

    def render(self, request):
        if request.channel is None:  # the client went away before its answer: nothing to send
            self.reader.close()
            return NOT_DONE_YET
        if self.length == 0:
            self.reader.close()
            return b""
        try:
            FileSender(request, self.reader, self.start, self.length, self.what).start()
        except BaseException:
            self.reader.close()
            raise
        return NOT_DONE_YET


class HeldBytes:
    """
    A response body held in memory, read as a blob is (L{FileSender}), in
    pieces of L{MIN_READ} cut from it at once (the copies a read would have
    made): each piece is freed once the connection has sent it, so a client
    that stops reading holds only what is still unsent, and it leaves
    C{budget} (C{limits.response_memory}) as it is handed on; the rest
    leaves it when the body is closed (sent, cut by
    C{connections.send_timeout}, or its connection lost). Read whole from
    one C{bytes}, a 4 MiB body stayed in memory until its last byte went.
    """

    def __init__(self, data: bytes, budget: BodyBudget | None, charged: int | None = None, owner: str | None = None) -> None:
        self.pieces = deque(data[at:at + MIN_READ] for at in range(0, len(data), MIN_READ))
        self.budget, self.held, self.owner = budget, len(data), owner
        #: what it holds of C{budget}: its unsent bytes, at most C{charged} (a body over the whole budget
        #: holds all of it, L{held_body})
        self.charged = len(data) if charged is None else charged

    def seek(self, offset: int) -> None:
        if offset:
            raise ValueError("a body held in memory is sent from its start")

    def read(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.popleft()
        if len(piece) > size:  # (L{FileSender} asks for at least MIN_READ, or the rest)
            piece, rest = piece[:size], piece[size:]
            self.pieces.appendleft(rest)
        self._release(len(piece))
        return piece

    def close(self) -> None:
        self.pieces.clear()
        self._release(self.held)

    def _release(self, length: int) -> None:
        self.held -= length
        given = self.charged - min(self.charged, self.held)
        if self.budget is not None and given:
            self.budget.release(given, self.owner)
        self.charged -= given


class MemoryBody(FileBody):
    """
    A large response body held in memory, sent by a L{FileSender} as a blob
    is (L{HeldBytes}): a client that reads nothing of it is closed after
    C{connections.send_timeout} (L{izreg.http.limits.SlowReaders}), over
    TLS no more is sealed than its socket has room for. Written whole, a
    4 MiB manifest stayed in the transport's buffer, whole, for a client
    that read nothing until the idle timeout: 100 such held ~420 MB of RSS
    for ~75 s (docs/benchmark.md, "manifestbudget").
    """

    what = "a response"

    def __init__(self, data: bytes, budget: BodyBudget | None, charged: int | None = None, owner: str | None = None) -> None:
        super().__init__(HeldBytes(data, budget, charged, owner), 0, len(data))


def held_body(request, data: bytes, budget: BodyBudget | None):
    """
    The answer of a body C{data} held in memory: C{data} itself up to
    L{LARGE_BODY} (and for a HEAD, which sends none of it), else a
    L{MemoryBody} holding C{len(data)} of C{budget} until handed on: a 503
    UNAVAILABLE with Retry-After when the bodies not yet sent leave too
    little of it. A body over the whole budget (a tag list or catalog page
    can be: only manifests are bounded below it) holds all of it, so it is
    sent once nothing else is held, not refused for ever. Call it before
    the response's headers are set (a 503 carries none of them).
    """
    if len(data) <= LARGE_BODY or request.method == b"HEAD":
        return data
    charged = len(data) if budget is None else min(len(data), budget.limit)
    owner = None if budget is None else budget.owner(request)
    if budget is not None and not budget.reserve(charged, owner):
        raise refusal(budget, "response bodies", "limits.response_memory", owner, charged)
    return MemoryBody(data, budget, charged, owner)


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
