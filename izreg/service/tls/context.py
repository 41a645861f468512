# -*- test-case-name: tests.service.test_tls -*-
"""
The server's C{OpenSSL.SSL.Context} (L{build_context}): TLS 1.2+, ECDHE AEAD
suites, session tickets, and a client certificate requested (not required)
from the device CAs, with the reason logged when OpenSSL refuses one.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _ssl_lib
from twisted.logger import Logger

from izreg.http.refusals import RefusalLog
from izreg.service.fasttls import MODE_ENABLE_PARTIAL_WRITE
from izreg.service.tls.pem import TLSMaterial
from izreg.service.tlsthreads import emit

log = Logger()


def tls_refusals() -> RefusalLog:
    """A listener's log of refused client certificates: the first few per reason and minute in full, then a count."""
    return RefusalLog(log, "TLS client certificates")


#: TLS 1.2 suites: forward secrecy and AEAD only, AES-128-GCM first
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: TLS 1.3 suites in the server's order: all three are AEAD with forward secrecy; AES-128-GCM first
#: (RFC 8446's mandatory suite, Go's and Mozilla's first choice, ~20 % cheaper per byte than
#: AES-256-GCM for the server and the device alike), OpenSSL's default puts AES-256-GCM first
CIPHERS_TLS13 = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"

#: SSL_OP_PRIORITIZE_CHACHA (ssl.h; pyOpenSSL does not name it): with the server's order, a client
#: that lists ChaCha20-Poly1305 first (one without AES instructions: many ARM gateways) gets it
OP_PRIORITIZE_CHACHA = 0x00200000

#: seconds a session ticket may resume a session (OpenSSL's default for TLS 1.3 is 2 hours)
TICKET_LIFETIME = 2 * 3600

#: TLS 1.3 key exchange: elliptic groups only, like the TLS 1.2 suites above (ECDHE). OpenSSL's
#: defaults add finite-field groups (ffdhe2048.., up to ffdhe8192 in 3.0) that cost the server
#: 3-100 times an X25519 exchange for a replayed ClientHello that costs its sender nothing.
#: The first list whose names this OpenSSL knows (the hybrid post-quantum group needs 3.5+).
GROUPS = (b"X25519MLKEM768:X25519:P-256:P-384", b"X25519:P-256:P-384")

#: SSL_MODE_NO_AUTO_CHAIN (ssl.h): send the server certificate without building its chain per handshake
MODE_NO_AUTO_CHAIN = 0x8

#: the X509_V_ERR_* codes a device is most likely to hit, spelled out for the log
_VERIFY_ERRORS = {
    2: "the issuer certificate is unknown",
    7: "bad certificate signature",
    9: "the certificate is not yet valid",
    10: "the certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "not issued by a configured device CA (unable to get local issuer certificate)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose (extendedKeyUsage lacks clientAuth)",
}


def _describe(connection: SSL.Connection) -> str:
    try:
        return str(connection.get_app_data().getPeer())
    except Exception:
        return "?"


def _verify_callback(refusals: RefusalLog, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                     ok: int) -> bool:
    """Keep OpenSSL's verdict; say why in C{refusals} when it refuses a certificate."""
    if ok:
        return True
    try:
        subject = cert.to_cryptography().subject.rfc4514_string()
    except Exception:
        subject = "?"
    emit(  # on a handshake thread: logged once the step is back on the reactor
        refusals.warn, "refused TLS client certificate {subject!r} (chain depth {depth}) from {peer}: {reason}",
        subject=subject, depth=depth, peer=_describe(connection),
        reason=_VERIFY_ERRORS.get(errno, f"X509 verify error {errno}"), errno=errno,
    )
    return False


def build_context(material: TLSMaterial, refusals: RefusalLog | None = None, send_anchor: bool = True) -> SSL.Context:
    """
    A server context: TLS 1.2+, ECDHE AEAD suites, the server chain, and,
    when there are device CAs, a client certificate requested (not required),
    checked against those CAs only, with the CAs named in the request; the
    refused ones are logged through C{refusals} (the listener's: L{ServerTLS}).

    @param send_anchor: when the chain is built here (a server certificate
        file without its chain), whether it ends with a self-signed root as
        OpenSSL's own per-handshake chain does (L{without_anchor}).
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE | OP_PRIORITIZE_CHACHA
    )
    ctx.set_cipher_list(CIPHERS_TLS12.encode("ascii"))
    ctx.set_tls13_ciphersuites(CIPHERS_TLS13)
    _set_groups(ctx)
    # one SSL_write seals a whole large write (izreg.service.fasttls)
    ctx.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    # a connection's record buffers (~17 KiB to read, ~17 KiB to write) are
    # freed whenever they are empty, as they are between requests and while a
    # client leaves a response unread (docs/benchmark.md, tlsmem)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate(material.server_chain[0])
    extra_certs = material.server_chain[1:]
    if not extra_certs:
        built = _auto_chain(material)
        if built is not None:
            if not send_anchor:
                built = without_anchor(built)
            extra_certs = built
            if not built:
                ctx.set_mode(MODE_NO_AUTO_CHAIN)
    for extra in extra_certs:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(material.key)
    ctx.check_privatekey()
    # Session resumption by stateless tickets only (no server-side cache): a
    # device that reconnects skips the certificate exchange and signatures.
    # The ticket keys are random per context, so a reload (new device CAs)
    # ends every earlier session; what a resumed session skips at the
    # handshake (chain to a device CA, validity) the HTTP layer checks on
    # every request anyway (izreg.auth.devices.DeviceVerifier), with
    # revocation. Tickets live at most TICKET_LIFETIME.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_timeout(TICKET_LIFETIME)
    ctx.set_session_id(b"izreg")
    if material.device_cas:
        store = ctx.get_cert_store()
        assert store is not None
        for ca in material.device_cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            ctx.add_client_ca(ca)
        # A device CA may be an intermediate: trust it as an anchor without its root,
        # so other certificates under that root are not device certificates.
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        ctx.set_verify(SSL.VERIFY_PEER, functools.partial(_verify_callback, refusals or tls_refusals()))
        ctx.set_verify_depth(4)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def _set_groups(ctx: SSL.Context) -> None:
    """The key-exchange groups (L{GROUPS}); pyOpenSSL has no call for a list, cryptography's bindings do."""
    for groups in GROUPS:
        if _ssl_lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1:
            return
        _ssl_lib.ERR_clear_error()  # an unknown name: not an error for the next OpenSSL call to find
    raise SSL.Error(f"this OpenSSL knows none of the key-exchange groups {GROUPS[-1].decode()}")


def without_anchor(chain: tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    """
    C{chain} (the certificates after the server's) without a self-signed root
    at its end. A client trusts a chain only through an anchor it already
    holds, so sending it proves nothing (RFC 8446 4.4.2 and RFC 5246 7.4.2
    let the server omit it; Go's crypto/tls and nginx send the file's chain,
    without it when the file has none), while the client still parses it: with
    OpenSSL 3.0's client ~0.24 ms a full handshake here, 18 % of its CPU
    (docs/benchmark.md, seventh pass). An intermediate device CA (a partial
    chain) is kept: a client may trust only its root.
    """
    if chain and _self_signed(chain[-1]):
        return chain[:-1]
    return chain


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _auto_chain(material: TLSMaterial) -> tuple[x509.Certificate, ...] | None:
    """
    What OpenSSL sends after a server certificate that comes without its
    chain: it builds the chain from the context's store (the device CAs, with
    a partial chain allowed) on every handshake, an X509_verify_cert with the
    issuer's signature check (~4 % of a full handshake's CPU here). Built once
    here the same way; C{None} when the build fails in a way whose partial
    chain is not known (OpenSSL then keeps building it per handshake).
    """
    store = crypto.X509Store()
    for ca in material.device_cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    if material.device_cas:
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    leaf = crypto.X509.from_cryptography(material.server_chain[0])
    try:
        chain = crypto.X509StoreContext(store, leaf).get_verified_chain()
    except crypto.X509StoreContextError as e:
        code, depth = e.errors[0], e.errors[1]
        if depth == 0 and code in (18, 20):  # self-signed, or no issuer among the device CAs: the leaf alone
            return ()
        return None
    return tuple(cert.to_cryptography() for cert in chain[1:])
