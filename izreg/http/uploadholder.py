# -*- test-case-name: tests.e2e.test_upload_reset -*-
"""
A chunk for an upload session that another request holds, whose client is gone.

A client whose PATCH was cut (a reset, a timeout) retries at once; the server
may not have read the reset yet: the first request's connection is paused
while its body waits for the disk (L{izreg.storage.uploads.ChunkWriter}), or
the reset is simply still in the socket. The retry would be answered 416
"another request is writing to this upload" until then. Instead
(L{holder_gone}): the holder's socket is polled, without reading, for an
error or a hang-up (C{POLLERR}, C{POLLHUP}: a reset), or the peer's end of
stream (C{POLLRDHUP}) before the whole body: if its client is gone, the
holder's connection is aborted (its body is dropped, the session goes back
to its last acknowledged offset) and the retry waits until the session is
free (L{freed}), then goes on from there as any chunk would (a
C{Content-Range} that does not start at that offset is 416 with the
C{Range} acknowledged).

A client that half-closes (C{shutdown(SHUT_WR)}) once its whole body is sent
is not gone: it still reads the answer (L{izreg.http.bodies.RegistryChannel.readConnectionLost}),
so its request keeps the session. "Whole" counts the bytes Twisted read and
those still in the socket (C{FIONREAD}) against the C{Content-Length}; a
chunked body's end is not looked for in the socket (an end of stream before
Twisted read it counts as gone), nor is a half-close kept on a TLS
connection (Twisted's TLS ends the connection at the client's end of stream).

The body sinks are tied to the connection they read from by
L{izreg.http.sinks} (L{hold}). Where the session is looked up off the
reactor (PostgreSQL metadata) the body already waits in a
L{izreg.http.pending.PendingBody} for that; a retry that takes over waits
in a second one (the handler waits for the last: L{izreg.http.app}). Not
done for a store whose sessions do not name their writer (the in-memory one
of the tests): it keeps the 416.
"""

from __future__ import annotations

import array
import fcntl
import select
import termios
import weakref

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol

#: a body sink -> the transport its bytes come from
_holders: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()
#: a body sink -> the HTTP channel reading its request (how much of the body is still to come)
_channels: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()

_GONE = select.POLLERR | select.POLLHUP
_END = getattr(select, "POLLRDHUP", 0)  # the peer's end of stream: a half-close, or a close
#: how often a retry looks whether the session is free, and for how long
POLL_INTERVAL = 0.01
WAIT = 30.0


def hold(sink, transport, channel=None) -> None:
    """C{sink} is fed by C{transport} (the request's C{channel}'s)."""
    _holders[sink] = transport
    if channel is not None:
        _channels[sink] = channel


def holder_gone(session):
    """The transport of the request holding C{session} if its client is gone, else C{None}."""
    writer = getattr(session, "writer", None)
    transport = _holders.get(writer) if writer is not None else None
    if transport is None:
        return None
    return transport if _gone(transport, _channels.get(writer)) else None


def _gone(transport, channel=None) -> bool:
    tcp = transport
    while not hasattr(tcp, "disconnected"):  # TLS: the TCP transport (a FileDescriptor) under it
        tcp = getattr(tcp, "transport", None)
        if tcp is None:
            return False
    if tcp.disconnected or not getattr(tcp, "connected", False) or getattr(tcp, "disconnecting", False):
        return True  # lost or closing already (its socket is gone then): its body is being dropped
    sock = getattr(tcp, "socket", None)
    if sock is None:
        return True
    try:
        fd = sock.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN | _GONE | _END)
    events = 0
    for _, happened in poll.poll(0):
        events |= happened
    if events & _GONE:
        return True  # a reset, or both ways shut
    if events & _END:  # a close, or a half-close once the whole body is sent (its client still reads)
        return not (_half_closeable(tcp) and _body_whole(channel, sock))
    return False


def _half_closeable(tcp) -> bool:
    """
    Whether the server keeps the connection at the peer's end of stream: C{tcp}
    (the TCP transport L{_gone} found) hands it to a half-closeable protocol
    (plain TCP to a L{RegistryChannel}, directly or through the port's wrapper).
    """
    return IHalfCloseableProtocol.providedBy(getattr(tcp, "protocol", None))


def _body_whole(channel, sock) -> bool:
    """Whether C{channel}'s request body is all in: read by Twisted, or still in C{sock}."""
    if channel is None:
        return False
    if getattr(channel, "_handlingRequest", False):
        return True  # read whole, being answered
    remaining = getattr(getattr(channel, "_transferDecoder", None), "contentLength", None)
    if remaining is None:
        return False  # chunked (or unknown): its end is not looked for in the socket
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
    except OSError:
        return False
    return queued[0] >= remaining


def freed(session, transport, busy: Exception, clock=None) -> Deferred:
    """
    Abort C{transport} (the gone holder of C{session}); a Deferred that fires
    once the session is free, or fails with C{busy} (the 416 it would have
    been) if it is not after L{WAIT} s.
    """
    if clock is None:
        from twisted.internet import reactor as clock
    if getattr(transport, "connected", True) and not getattr(transport, "disconnecting", False):
        transport.abortConnection()
    d = Deferred()
    deadline = clock.seconds() + WAIT

    def look() -> None:
        if not session.busy:
            d.callback(None)
        elif clock.seconds() > deadline:
            d.errback(busy)
        else:
            clock.callLater(POLL_INTERVAL, look)

    clock.callLater(0, look)
    return d
