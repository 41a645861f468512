# -*- test-case-name: tests.service.test_tls -*-
"""L{ServerTLS}: the listener's reloadable connection creator (SIGHUP re-reads every file)."""

from __future__ import annotations

from typing import Callable

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from izreg.core.text import plural
from izreg.service.tls.context import build_context, tls_refusals
from izreg.service.tls.pem import TLSFiles, TLSMaterial, load_material

log = Logger()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The listener's TLS configuration, read once at start and again on
    C{reload()}. Hand it to L{TLSEndpoint}; ask it for the current device CAs
    (L{izreg.auth.devices.DeviceVerifier} C{cas=server_tls.device_cas}).

    The chain it sends after a server certificate file without one leaves out
    a self-signed root (L{izreg.service.tls.context.without_anchor}).

    @param on_handshake: called on every completed handshake (the metrics count
        them), by the listener's L{izreg.service.fasttls.FastTLSFactory}.
    @ivar refusals: the refused client certificates (L{izreg.http.refusals.RefusalLog}:
        its windows last across reloads; the metrics read its total).
    """

    def __init__(self, files: TLSFiles, on_handshake: Callable[[], None] | None = None) -> None:
        self.files = files
        self.on_handshake = on_handshake
        self.refusals = tls_refusals()
        self._material = load_material(files)
        self._context = build_context(self._material, self.refusals, send_anchor=False)

    def device_cas(self) -> tuple[x509.Certificate, ...]:
        return self._material.device_cas

    def reload(self) -> TLSMaterial:
        """
        Re-read every file. On success new connections use the new context;
        on failure (L{TLSConfigError}, C{OpenSSL.SSL.Error}) the old one stays
        and the error is raised for the caller to log.
        """
        material = load_material(self.files)
        context = build_context(material, self.refusals, send_anchor=False)
        self._material, self._context = material, context
        log.info("reloaded TLS: server certificate {subject} (serial {serial:x}), {cas}",
                 subject=material.server_chain[0].subject.rfc4514_string(),
                 serial=material.server_chain[0].serial_number, n=len(material.device_cas),
                 cas=plural(len(material.device_cas), "device CA"))
        return material

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)
