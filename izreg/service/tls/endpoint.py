# -*- test-case-name: tests.service.test_tls -*-
"""L{TLSEndpoint}: any stream server endpoint (C{tcp:}, C{systemd:}, ...) wrapped in TLS."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator, IProtocolFactory, IReactorTime
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from izreg.service.proxyheader import ProxyHeaders, server_endpoint
from izreg.service.tls.admission import HandshakeAdmission
from izreg.service.tls.creator import ServerTLS
from izreg.service.tls.fallback import tls_factory
from izreg.service.tlsthreads import HandshakeThreads


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class TLSEndpoint:
    """Any stream server endpoint, with TLS on top (handshake steps on C{threads} while they run, else inline)."""

    wrapped: IStreamServerEndpoint
    creator: IOpenSSLServerConnectionCreator
    clock: IReactorTime | None = field(default=None)
    threads: HandshakeThreads | None = field(default=None)
    #: the cap on handshakes in progress (shared by the process's TLS listeners), or C{None}
    admission: HandshakeAdmission | None = field(default=None)

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        # izreg's ThreadedTLSFactory, or Twisted's stock one (izreg.service.tls.fallback)
        factory = tls_factory(self.creator, protocolFactory, self.clock, self.threads)
        if self.admission is not None:
            factory = self.admission.wrap(factory)
        return self.wrapped.listen(factory)


def tls_endpoint(reactor, description: str, tls: ServerTLS, threads: HandshakeThreads | None = None,
                 admission: HandshakeAdmission | None = None, headers: ProxyHeaders | None = None) -> TLSEndpoint:
    """
    C{--tls-listen DESCRIPTION}: a server endpoint string (C{tcp:5443:interface=...}) wrapped in TLS; a
    C{haproxy:} one reads its PROXY header before the TLS connection is built (with C{headers}:
    L{izreg.service.proxyheader}).
    """
    return TLSEndpoint(server_endpoint(reactor, description, headers), tls, clock=reactor, threads=threads,
                       admission=admission)
