# -*- test-case-name: tests.e2e.test_skopeo -*-
"""
Plain-HTTP listeners that answer a TLS handshake at once.

skopeo and podman with ``--tls-verify=false`` first try TLS on the port.
twisted.web would wait for a request line that never comes, and the client
would only fall back to plain HTTP after its 10 s timeout. A ClientHello
starts with the byte 0x16 (a TLS handshake record), which no HTTP method
does: we answer a plain 400, which Go's TLS client reports as "server gave
HTTP response to HTTPS client" and falls back from immediately.
"""

from __future__ import annotations

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

TLS_HANDSHAKE = 0x16
ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"This is a plain HTTP port of izreg; use http:// or the TLS listener.\r\n"
)


class _RefuseTLS(ProtocolWrapper):
    _checked = False

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
