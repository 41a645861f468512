# -*- test-case-name: tests.service.test_admission -*-
"""
TLS handshakes a few at a time: what a client that has not authenticated may hold.

A TLS connection in its handshake holds OpenSSL's C{SSL} object and its
buffers (~66 KiB each, measured: docs/design.rst), before the client has
shown anything. Bounded only by C{[connections] max_connections}, a thousand
silent clients would hold ~66 MB. Here at most C{[tls] max_handshakes}
connections of the TLS listeners are in their handshake at once
(L{HandshakeAdmission}); a connection accepted beyond that waits with its
reading paused (the kernel keeps whatever it sent) and no OpenSSL object (the
TLS protocol is built, not connected: a few hundred bytes of Python objects),
first come first served. A slot frees when its handshake completes or its
connection ends.

Time limits, both closing the connection (an abort: no TLS alert):

  - C{[tls] handshake_timeout}: from getting a slot to a completed handshake
    (a silent or slow client cannot keep a slot);
  - C{[connections] idle_timeout}: the longest a connection waits for a slot.

Waiting connections count in C{[connections] max_connections} and
C{max_per_address} as any other (the site admits them when they are
accepted; one lost while waiting is reported to the site's protocol, which
gives its count back).

The TLS protocol (izreg's, or Twisted's stock one: L{izreg.service.tls.fallback})
gets the real TCP transport, so nothing changes once it runs; until its
handshake is done the gate (L{_Gate}) passes it the bytes read and watches
for the end of the handshake, then gets out of the way (the transport's calls
go straight to the TLS protocol's methods). With handshake threads
(L{izreg.service.tlsthreads}) a handshake ends in a step's callback, which
the gate watches too.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol

#: a gate's states
_WAITING, _SHAKING, _DONE = 0, 1, 2


class HandshakeAdmission:
    """
    The slots of every TLS listener of the process (C{limit}; 0: no limit), and
    the connections waiting for one, in arrival order.

    @param clock: the reactor (C{callLater}).
    @param handshake_timeout: seconds from a slot to a completed handshake (0: no limit).
    @param wait_timeout: seconds a connection may wait for a slot (0: no limit).
    """

    def __init__(self, clock, limit: int, handshake_timeout: float = 10, wait_timeout: float = 60) -> None:
        self.clock = clock
        self.limit = limit
        self.handshake_timeout = handshake_timeout
        self.wait_timeout = wait_timeout
        self.in_progress = 0  # connections in their handshake (holding a slot)
        self.waiting: dict[_Gate, None] = {}  # insertion-ordered: first come, first served
        self.timed_out = 0  # connections closed for a handshake or a wait too long

    def wrap(self, factory: Factory) -> Factory:
        """The listener's factory: C{factory}'s (TLS) connections, admitted here."""
        if not self.limit:
            return factory
        return AdmissionFactory(self, factory)

    def _arrived(self, gate: "_Gate") -> None:
        if self.in_progress < self.limit and not self.waiting:
            self.in_progress += 1
            gate._start()
        else:
            self.waiting[gate] = None
            gate._wait()

    def _left(self, gate: "_Gate") -> None:
        """A waiting connection ended."""
        self.waiting.pop(gate, None)

    def _release(self) -> None:
        """A slot is free: the next waiting connection gets it."""
        self.in_progress -= 1
        while self.waiting and self.in_progress < self.limit:
            gate = next(iter(self.waiting))
            del self.waiting[gate]
            self.in_progress += 1
            gate._start()


class AdmissionFactory(Factory):
    """The TLS listener's factory, its connections behind a L{_Gate} each."""

    def __init__(self, admission: HandshakeAdmission, wrapped: Factory) -> None:
        self.admission = admission
        self.wrapped = wrapped

    def logPrefix(self):
        return self.wrapped.logPrefix()

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        # the TLS protocol and, under it, the site's (which counts the connection); no SSL object yet
        tls = self.wrapped.buildProtocol(addr)
        if tls is None:
            return None
        return _Gate(self.admission, tls)


class _Gate(Protocol):
    """One accepted connection: waits for a slot, then runs the TLS protocol over the transport."""

    _timer = None

    def __init__(self, admission: HandshakeAdmission, tls) -> None:
        self.admission = admission
        self.tls = tls
        self.state = _WAITING

    def makeConnection(self, transport) -> None:
        self.connected = 1
        self.transport = transport
        self.admission._arrived(self)

    def _wait(self) -> None:
        self.transport.pauseProducing()  # read nothing meanwhile: the kernel holds it
        self._timer = self._later(self.admission.wait_timeout)

    def _start(self) -> None:
        """A slot: the TLS protocol takes the connection (its SSL object is made now)."""
        self._cancel()
        self.state = _SHAKING
        tls, transport = self.tls, self.transport
        if getattr(type(tls), "_stepped", None) is not None:  # izreg.service.tlsthreads: handshakes end in a callback
            tls._stepped = self._stepped
        self._timer = self._later(self.admission.handshake_timeout)
        tls.makeConnection(transport)
        transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        tls = self.tls
        tls.dataReceived(data)
        if self.state == _SHAKING and getattr(tls, "_handshakeDone", False):
            self._done()

    def _stepped(self, ok, result) -> None:
        tls = self.tls
        type(tls)._stepped(tls, ok, result)
        if self.state == _SHAKING and getattr(tls, "_handshakeDone", False):
            self._done()

    def _done(self) -> None:
        """The handshake is complete: the slot is free, and the transport talks to the TLS protocol directly."""
        self._cancel()
        self.state = _DONE
        tls = self.tls
        self.dataReceived = tls.dataReceived
        self.connectionLost = tls.connectionLost
        if "_stepped" in tls.__dict__:
            del tls._stepped
        self.admission._release()

    def connectionLost(self, reason) -> None:
        self._cancel()
        state, self.state = self.state, _DONE
        if state == _WAITING:
            self.admission._left(self)
            # never connected to the TLS protocol: the site's protocol under it gives its connection count back
            self.tls.wrappedProtocol.connectionLost(reason)
            return
        if state == _SHAKING:
            self.admission._release()
        self.tls.connectionLost(reason)

    def _later(self, timeout: float):
        return self.admission.clock.callLater(timeout, self._expired) if timeout else None

    def _expired(self) -> None:
        self._timer = None
        self.admission.timed_out += 1
        self.transport.abortConnection()

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
