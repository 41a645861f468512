# -*- test-case-name: tests.e2e.test_skopeo -*-
"""
Plain-HTTP listeners that answer a TLS handshake at once.

skopeo and podman with ``--tls-verify=false`` first try TLS on the port.
twisted.web would wait for a request line that never comes, and the client
would only fall back to plain HTTP after its 10 s timeout. A ClientHello
starts with the byte 0x16 (a TLS handshake record), which no HTTP method
does: we answer a plain 400, which Go's TLS client reports as "server gave
HTTP response to HTTPS client" and falls back from immediately.

The other way round (L{plain_on_tls}, checked by the TLS listener's gate:
L{izreg.service.tls.admission}): plain HTTP sent to a TLS port gets a 400
with an OCI error saying to use https://, as Go's net/http answers, instead
of an empty reply.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import alsoProvides

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.errors import error_body

TLS_HANDSHAKE = 0x16
ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"This is a plain HTTP port of izreg; use http:// or the TLS listener.\r\n"
)

#: the longest HTTP method looked at (OPTIONS, CONNECT: 7): a few bytes, never more
_METHOD_MAX = 15

_ON_TLS_BODY = error_body(RegistryError(ErrorCode.UNSUPPORTED, None, "this port speaks TLS: use https://"))
#: the answer to plain HTTP on a TLS port: an OCI error, so registry clients show its message
ON_TLS_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_ON_TLS_BODY) + _ON_TLS_BODY
)


def plain_on_tls(first: bytes) -> bool:
    """
    Whether the first bytes a client sent to a TLS port start an HTTP request
    line (ASCII letters, then a space) rather than a TLS record (a handshake
    starts with 0x16; no record type or SSLv2 hello is a letter). Only the
    first C{_METHOD_MAX + 1} bytes are looked at; a chunk that ends within
    the letters counts as a request too.
    """
    head = first[:_METHOD_MAX + 1]
    method, space, _ = head.partition(b" ")
    return bool(method) and method.isalpha() and (bool(space) or len(head) == len(first) <= _METHOD_MAX)


class _RefuseTLS(ProtocolWrapper):
    _checked = False

    def makeConnection(self, transport) -> None:
        super().makeConnection(transport)
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):  # a client's half-close is the channel's
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        if not self._checked and data:
            self._checked = True
            if data[0] == TLS_HANDSHAKE:
                self.transport.write(ANSWER)
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class RefuseTLSFactory(WrappingFactory):
    """Wrap a plain HTTP factory so TLS handshakes get an immediate plain answer."""

    protocol = _RefuseTLS
