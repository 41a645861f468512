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

Pieces:

  - L{TLSFiles} / L{load_material} / L{build_context}: paths -> parsed
    certificates -> an C{OpenSSL.SSL.Context} (TLS 1.2+, ECDHE AEAD ciphers).
  - L{ServerTLS}: the reloadable connection creator handed to the listener;
    C{reload()} re-reads every file (call it from SIGHUP); new connections use
    the new context, open ones keep theirs.
  - L{TLSEndpoint}: wraps any stream server endpoint (C{tcp:}, C{systemd:}, ...)
    in TLS, like tahoe-lafs's C{_TLSEndpointWrapper}.
  - L{izreg.http.peercert.peer_certificate} (in the HTTP layer, which uses
    it): the verified client certificate of a request's transport.
  - L{CRLFile}: an optional CRL file, re-read (by a timer, off the reactor)
    when its mtime/size change.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from izreg.service.fasttls import MODE_ENABLE_PARTIAL_WRITE, FastTLSFactory

log = Logger()

#: TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all fine and left at OpenSSL's default)
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: seconds a session ticket may resume a session (OpenSSL's default for TLS 1.3 is 2 hours)
TICKET_LIFETIME = 2 * 3600

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


class TLSConfigError(Exception):
    """A certificate, key or CA file is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class TLSFiles:
    """Where the TLS listener's material lives (the C{--tls-*} and C{--device-ca} options)."""

    cert: str
    key: str
    device_cas: tuple[str, ...] = ()


@dataclass(frozen=True)
class TLSMaterial:
    """The parsed contents of L{TLSFiles}."""

    #: the server certificate first, then the intermediates that complete its chain
    server_chain: tuple[x509.Certificate, ...]
    key: object
    device_cas: tuple[x509.Certificate, ...]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {path}: {e.strerror}") from e


def load_certificates(path: str, what: str) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate in C{path}, in file order; at least one."""
    data = _read(path, what)
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as e:
        raise TLSConfigError(f"the {what} {path} holds no readable PEM certificate: {e}") from e
    return certs


def load_material(files: TLSFiles) -> TLSMaterial:
    """Read and check everything in C{files}; raise L{TLSConfigError}."""
    chain = load_certificates(files.cert, "server certificate")
    try:
        key = serialization.load_pem_private_key(_read(files.key, "server key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"the server key {files.key} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        raise TLSConfigError(f"the server key {files.key} has an unsupported key type")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TLSConfigError(f"the server key {files.key} does not match the first certificate in {files.cert}")
    cas: list[x509.Certificate] = []
    for path in files.device_cas:
        for ca in load_certificates(path, "device CA file"):
            if not _is_ca(ca):
                raise TLSConfigError(
                    f"{path}: {ca.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA:TRUE)")
            cas.append(ca)
    return TLSMaterial(chain, key, tuple(cas))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _describe(connection: SSL.Connection) -> str:
    try:
        return str(connection.get_app_data().getPeer())
    except Exception:
        return "?"


def _verify_callback(connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """Keep OpenSSL's verdict; say why in the log when it refuses a certificate."""
    if ok:
        return True
    try:
        subject = cert.to_cryptography().subject.rfc4514_string()
    except Exception:
        subject = "?"
    log.warn(
        "refused TLS client certificate {subject!r} (chain depth {depth}) from {peer}: {reason}",
        subject=subject, depth=depth, peer=_describe(connection),
        reason=_VERIFY_ERRORS.get(errno, f"X509 verify error {errno}"), errno=errno,
    )
    return False


def build_context(material: TLSMaterial) -> SSL.Context:
    """
    A server context: TLS 1.2+, ECDHE AEAD suites, the server chain, and,
    when there are device CAs, a client certificate requested (not required),
    checked against those CAs only, with the CAs named in the request.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE
    )
    ctx.set_cipher_list(CIPHERS_TLS12.encode("ascii"))
    # one SSL_write seals a whole large write (izreg.service.fasttls)
    ctx.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    ctx.use_certificate(material.server_chain[0])
    for extra in material.server_chain[1:]:
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
        ctx.set_verify(SSL.VERIFY_PEER, _verify_callback)
        ctx.set_verify_depth(4)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The listener's TLS configuration, read once at start and again on
    C{reload()}. Hand it to L{TLSEndpoint}; ask it for the current device CAs
    (L{izreg.auth.devices.DeviceVerifier} C{cas=server_tls.device_cas}).
    """

    #: called on every completed handshake (the metrics count them)
    on_handshake: Callable[[], None] | None = None

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._material = load_material(files)
        self._context = self._counting(build_context(self._material))

    def _counting(self, context: SSL.Context) -> SSL.Context:
        def info(connection: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE and self.on_handshake is not None:
                self.on_handshake()

        context.set_info_callback(info)
        return context

    def device_cas(self) -> tuple[x509.Certificate, ...]:
        return self._material.device_cas

    def reload(self) -> TLSMaterial:
        """
        Re-read every file. On success new connections use the new context;
        on failure (L{TLSConfigError}, C{OpenSSL.SSL.Error}) the old one stays
        and the error is raised for the caller to log.
        """
        material = load_material(self.files)
        context = self._counting(build_context(material))
        self._material, self._context = material, context
        log.info("reloaded TLS: server certificate {subject} (serial {serial:x}), {n} device CA(s)",
                 subject=material.server_chain[0].subject.rfc4514_string(),
                 serial=material.server_chain[0].serial_number, n=len(material.device_cas))
        return material

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class TLSEndpoint:
    """Any stream server endpoint, with TLS on top."""

    wrapped: IStreamServerEndpoint
    creator: IOpenSSLServerConnectionCreator
    clock: IReactorTime | None = field(default=None)

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        return self.wrapped.listen(FastTLSFactory(self.creator, False, protocolFactory, clock=self.clock))


def tls_endpoint(reactor, description: str, tls: ServerTLS) -> TLSEndpoint:
    """C{--tls-listen DESCRIPTION}: a server endpoint string (C{tcp:5443:interface=...}) wrapped in TLS."""
    return TLSEndpoint(serverFromString(reactor, description), tls, clock=reactor)


@dataclass
class CRLFile:
    """
    An optional CRL file (C{--device-crl}): one or more PEM CRLs, each signed
    by a device CA. C{current()} (per request, on the reactor) returns the
    CRLs last read, with no I/O; C{refresh()} (blocking: the service calls it
    in the I/O pool every C{tls.device_crl_interval} seconds) stats the file
    and re-reads it when its mtime, size or inode changed. A file that fails
    to parse or verify is logged and the previous CRLs stay in force.
    """

    path: str
    cas: Callable[[], Sequence[x509.Certificate]]
    stat: Callable[[str], os.stat_result] = os.stat
    _seen: tuple | None = field(default=None, init=False)
    _crls: tuple[x509.CertificateRevocationList, ...] = field(default=(), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def current(self) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls

    def refresh(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Stat the file and re-read it if it changed (blocking)."""
        with self._lock:
            try:
                st = self.stat(self.path)
            except OSError as e:
                if self._seen != ("missing",):
                    log.error("cannot stat the device CRL {path}: {error}; keeping {n} CRL(s)",
                              path=self.path, error=e.strerror, n=len(self._crls))
                    self._seen = ("missing",)
                return self._crls
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen != self._seen:
                self._seen = seen
                try:
                    self._crls = self.load()
                    log.info("loaded {n} device CRL(s) from {path}", n=len(self._crls), path=self.path)
                except (OSError, ValueError) as e:
                    log.error("ignoring the device CRL {path}: {error}; keeping {n} CRL(s)",
                              path=self.path, error=str(e), n=len(self._crls))
            return self._crls

    def reload(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Re-read the file now, changed or not (SIGHUP; blocking)."""
        with self._lock:
            self._seen = None
        return self.refresh()

    def load(self) -> tuple[x509.CertificateRevocationList, ...]:
        with open(self.path, "rb") as f:
            data = f.read()
        marker = b"-----BEGIN X509 CRL-----"
        blocks = [marker + part for part in data.split(marker)[1:]]
        if not blocks:
            raise ValueError("no PEM CRL in the file")
        crls = tuple(x509.load_pem_x509_crl(block) for block in blocks)
        cas = self.cas()
        for crl in crls:
            if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()) for ca in cas):
                raise ValueError(f"the CRL from {crl.issuer.rfc4514_string()} is not signed by a device CA")
        return crls
