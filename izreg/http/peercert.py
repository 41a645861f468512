# -*- test-case-name: tests.service.test_tls -*-
"""
The client certificate of a request, for the guard (L{izreg.http.guard}).

The TLS listener (L{izreg.service.tls}) verifies a device's certificate at
the handshake (chain to a device CA, validity); this reads what it verified
from a request's transport. Revocation and the subject are for
L{izreg.auth.devices.DeviceVerifier}.
"""

from __future__ import annotations

import threading

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


#: how many parsed client certificates L{verified_peer_certificate} keeps
CACHED_CERTIFICATES = 1024

#: parsed client certificates by the SHA-256 of their DER: a device that
#: connects again gets the same object, not a new parse (and the device checks
#: remembered per certificate, L{izreg.auth.devices}, find it at once). Only
#: the parse is remembered; what decides whether the device may pull (the
#: handshake's verification, validity, revocation, CRLs) runs every time.
_certificates: dict[bytes, x509.Certificate] = {}
_certificates_lock = threading.Lock()  # the handshake threads (izreg.service.tlsthreads) read certificates too
_SHA256 = _ssl_lib.EVP_get_digestbyname(b"sha256")


def verified_peer_certificate(connection: SSL.Connection) -> x509.Certificate | None:
    """
    The client certificate of a connection whose handshake is done, if
    OpenSSL verified it; it cannot change afterwards (no renegotiation).
    """
    peer = _ssl_lib.SSL_get_peer_certificate(connection._ssl)  # a reference of ours (SSL_get1_peer_certificate)
    if peer == _ssl_ffi.NULL:
        return None
    try:
        if not _has_verified_chain(connection) and not _resumed_verified(connection):
            return None  # never trust a certificate OpenSSL did not verify (e.g. a context without device CAs)
        key = _fingerprint(peer)
        cert = _certificates.get(key) if key is not None else None
        if cert is None:
            cert = connection.get_peer_certificate(as_cryptography=True)
            if key is not None and cert is not None:
                _remember(key, cert)
        return cert
    finally:
        _ssl_lib.X509_free(peer)


def _fingerprint(peer) -> bytes | None:
    """SHA-256 of the certificate's DER (OpenSSL's C{X509_digest}), or C{None} if OpenSSL could not."""
    digest = _ssl_ffi.new("unsigned char[]", 64)
    length = _ssl_ffi.new("unsigned int *", 64)
    if _SHA256 == _ssl_ffi.NULL or _ssl_lib.X509_digest(peer, _SHA256, digest, length) != 1:
        _ssl_lib.ERR_clear_error()
        return None
    return _ssl_ffi.buffer(digest, length[0])[:]


def _remember(key: bytes, cert: x509.Certificate) -> None:
    with _certificates_lock:
        while len(_certificates) >= CACHED_CERTIFICATES:
            del _certificates[next(iter(_certificates))]  # the oldest
        _certificates[key] = cert


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
