# -*- test-case-name: tests.service.test_tls -*-
"""
The client certificate of a request, for the guard (L{izreg.http.guard}).

The TLS listener (L{izreg.service.tls}) verifies a device's certificate at
the handshake (chain to a device CA, validity); this reads what it verified
from a request's transport. Revocation and the subject are for
L{izreg.auth.devices.DeviceVerifier}.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ssl_ffi
from OpenSSL._util import lib as _ssl_lib


def peer_certificate(transport: object) -> x509.Certificate | None:
    """
    The client certificate of a connection (C{request.transport} in
    twisted.web/Klein), or C{None} when the transport is not TLS or the
    client sent none. Only certificates that passed the handshake checks
    (device CA, validity) get here; revocation and the subject are for
    L{izreg.auth.devices.DeviceVerifier}.
    """
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return None  # plain TCP (getHandle() is the socket) or no transport at all
    cached = getattr(transport, "peerCertificate", None)
    if cached is not None:
        return cached  # read at the handshake (izreg.service.tlsthreads), or by the connection's first request
    cert = verified_peer_certificate(connection)
    if hasattr(transport, "peerCertificate"):
        transport.peerCertificate = cert  # izreg.service.fasttls.FastTLSTransport keeps it per connection
    return cert


def verified_peer_certificate(connection: SSL.Connection) -> x509.Certificate | None:
    """
    The client certificate of a connection whose handshake is done, if
    OpenSSL verified it; it cannot change afterwards (no renegotiation).
    """
    cert = connection.get_peer_certificate(as_cryptography=True)
    if cert is not None and not _has_verified_chain(connection) and not _resumed_verified(connection):
        return None  # never trust a certificate OpenSSL did not verify (e.g. a context without device CAs)
    return cert


def _has_verified_chain(connection: SSL.Connection) -> bool:
    """
    Whether OpenSSL built a verified chain for the peer's certificate on this
    connection (what C{connection.get_verified_chain()} is non-empty for,
    without making a Python object of every certificate in it).
    """
    chain = _ssl_lib.SSL_get0_verified_chain(connection._ssl)
    return chain != _ssl_ffi.NULL and _ssl_lib.sk_X509_num(chain) > 0


def _resumed_verified(connection: SSL.Connection) -> bool:
    """
    Whether C{connection} resumed a session (a ticket of this context) whose
    full handshake verified the peer's certificate. OpenSSL keeps the peer
    certificate and the verify result in the session, but the verified chain
    only on the connection that built it; pyOpenSSL exposes neither
    C{SSL_session_reused} nor C{SSL_get_verify_result}, hence its bindings.
    """
    ssl = connection._ssl
    return bool(_ssl_lib.SSL_session_reused(ssl)) and _ssl_lib.SSL_get_verify_result(ssl) == 0  # X509_V_OK
