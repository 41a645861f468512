# -*- test-case-name: tests.e2e.test_pull_paths -*-
"""
Twisted's TLS transport with fewer Python steps per byte.

L{twisted.protocols.tls.TLSMemoryBIOProtocol} encrypts an application write
16 KiB at a time: a slice copy, an C{SSL_write}, a 32 KiB C{BIO_read} and a
transport write per TLS record, and the TCP transport then joins those
pieces again. On a blob pull that Python work, not AES-GCM, is the limit
(see docs/benchmark.md). Here one C{SSL_write} seals a whole write (up to
L{WRITE_SIZE}, many records; it needs partial writes off, which
L{izreg.service.tls.build_context} sets) from a memoryview (no slice
copies), and one C{BIO_read} hands all the records to the transport as one
buffer.

Everything else is Twisted's: handshake, shutdown, the producer membrane and
back-pressure, buffering of writes while OpenSSL wants to read, error paths.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

#: the most plaintext sealed by one SSL_write (64 full records)
WRITE_SIZE = 1024 * 1024

#: one BIO_read takes a whole WRITE_SIZE worth of records (TLS adds at most
#: 256 bytes of header, tag and padding per 16 KiB record)
BIO_READ_SIZE = WRITE_SIZE + (WRITE_SIZE // 2**14 + 1) * 256

#: SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h), which pyOpenSSL sets on every
#: context: with it, SSL_write returns after each record
MODE_ENABLE_PARTIAL_WRITE = 0x1


class FastTLSTransport(BufferingTLSTransport):
    """L{BufferingTLSTransport} that seals and flushes large writes in one step each."""

    def _write(self, bytes):
        if self._lostTLSConnection:
            return
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
                self._flushSendBIO()

    def _flushSendBIO(self):
        while True:
            try:
                data = self._tlsConnection.bio_read(BIO_READ_SIZE)
            except WantReadError:
                return  # the send BIO is empty
            self.transport.write(data)
            if len(data) < BIO_READ_SIZE:
                return


class FastTLSFactory(TLSMemoryBIOFactory):
    """L{TLSMemoryBIOFactory} whose connections are L{FastTLSTransport}s."""

    protocol = FastTLSTransport
