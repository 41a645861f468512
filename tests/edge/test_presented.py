"""
A TLS failure is explained with the certificates of the connection that
failed (izreg.edge.upstream.MutualTLSPolicy.presented), not those of the
newest one. A real Upstream with the real policy, over real TLS connections
on loopback, to a TLS server standing in for the registry that presents an
expired certificate on its first connection and a certificate for another
host on its second. The test holds the first connection's handshake until
the second one has failed: the first then fails last, while the newest
connection is the second.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from izreg import devcerts
from izreg.edge.upstream import MutualTLSPolicy, Unreachable, Upstream
from izreg.service.tls import TLSConfigError

ACCOUNT = "0123456789abcdef0123456789abcdef"


@implementer(IOpenSSLServerConnectionCreator)
class InTurn:
    """Server TLS options: the first connection gets the first, the second the second."""

    def __init__(self, *options: ssl.CertificateOptions) -> None:
        self.options = list(options)

    def serverConnectionForTLS(self, tlsProtocol):
        return self.options.pop(0).serverConnectionForTLS(tlsProtocol)


class Held(ProtocolWrapper):
    """The first connection: what the client sends waits until C{factory.release} fires."""

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.factory.first.called:
            self.factory.first.callback(None)
            self.held: list[bytes] | None = []
            self.factory.release.addCallback(lambda _: self._let_go())
        else:
            self.held = None

    def dataReceived(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
        else:
            super().dataReceived(data)

    def _let_go(self) -> None:
        held, self.held = self.held, None
        for data in held:
            super().dataReceived(data)


class HoldFirst(WrappingFactory):
    protocol = Held

    def __init__(self, wrapped) -> None:
        super().__init__(wrapped)
        self.first = defer.Deferred()  # the first connection arrived
        self.release = defer.Deferred()


def server_options(issued: devcerts.Issued, ca: devcerts.Issued) -> ssl.CertificateOptions:
    # cryptography's objects: pyOpenSSL's X509 and PKey are deprecated there (a DeprecationWarning each)
    return ssl.CertificateOptions(privateKey=issued.key, certificate=issued.cert, extraCertChain=[ca.cert])


@pytest.mark.filterwarnings("error::DeprecationWarning")  # pyOpenSSL's, for its X509 and PKey objects: none
@pytest_twisted.ensureDeferred
async def test_each_tls_failure_is_explained_with_its_own_connections_certificates(tmp_path):
    now = time.time()
    paths = devcerts.write_dev_certs(str(tmp_path / "certs"), now, ACCOUNT)
    ca = devcerts.Issued(*_load(paths.ca_key, paths.ca_cert))
    expired = devcerts.make_server_cert(ca, now - 40 * 86400, days=30)
    misnamed = devcerts.make_server_cert(ca, now, names=("registry.example",))
    held = HoldFirst(TLSMemoryBIOFactory(InTurn(server_options(expired, ca), server_options(misnamed, ca)), False,
                                         Site(Resource())))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(held)
    url = f"https://127.0.0.1:{port.getHost().port}"
    upstream = Upstream(reactor, url, MutualTLSPolicy(paths.client_cert, paths.client_key, paths.ca_cert), 5, 30)
    try:
        first = defer.ensureDeferred(upstream.request("GET", "/v2/"))
        await held.first  # its handshake waits
        second = defer.ensureDeferred(upstream.request("GET", "/v2/"))  # a new connection: the newest
        with pytest.raises(Unreachable) as failed:
            await second
        assert failed.value.reason == (
            f"the registry's certificate is not for the host of --upstream ({url}); it names registry.example")
        held.release.callback(None)
        with pytest.raises(Unreachable) as failed:
            await first
        until = expired.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        # before: explained with the second connection's certificate (valid, of the right CA), it said
        # "not signed by the CA in --upstream-ca"
        assert failed.value.reason == f"the registry's certificate expired on {until}"
    finally:
        await upstream.close()
        await port.stopListening()


def test_a_device_key_of_another_certificate_is_told_at_start(tmp_path):
    paths = devcerts.write_dev_certs(str(tmp_path / "certs"), time.time(), ACCOUNT)
    with pytest.raises(TLSConfigError) as e:
        MutualTLSPolicy(paths.client_cert, paths.ca_key, paths.ca_cert)
    assert str(e.value) == (f"the device key {paths.ca_key} does not match the first certificate in {paths.client_cert}"
                            " (it is the key of another certificate): give the key that was made with that certificate")


def _load(key_path: str, cert_path: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return key, cert

