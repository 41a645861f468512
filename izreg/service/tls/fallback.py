# -*- test-case-name: tests.service.test_tls_fallback -*-
"""
The TLS listener's protocol factory: L{izreg.service.tlsthreads.ThreadedTLSFactory}
(over L{izreg.service.fasttls}) while this Twisted is the one they were
written for, else Twisted's stock
L{TLSMemoryBIOFactory} (checked once, with one warning: see
L{izreg.http.internals}; C{IZREG_STOCK_TWISTED=1} forces the stock one).

The stock factory serves the same TLS (the same connection creator, so the
same context, device CAs, revocations and SIGHUP reloads); what it lacks is
speed, the handshake threads (its handshakes run on the reactor) and the
handshake counter of the metrics (C{on_handshake}).
"""

from __future__ import annotations

import functools

from twisted.protocols.tls import TLSMemoryBIOFactory

from izreg.http.internals import Needs, fast_path

_TLS, _TCP = "twisted.protocols.tls", "twisted.internet.tcp"

#: every private name L{izreg.service.fasttls} uses (tests.service.test_tls_fallback keeps this list complete);
#: the Twisted methods it copies must be unchanged (C{exactly}), the ones it calls must still exist
FASTTLS_NEEDS = (
    Needs(_TLS, "TLSMemoryBIOProtocol.makeConnection", (
        "factory", "_creatorCallable", "_tlsConnection", "_appSendBuffer", "providedBy", "directlyProvides",
        "Protocol", "makeConnection", "registerProtocol", "_connectWrapped", "ProtocolWrapper",
        "_checkHandshakeStatus"), exactly=True),
    Needs(_TLS, "TLSMemoryBIOProtocol._write", (
        "_lostTLSConnection", "len", "_tlsConnection", "send", "_flushSendBIO", "WantReadError",
        "_bufferedWrite", "Error", "_tlsShutdownFinished", "Failure"), exactly=True),
    Needs(_TLS, "TLSMemoryBIOProtocol._flushSendBIO", (
        "_tlsConnection", "bio_read", "transport", "write", "WantReadError"), exactly=True),
    Needs(_TLS, "TLSMemoryBIOProtocol.write", ("_write",)),
    Needs(_TLS, "TLSMemoryBIOProtocol.__init__", ("_connectWrapped",)),
    Needs(_TLS, "TLSMemoryBIOProtocol._handshakeDone"),
    Needs(_TLS, "TLSMemoryBIOProtocol._lostTLSConnection"),
    Needs(_TLS, "TLSMemoryBIOProtocol._bufferedWrite"),
    Needs(_TLS, "TLSMemoryBIOProtocol._tlsShutdownFinished"),
    Needs(_TLS, "BufferingTLSTransport"),
    Needs(_TLS, "BufferingTLSTransport.loseConnection", ("_aggregator", "flush")),
    Needs(_TLS, "TLSMemoryBIOProtocol.loseConnection", (
        "disconnecting", "connected", "_handshakeDone", "_appSendBuffer", "_producer", "_shutdownTLS")),
    Needs(_TLS, "TLSMemoryBIOFactory.__init__", ("_creatorCallable",)),
    Needs(_TLS, "TLSMemoryBIOFactory.registerProtocol"),
    Needs("twisted.protocols.policies", "ProtocolWrapper.makeConnection"),
    Needs("twisted.internet.protocol", "Protocol.makeConnection"),
    Needs(_TCP, "Server.connected"),
    Needs(_TCP, "Server.disconnecting"),
    Needs(_TCP, "Server._writeDisconnected"),
    Needs(_TCP, "Server.offset"),
    Needs(_TCP, "Server.dataBuffer"),
    Needs(_TCP, "Connection.__init__", ("socket",)),
    Needs("twisted.internet.abstract", "FileDescriptor.write", ("_tempDataLen", "_writeDisconnected")),
    Needs("OpenSSL.SSL", "Connection.__init__", ("_from_ssl", "_into_ssl", "_ssl", "SSL_set_bio")),
    Needs("OpenSSL.SSL", "Connection.send"),
    Needs("OpenSSL.SSL", "Connection.bio_read"),
)

#: and what L{izreg.service.tlsthreads} adds: its handshake step replays these two
TLSTHREADS_NEEDS = (
    Needs(_TLS, "TLSMemoryBIOProtocol.dataReceived", (
        "_tlsConnection", "bio_write", "_handshakeDone", "_checkHandshakeStatus", "_appSendBuffer",
        "_unbufferPendingWrites", "_flushReceiveBIO"), exactly=True),
    Needs(_TLS, "TLSMemoryBIOProtocol._checkHandshakeStatus", (
        "_aborted", "_tlsConnection", "do_handshake", "_handshakeDone", "IHandshakeListener", "providedBy",
        "wrappedProtocol", "handshakeCompleted", "WantReadError", "_flushSendBIO", "Error", "_tlsShutdownFinished",
        "Failure"), exactly=True),
    Needs(_TLS, "TLSMemoryBIOProtocol._aborted"),
    Needs(_TLS, "TLSMemoryBIOProtocol._unbufferPendingWrites", ("_appSendBuffer", "_write")),
    Needs(_TLS, "TLSMemoryBIOProtocol._flushReceiveBIO"),
    Needs(_TLS, "TLSMemoryBIOProtocol.loseConnection"),
    Needs(_TLS, "TLSMemoryBIOProtocol.abortConnection"),
    Needs(_TLS, "TLSMemoryBIOProtocol.connectionLost"),
)


def tls_factory_class(**check) -> type:
    """The factory class the listener uses here (C{check}: L{fast_path}'s C{environ}, C{import_module})."""
    if not fast_path("TLS", "TLSMemoryBIOFactory", FASTTLS_NEEDS + TLSTHREADS_NEEDS, **check):
        return TLSMemoryBIOFactory
    from izreg.service.tlsthreads import ThreadedTLSFactory

    return ThreadedTLSFactory


#: what this process's listeners use (checked once, at the first TLS listener)
chosen_factory_class = functools.cache(tls_factory_class)


def tls_factory(creator, wrapped, clock, threads) -> TLSMemoryBIOFactory:
    """
    The listener's factory: izreg's, with the handshake steps on C{threads}
    (L{izreg.service.tlsthreads}), or Twisted's stock one (handshakes on the reactor).
    """
    chosen = chosen_factory_class()
    if chosen is TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(creator, False, wrapped, clock=clock)
    return chosen(creator, False, wrapped, clock=clock, threads=threads)
