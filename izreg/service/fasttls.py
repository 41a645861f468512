# -*- test-case-name: tests.e2e.test_pull_paths -*-
"""
Twisted's TLS transport with fewer Python steps per byte.

L{twisted.protocols.tls.TLSMemoryBIOProtocol} encrypts an application write
16 KiB at a time: a slice copy, an C{SSL_write}, a 32 KiB C{BIO_read} and a
transport write per TLS record, and the TCP transport then joins those
pieces again. On a blob pull that Python work, not AES-GCM, is the limit
(see docs/benchmark.md). Here one C{SSL_write} seals L{WRITE_SIZE} of a
write (three records; it needs partial writes off, which
L{izreg.service.tls.build_context} sets) from a memoryview (no slice
copies), and one C{BIO_read} takes all the records: straight to the socket
through one reused buffer when the TCP transport has nothing buffered (no
bytes object per write, and no 128 KiB-per-reactor-turn sends, Twisted's
C{SEND_LIMIT}), else to the transport as one buffer.

Per connection (a device that connects for one request): Twisted declares
each of the TCP transport's interfaces on the TLS protocol in turn (nine
C{directlyProvides}, each a new zope.interface specification with its
resolution order, ~70 us), each replacing the one before; here only the
last, which is what those calls leave. A completed handshake is reported to
the connection creator's C{on_handshake} from here, not from an OpenSSL info
callback (which entered Python ~17 times a handshake).

A client's half-close is passed on to the protocol wrapped, as on plain TCP
(L{FastTLSTransport.readConnectionLost}, L{FastTLSTransport._flushReceiveBIO}):
a request already whole is answered in full, then the connection closed.

Everything else is Twisted's: handshake, shutdown, the producer membrane and
back-pressure, buffering of writes while OpenSSL wants to read, error paths.
"""

from __future__ import annotations

from OpenSSL.SSL import SENT_SHUTDOWN, TLS1_3_VERSION, Error, WantReadError, ZeroReturnError
from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

try:
    from twisted.protocols.tls import BufferingTLSTransport
except ImportError:  # pragma: no cover - another Twisted: izreg.service.tls.fallback serves the stock factory
    from twisted.protocols.tls import TLSMemoryBIOProtocol as BufferingTLSTransport

try:  # pyOpenSSL's own cffi binding of OpenSSL: BIO_read into a buffer of ours
    from OpenSSL._util import ffi as _ffi, lib as _lib

    _BIO_read = _lib.BIO_read
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL: Connection.bio_read
    _BIO_read = None

try:  # a fresh send BIO for a connection whose own has grown (FastTLSTransport.releaseBuffers)
    _BIO_new, _BIO_s_mem, _SSL_set_bio, _BIO_get_mem_data = _lib.BIO_new, _lib.BIO_s_mem, _lib.SSL_set_bio, _lib.BIO_get_mem_data
except (NameError, AttributeError):  # pragma: no cover - another pyOpenSSL: the send BIO keeps its size
    _SSL_set_bio = None

#: the most plaintext sealed by one SSL_write, sent by one send: three full
#: records, whose 49,218 bytes (TLS 1.3, AES-GCM) are one loopback segment.
#: As with sendfile(2) (izreg.http.responses.SENDFILE_SIZE), the client reads
#: each piece while the next is sealed; 1 MiB (64 records a send) pulled
#: 512 MiB by one client at 1430 MB/s, 64 KiB at 1700-1900, 48 KiB at
#: 1900 (docs/benchmark.md)
WRITE_SIZE = 48 * 1024

#: one BIO_read takes a whole WRITE_SIZE worth of records (TLS adds at most
#: 256 bytes of header, tag and padding per 16 KiB record)
BIO_READ_SIZE = WRITE_SIZE + (WRITE_SIZE // 2**14 + 1) * 256

#: records read from the send BIO at once past which it has grown beyond
#: one record's worth, so that L{FastTLSTransport.releaseBuffers} has
#: something to give back (a TLS record is at most 16 KiB and 256 bytes)
GROWN = 2**14 + 256

#: SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h), which pyOpenSSL sets on every
#: context: with it, SSL_write returns after each record
MODE_ENABLE_PARTIAL_WRITE = 0x1


@implementer(IHalfCloseableProtocol)
class FastTLSTransport(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} that seals and flushes large writes in one step
    each, and passes a client's half-close on to the protocol it wraps
    (L{readConnectionLost}).
    """

    #: the verified client certificate, once L{izreg.http.peercert.peer_certificate} has read it
    peerCertificate = None

    #: adapting the transport to an interface (twisted.web's C{isSecure()} asks for
    #: C{ISSLTransport} twice a request) looks for C{__conform__}, which
    #: C{ProtocolWrapper.__getattr__} would look up on the wrapped protocol and
    #: raise C{AttributeError} for: neither defines one
    __conform__ = None

    #: while set, C{_write} leaves the records it seals in OpenSSL's send BIO
    #: (see L{loseConnection})
    _holdRecords = False
    #: records sealed while holding, not yet read from the send BIO
    _heldRecords = False
    #: the send BIO has held more than a record since it was last replaced (L{releaseBuffers})
    _bioGrown = False
    #: the client closed its side of the TCP connection (L{readConnectionLost})
    _readClosed = False
    #: the client's close_notify came, and the connection goes on (TLS 1.3: L{_flushReceiveBIO})
    _peerClosedTLS = False

    def makeConnection(self, transport):
        """
        Twisted's C{TLSMemoryBIOProtocol.makeConnection}, but the transport's
        interfaces are declared in one step: Twisted's loop calls
        C{directlyProvides(self, interface)} for each, and each call replaces
        the one before, so the last is what the protocol provides until
        C{ProtocolWrapper.makeConnection} declares all of the transport's;
        when that follows at once (a wrapped protocol to connect: every
        server connection), nothing asks in between, so only it declares.
        """
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        last = _last_interface(transport) if not self._connectWrapped else None
        if last is not None:
            directlyProvides(self, last)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def _checkHandshakeStatus(self):
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if self._handshakeDone and not done:
            self.factory.handshakeCompleted()

    def readConnectionLost(self):
        """
        The client closed its side of the TCP connection (after a
        close_notify over TLS 1.3 the protocol wrapped was told then,
        L{_flushReceiveBIO}; under TLS 1.2 Twisted's TLS protocol has already
        ended the connection). Twisted's TLS protocol is not
        half-closeable, so the TCP transport ended the whole connection, and
        a device that half-closed after its request lost the rest of its
        response, though plain HTTP answers it in full (L{izreg.http.bodies}).
        Now the protocol wrapped is told, as on plain TCP: a request already
        whole is answered, then the connection closed (as nginx and Go's
        net/http do; RFC 8446 6.1: a closure alert does not close the read
        side; a FIN without one only means no more can come, and an HTTP
        request carries its own length). Before the handshake is done, or
        under a protocol that is not half-closeable, the connection is closed
        (after what is already written).
        """
        self._readClosed = True
        if self._peerClosedTLS and not self.disconnecting:
            return  # its close_notify came first: the protocol wrapped was told then
        if self.disconnecting:
            # closing already: the close_notify is out (or goes after the writes before it, and
            # L{_shutdownTLS} then closes), and the client's, which Twisted waits for, cannot come now
            if self._producer is None and not self._appSendBuffer:
                self.transport.loseConnection()
            return
        wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if wrapped is None or not self._handshakeDone or self._lostTLSConnection:
            self.transport.loseConnection()
            return
        wrapped.readConnectionLost()

    def writeConnectionLost(self):
        pass  # the server never half-closes

    def _flushReceiveBIO(self):
        """
        Twisted's, but a client's close_notify over TLS 1.3 closes only the
        client's side, as a FIN does (L{readConnectionLost}): the protocol
        wrapped is told (C{readConnectionLost}), a request already whole is
        answered in full, then the server sends its close_notify and closes.
        A client that sends its request, then close_notify, then FIN got its
        response cut: Twisted's TLS protocol answers a close_notify with its
        own at once and ends the connection, and OpenSSL seals nothing after
        that. RFC 8446 6.1: a closure alert closes only the writing side of its
        sender, and nginx and Go's net/http answer such a request in full.
        Twisted's way still holds under TLS 1.2 (RFC 5246 7.2.1: answer the
        close_notify at once, discarding pending writes), once the server's own
        close_notify is out (it waited for the client's: now both are), and
        under a protocol that is not half-closeable. What comes after a
        close_notify is not read (RFC 8446 6.1: it MUST be ignored).
        """
        while not self._lostTLSConnection:
            try:
                bytes = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if self._peerClosedTLS:
                    break  # (the receive BIO's end, read again when the connection is lost)
                wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
                connection = self._tlsConnection
                if (wrapped is None or connection.get_protocol_version() != TLS1_3_VERSION
                        or connection.get_shutdown() & SENT_SHUTDOWN):
                    self._shutdownTLS()  # Twisted's: the connection ends
                    self._tlsShutdownFinished(None)
                    continue
                self._peerClosedTLS = True
                self.dataReceived = _ignore  # (an instance attribute: the class's stays Twisted's)
                if not self.disconnecting:
                    wrapped.readConnectionLost()
                break
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, bytes)
        self._flushSendBIO()

    def _tlsShutdownFinished(self, reason):
        """
        Twisted's, but the TCP transport closes once it has sent what is
        sealed (the alert last) even while a producer is registered: none can
        write any more. Twisted's TCP transport, asked to close while it had
        paused its producer for a full socket, resumes the producer when the
        socket drains instead of closing, and as every write is then dropped
        no write ever comes to close it: a TLS 1.2 client's close_notify in
        the middle of a blob (or a TLS error there) left the connection open
        until C{connections.send_timeout}.
        """
        if self._producer is not None and self.transport is not None:
            self.transport.unregisterProducer()  # (Twisted's unregisterProducer does it again later: a no-op)
        super()._tlsShutdownFinished(reason)

    def _shutdownTLS(self):
        super()._shutdownTLS()
        if self._readClosed and self.transport.connected and not self.transport.disconnecting:
            # Twisted waits for the client's close_notify, which cannot come any more: close now
            self.transport.loseConnection()

    def loseConnection(self):
        """
        Twisted's, but the application's last writes (the aggregated small
        writes) and the TLS close alert leave in one send: the records the
        flush seals stay in the send BIO until C{_shutdownTLS} flushes it with
        the alert (one system call and one segment less for a connection that
        ends after its response). Only where Twisted shuts TLS down at once:
        handshake done, no writes waiting for OpenSSL, no producer.
        """
        aggregator = getattr(self, "_aggregator", None)
        if (aggregator is not None and self._handshakeDone and not self.disconnecting and self.connected
                and not self._appSendBuffer and self._producer is None):
            self._holdRecords = True
            try:
                aggregator.flush()
            finally:
                self._holdRecords = False
        super().loseConnection()
        if self._heldRecords and self._tlsConnection is not None:
            self._flushSendBIO()  # Twisted did not shut down after all: never leave records behind

    def _write(self, bytes):
        if self._lostTLSConnection:
            return
        hold = self._holdRecords
        view = memoryview(bytes)
        alreadySent, total = 0, len(view)
        while alreadySent < total:
            try:
                sent = self._tlsConnection.send(view[alreadySent:alreadySent + WRITE_SIZE])
            except WantReadError:
                # as Twisted does: keep the rest until OpenSSL has read what it needs
                self._bufferedWrite(bytes[alreadySent:])
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                break
            else:
                alreadySent += sent
                if hold:
                    self._heldRecords = True
                else:
                    self._flushSendBIO()
        if self._heldRecords and self._appSendBuffer:
            self._flushSendBIO()  # what OpenSSL sealed before it wanted to read goes now, as it would have

    def _flushSendBIO(self):
        self._heldRecords = False
        if _BIO_read is not None:
            self._sendBIO(self.transport)
            return
        while True:
            try:
                data = self._tlsConnection.bio_read(BIO_READ_SIZE)
            except WantReadError:
                return  # the send BIO is empty
            self.transport.write(data)
            if len(data) < BIO_READ_SIZE:
                return

    def _sendBIO(self, transport) -> None:
        """
        The records from OpenSSL's send BIO, read through one reused buffer:
        while the TCP transport has nothing buffered, straight to its socket
        (no bytes object, no 128 KiB-per-turn sends); what the socket does not
        take now, and all of it when the transport has data buffered, is
        closing or is not plain TCP, is handed to the transport's own write,
        which sends it (and pauses the producer) as usual. (pyOpenSSL's
        C{bio_read} would allocate a C{BIO_READ_SIZE} buffer per call, a large
        malloc that makes glibc consolidate its free lists, and raise
        C{WantReadError} for an empty BIO, as every connection's end finds it.)
        """
        global _records
        if _records is None:
            _records = _ffi.new("char[]", BIO_READ_SIZE)
        bio = self._tlsConnection._from_ssl
        while True:
            n = _BIO_read(bio, _records, BIO_READ_SIZE)
            if n <= 0:
                return  # the send BIO is empty
            if n > GROWN:
                self._bioGrown = True
            view = memoryview(_ffi.buffer(_records, n))
            sent = 0
            if _direct(transport):
                try:
                    sent = transport.socket.send(view)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass  # the transport's own write finds the error and closes
            if sent < n:
                transport.write(view[sent:].tobytes())
            if n < BIO_READ_SIZE:
                return

    def releaseBuffers(self) -> bool:
        """
        Give back the memory of a send BIO that has grown, when it is empty
        (L{_bioGrown}): C{True} if it did. OpenSSL's memory BIO
        keeps the size of the most it ever held: a whole L{WRITE_SIZE} of
        records, ~64 KiB per connection that has sent a blob, for as long as
        the connection lives, though every record is read out at once. Here
        the connection's send BIO is replaced by a new, empty one
        (C{SSL_set_bio}; OpenSSL frees the old one). Called when a blob
        response ends (L{izreg.http.responses.FileSender}), and when its
        client has read nothing for a while (L{izreg.http.limits.SlowReaders}):
        not after every write, as the next large write would grow the new
        BIO again, ~7 us per 48 KiB sealed.
        """
        connection = self._tlsConnection
        if (not self._bioGrown or _SSL_set_bio is None or connection is None or not self._handshakeDone
                or self._lostTLSConnection
                or self._heldRecords or _BIO_get_mem_data(connection._from_ssl, _ffi.NULL) != 0):  # (the bytes it holds)
            return False
        fresh = _BIO_new(_BIO_s_mem())
        if fresh == _ffi.NULL:
            return False
        _SSL_set_bio(connection._ssl, connection._into_ssl, fresh)  # same read BIO: only the send BIO changes
        connection._from_ssl = fresh
        self._bioGrown = False
        return True


def _ignore(data: bytes) -> None:
    """The bytes a client sends after its close_notify (L{FastTLSTransport._flushReceiveBIO}): not kept, not read."""


#: the send BIO's records on their way to the socket (the reactor's thread only; allocated on first use)
_records = None


def _direct(transport) -> bool:
    """Whether records may go straight to C{transport}'s socket: plain TCP, connected, nothing buffered."""
    return (type(transport) is tcp.Server and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer))


#: the last interface each transport's specification yields (see L{FastTLSTransport.makeConnection})
_LAST_INTERFACE: dict = {}


def _last_interface(transport):
    spec = providedBy(transport)
    try:
        return _LAST_INTERFACE[spec]
    except KeyError:
        last = None
        for last in spec:
            pass
        if len(_LAST_INTERFACE) < 64:  # one entry per kind of transport: a handful
            _LAST_INTERFACE[spec] = last
        return last


class FastTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} whose connections are L{FastTLSTransport}s; each
    completed handshake calls the connection creator's C{on_handshake} (when it
    has one, e.g. L{izreg.service.tls.ServerTLS}: the metrics count them).
    """

    protocol = FastTLSTransport

    def __init__(self, contextFactory, isClient, wrappedFactory, clock=None):
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self._creator = contextFactory

    def handshakeCompleted(self) -> None:
        on_handshake = getattr(self._creator, "on_handshake", None)
        if on_handshake is not None:
            on_handshake()
