# -*- test-case-name: tests.service.test_tlsthreads -*-
"""
OpenSSL's handshake steps on worker threads: the second CPU does the crypto.

A TLS handshake is a few calls into OpenSSL (key exchange, the server's
signature, verifying and parsing a device certificate, sealing session
tickets): ~0.3-0.5 ms each on this machine, all of it in C, and cffi
releases the GIL around those calls. On the reactor they run one at a time;
here each handshake step (the bytes just received written into the
connection's receive BIO, then C{do_handshake}) runs on a small thread pool
(L{HandshakeThreads}, sized to the CPUs, started and stopped with the
service) while the reactor serves other connections.

One thread at a time touches a connection's C{SSL} object: while a step runs,
the transport's reading is paused, application writes are kept in Twisted's
buffer of writes waiting for the handshake, and a C{loseConnection},
C{abortConnection} or C{connectionLost} that arrives meanwhile is held and
carried out when the step is back on the reactor (which then does nothing
else with the step's result). The step's outcome goes through Twisted's own
paths: more bytes to send and wait, the handshake done (then the application
data that came with the last flight), or the error through
C{_tlsShutdownFinished} (the alert sent, the reason kept for the
application's C{connectionLost}), as C{_checkHandshakeStatus} does inline.

OpenSSL calls the context's verify callback during a step, on the worker
thread: L{hold_logs} keeps what it logs and the reactor emits it, in order,
before it handles the step's result (L{emit}).

Without running threads (the pool stopped, C{[tls] handshake_threads = 0}, or a
protocol built without a pool, as tests do) every step runs inline as before.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from OpenSSL.SSL import Error, WantReadError
from twisted.application.service import Service
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from izreg.http.peercert import verified_peer_certificate
from izreg.service.fasttls import FastTLSFactory, FastTLSTransport

_held = threading.local()


def emit(method: Callable[..., None], format: str, **fields: Any) -> None:
    """C{method(format, **fields)} (a L{twisted.logger.Logger} method) now, or, on a handshake thread, once back on the reactor."""
    held = getattr(_held, "events", None)
    if held is None:
        method(format, **fields)
    else:
        held.append((method, format, fields))


def hold_logs() -> list:
    """Keep what L{emit} is given on this thread (until L{release_logs}); returns the list."""
    _held.events = []
    return _held.events


def release_logs() -> None:
    _held.events = None


def default_size() -> int:
    """Threads for handshakes: one per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class HandshakeThreads(Service):
    """
    The handshake thread pool, as a service: started with it, stopped with it.
    L{submit} hands a step to a thread and its result back to the reactor.
    """

    name = "tls-handshake-threads"

    def __init__(self, reactor, size: int | None = None) -> None:
        self.reactor = reactor
        self.size = default_size() if size is None else size
        self.pool = ThreadPool(self.size, self.size, "izreg-tls") if self.size > 0 else None

    @property
    def usable(self) -> bool:
        pool = self.pool
        return pool is not None and pool.started and not pool.joined

    def startService(self) -> None:
        super().startService()
        if self.pool is not None:
            self.pool.start()

    def stopService(self):
        super().stopService()
        if self.pool is not None and self.pool.started:
            self.pool.stop()

    def submit(self, step: Callable[[], Any], done: Callable[[bool, Any], None]) -> None:
        """C{step()} on a thread; then C{done(ok, result or Failure)} on the reactor."""
        callFromThread = self.reactor.callFromThread
        self.pool.callInThreadWithCallback(lambda ok, result: callFromThread(done, ok, result), step)


#: outcomes of a handshake step
_WANT, _DONE, _ERROR = 0, 1, 2


class ThreadedTLSTransport(FastTLSTransport):
    """L{FastTLSTransport} whose handshake steps run on the factory's L{HandshakeThreads}, when they run."""

    #: a handshake step is on a thread: nothing else may touch C{_tlsConnection}
    _stepping = False
    #: what came in while the step ran: ("lose",), ("abort",), ("lost", reason)
    _held_close: tuple | None = None

    def dataReceived(self, data):
        threads = self.factory.threads
        if self._handshakeDone or self._aborted or threads is None or not threads.usable:
            super().dataReceived(data)
            return
        self._stepping = True
        self.transport.pauseProducing()
        threads.submit(lambda: _step(self._tlsConnection, data), self._stepped)

    def _stepped(self, ok: bool, result) -> None:
        """Back on the reactor with a step's outcome."""
        self._stepping = False
        if not ok:  # an exception outside OpenSSL's errors: as if do_handshake had raised it
            result = (_ERROR, result, [])
        outcome, value, logs = result  # value: a Failure, or when done the verified client certificate
        for method, format, fields in logs:
            method(format, **fields)
        held, self._held_close = self._held_close, None
        if held is not None:
            # the application or the transport ended the connection meanwhile: that wins
            if held[0] == "lost":
                super().connectionLost(held[1])
            elif held[0] == "abort":
                super().abortConnection()
            else:
                super().loseConnection()
            return
        if self._aborted or self._lostTLSConnection:
            return
        self.transport.resumeProducing()
        if outcome == _WANT:
            self._flushSendBIO()
            return
        if outcome == _ERROR:
            self._tlsShutdownFinished(value if isinstance(value, Failure) else Failure(value))
            return
        # as TLSMemoryBIOProtocol._checkHandshakeStatus, then the rest of its dataReceived
        self._handshakeDone = True
        self.peerCertificate = value  # the step's verified client certificate (or None)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        self.factory.handshakeCompleted()
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        self._flushReceiveBIO()

    def _write(self, bytes):
        if self._stepping:
            self._bufferedWrite(bytes)  # sent when the handshake is done, as Twisted does with WantReadError
            return
        super()._write(bytes)

    def loseConnection(self):
        if self._stepping:
            if self._held_close is None:
                self._held_close = ("lose",)
            return
        super().loseConnection()

    def abortConnection(self):
        if self._stepping:
            if self._held_close is None or self._held_close[0] == "lose":
                self._held_close = ("abort",)
            return
        super().abortConnection()

    def connectionLost(self, reason):
        if self._stepping:
            self._held_close = ("lost", reason)
            return
        super().connectionLost(reason)


def _step(connection, data: bytes):
    """On a handshake thread: the received bytes into OpenSSL, one handshake step; what came of it."""
    logs = hold_logs()
    try:
        connection.bio_write(data)
        connection.do_handshake()
    except WantReadError:
        return _WANT, None, logs
    except Error:
        return _ERROR, Failure(), logs
    finally:
        release_logs()
    # done: the verified client certificate, parsed here rather than by the first request on the reactor
    return _DONE, verified_peer_certificate(connection), logs


class ThreadedTLSFactory(FastTLSFactory):
    """L{FastTLSFactory} whose connections run their handshake steps on C{threads} (inline when C{None} or not running)."""

    protocol = ThreadedTLSTransport

    def __init__(self, contextFactory, isClient, wrappedFactory, clock=None, threads: HandshakeThreads | None = None):
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.threads = threads
