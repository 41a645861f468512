"""
A response body that cannot be finished is cut: its connection is aborted at
once (a reset), even when its client has stopped reading and the socket is
full (izreg.http.responses.FileSender._cut), never closed in order behind the
bytes the client does not read (with some still in the transport's buffer it
stayed open for ever: the idle timeout is off while a response is sent), and
never followed by another answer on the same connection.

Over a real loopback connection, on izreg's own site and channel
(L{RegistrySite}), with blob readers that fail as storage does: a file shorter
than the length it was served with (truncated behind it: sendfile(2) on plain
TCP), a read that raises (EIO), a read waiting on the network that fails (S3).
No idle or send timeout is set, so a connection left hanging fails the test.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource

from izreg.http.accesslog import AccessLog
from izreg.http.bodies import Dropped, RegistrySite
from izreg.http.limits import SlowReaders
from izreg.http.responses import FileBody
from izreg.storage.readers import FileReader

pytestmark = pytest.mark.socket

#: the length every body is served with: far more than any reader gives
LENGTH = 8 * 1024 * 1024
#: what a reader gives before it fails: more than the client's receive window (SO_RCVBUF 4096), less than
#: the server's send buffer and the transport's own (which would pause the sender before the failure)
GIVEN = 48 * 1024
#: how long a cut may take to reach the client (it comes at once; this only bounds a failing test)
PROMPTLY = 10.0


class HeldRead:
    """
    An S3-like reader: C{first} at once, then a read that waits on the
    network (a Deferred: C{asked} fires when it is made), which the test fails.
    """

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.asked: defer.Deferred = defer.Deferred()
        self.pending: defer.Deferred | None = None
        self.closed = False

    def seek(self, offset: int) -> None:
        assert offset == 0

    def read(self, size: int):
        if self.first:
            piece, self.first = self.first[:size], self.first[size:]
            return piece
        self.pending = defer.Deferred()
        self.asked.callback(None)
        return self.pending

    def close(self) -> None:
        self.closed = True


class RaisingRead(HeldRead):
    """A file read that gives C{first}, then fails (EIO)."""

    def read(self, size: int):
        if self.first:
            return super().read(size)
        raise OSError(errno.EIO, "Input/output error")


class Endless(HeldRead):
    """A read that always gives all it is asked: only the client, reading nothing, stops the body."""

    def read(self, size: int):
        return b"x" * size


class Bodies(Resource):
    """Every GET is answered with the body the test put in C{next}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.next = None

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % LENGTH)
        if isinstance(self.next, bytes):  # a handler that writes part of its body, then fails
            request.write(self.next)
            raise RuntimeError("a handler's bug, after its first bytes")
        return self.next.render(request)


@pytest_twisted.async_yield_fixture
async def site():
    bodies = Bodies()
    bodies.logged = []  # (status, cut) of each access log line
    access_log = AccessLog(time.monotonic, [lambda info: bodies.logged.append((info.status, info.cut))])
    # a client that reads nothing is cut after 1 s (connections.send_timeout): only the test of it waits so long
    readers = SlowReaders(reactor, 1.0, 0.25)
    served = RegistrySite(bodies, lambda request, method, uri, length: Dropped(), timeout=None, access_log=access_log,
                          readers=readers)
    port = reactor.listenTCP(0, served, interface="127.0.0.1")
    bodies.port = port.getHost().port
    yield bodies
    readers.stop()
    await port.stopListening()


def stalled_get(port: int, requests: int = 1, path: bytes = b"/blob") -> socket.socket:
    """A client that sends C{requests} GETs (pipelined) and reads nothing, with a small receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(PROMPTLY)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path * requests)
    return sock


def reset_promptly(sock: socket.socket) -> int:
    """
    The events C{sock} reports once the server ends the connection, reading
    nothing: an error and a hang-up (a reset). A close in order (a FIN)
    waits behind the bytes the client has not read, and never shows here.
    """
    waiting = select.poll()
    waiting.register(sock, select.POLLRDHUP)  # (POLLERR and POLLHUP are always reported)
    events = waiting.poll(PROMPTLY * 1000)
    return events[0][1] if events else 0


def read_to_the_end(sock: socket.socket) -> bytes:
    """
    What the client can still read after the reset: what came before it (or
    nothing: Linux may drop what was queued for the client when the reset
    comes), then the error.
    """
    parts = []
    try:
        while chunk := sock.recv(1 << 20):
            parts.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(parts)


async def assert_cut(sock: socket.socket, given: bytes) -> None:
    with sock:
        events = await deferToThread(reset_promptly, sock)
        assert events & (select.POLLERR | select.POLLHUP), f"not reset within {PROMPTLY} s (events {events:#x})"
        received = await deferToThread(read_to_the_end, sock)
    if not received:
        return
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:200]
    assert given.startswith(body), "only the blob's bytes, no other answer after them"


@pytest.mark.parametrize("requests", [1, 2], ids=["one", "pipelined"])
@pytest_twisted.ensureDeferred
async def test_a_read_that_fails_while_the_client_reads_nothing_cuts_the_connection(site, requests):
    given = os.urandom(GIVEN)
    site.next = FileBody(HeldRead(given), 0, LENGTH)
    reader = site.next.reader
    sock = stalled_get(site.port, requests)
    await reader.asked.addTimeout(PROMPTLY, reactor)  # its first piece is sent (the client's window is full)
    reader.pending.errback(ConnectionResetError("the storage's stream broke"))
    await assert_cut(sock, given)
    assert reader.closed
    assert site.logged == [(200, "unreadable")]  # the server cut it: not 499, a client gone


@pytest_twisted.ensureDeferred
async def test_a_read_that_raises_cuts_the_connection_and_answers_nothing_more(site):
    given = os.urandom(GIVEN)
    site.next = FileBody(RaisingRead(given), 0, LENGTH)
    await assert_cut(stalled_get(site.port, requests=2), given)
    assert site.next.reader.closed
    assert site.logged == [(200, "unreadable")]


@pytest_twisted.ensureDeferred
async def test_a_file_shorter_than_its_length_cuts_the_connection_on_plain_tcp(site, tmp_path):
    """sendfile(2) finds the file's end early (truncated behind the GET): the connection is reset, not closed in order."""
    given = os.urandom(GIVEN)
    path = tmp_path / "blob"
    path.write_bytes(given)
    site.next = FileBody(FileReader(open(path, "rb", buffering=0)), 0, LENGTH)
    await assert_cut(stalled_get(site.port, requests=2), given)
    assert site.next.reader.closed
    assert site.logged == [(200, "unreadable")]


@pytest_twisted.ensureDeferred
async def test_a_response_that_fails_after_its_head_is_cut_with_no_error_page_after_it(site):
    """Not Twisted's 500 page written as the body's rest, and the next pipelined request answered after it."""
    given = os.urandom(GIVEN)
    site.next = given
    await assert_cut(stalled_get(site.port, requests=2), given)
    assert site.logged == [(200, "failed")]


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_is_cut_and_logged_as_cut_not_gone(site):
    """connections.send_timeout: the access log says the server cut it (slow_reader), with the 200 it sent; not 499."""
    site.next = FileBody(Endless(b""), 0, LENGTH)
    sock = stalled_get(site.port)
    with sock:
        events = await deferToThread(reset_promptly, sock)
    assert events & (select.POLLERR | select.POLLHUP)
    assert site.next.reader.closed
    assert site.logged == [(200, "slow_reader")]
