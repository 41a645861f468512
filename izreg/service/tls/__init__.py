# -*- test-case-name: tests.service.test_tls -*-
"""
The TLS listener: server certificate, optional device (client) certificates.

One port serves both kinds of caller. People and CI authenticate with access
keys and send no certificate; edge devices send a certificate issued by a
device CA. So the server I{requests} a client certificate (and advertises
the device CAs in the CertificateRequest, which Go clients such as docker
need before they send theirs) but does not I{require} one.

Where a certificate is refused:

  - at the handshake, when one is presented that does not chain to a device
    CA or is outside its validity window (OpenSSL's own checks; the reason is
    logged here, the client sees a TLS alert such as C{unknown ca} or
    C{certificate expired});
  - at the HTTP layer (401, see L{izreg.auth.devices.DeviceVerifier}), when
    it chains but is revoked or its subject does not name a device. Those
    can change without a restart, so they are checked per request.

Pieces, one module each:

  - C{pem}: L{TLSFiles} / L{load_material}: paths -> parsed certificates and key
    (L{load_key_pair}: one chain and its key, the edge's device certificate too).
  - C{context}: L{build_context}: an C{OpenSSL.SSL.Context} (TLS 1.2+, ECDHE AEAD ciphers).
  - C{creator}: L{ServerTLS}, the reloadable connection creator handed to the
    listener; C{reload()} re-reads every file (call it from SIGHUP); new
    connections use the new context, open ones keep theirs.
  - C{endpoint}: L{TLSEndpoint} wraps any stream server endpoint (C{tcp:},
    C{systemd:}, ...) in TLS, like tahoe-lafs's C{_TLSEndpointWrapper}.
  - L{izreg.http.peercert.peer_certificate} (in the HTTP layer, which uses
    it): the verified client certificate of a request's transport.
  - C{crl}: L{CRLFile}, an optional CRL file, re-read (by a timer, off the reactor)
    when its mtime/size change.
"""


from izreg.service.tls.context import CIPHERS_TLS12, TICKET_LIFETIME, build_context
from izreg.service.tls.creator import ServerTLS
from izreg.service.tls.crl import CRLFile
from izreg.service.tls.endpoint import TLSEndpoint, tls_endpoint
from izreg.service.tls.pem import (TLSConfigError, TLSFiles, TLSMaterial, check_client_certificate,
                                 check_trust_anchors, load_certificates, load_key_pair, load_material)

__all__ = ["CIPHERS_TLS12", "TICKET_LIFETIME", "CRLFile", "ServerTLS", "TLSConfigError", "TLSEndpoint", "TLSFiles",
           "TLSMaterial", "build_context", "check_client_certificate", "check_trust_anchors", "load_certificates",
           "load_key_pair",
           "load_material", "tls_endpoint"]
