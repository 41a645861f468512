# -*- test-case-name: tests.e2e.test_upload_reset -*-
"""
A chunk for an upload session that another request holds, whose client is gone.

A client whose PATCH was cut (a reset, a timeout) retries at once; the server
may not have read the reset yet: the first request's connection is paused
while its body waits for the disk (L{izreg.storage.uploads.ChunkWriter}), or
the reset is simply still in the socket. The retry would be answered 416
"another request is writing to this upload" until then. Instead
(L{holder_gone}): the holder's socket is polled, without reading, for an
error, a hang-up or the peer's end of stream (C{POLLERR}, C{POLLHUP},
C{POLLRDHUP}); if its client is gone, the holder's connection is aborted
(its body is dropped, the session goes back to its last acknowledged offset)
and the retry waits until the session is free (L{freed}), then goes on from
there as any chunk would (a C{Content-Range} that does not start at that
offset is 416 with the C{Range} acknowledged).

The body sinks are tied to the connection they read from by
L{izreg.http.sinks} (L{hold}). Not done where the session is looked up off
the reactor (PostgreSQL metadata: the body already waits in a
L{izreg.http.pending.PendingBody}), nor for a store whose sessions do not
name their writer (the in-memory one of the tests): those keep the 416.
"""

from __future__ import annotations

import select
import weakref

from twisted.internet.defer import Deferred

#: a body sink -> the transport its bytes come from
_holders: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()

_GONE = select.POLLERR | select.POLLHUP | getattr(select, "POLLRDHUP", 0)
#: how often a retry looks whether the session is free, and for how long
POLL_INTERVAL = 0.01
WAIT = 30.0


def hold(sink, transport) -> None:
    """C{sink} is fed by C{transport} (the request's channel's)."""
    _holders[sink] = transport


def holder_gone(session):
    """The transport of the request holding C{session} if its client is gone, else C{None}."""
    writer = getattr(session, "writer", None)
    transport = _holders.get(writer) if writer is not None else None
    if transport is None:
        return None
    return transport if _gone(transport) else None


def _gone(transport) -> bool:
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
    poll.register(fd, select.POLLIN | _GONE)
    return any(events & _GONE for _, events in poll.poll(0))


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
