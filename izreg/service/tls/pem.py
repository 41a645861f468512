# -*- test-case-name: tests.service.test_tls -*-
"""The TLS listener's files: paths (L{TLSFiles}) read and checked into parsed certificates and key (L{TLSMaterial})."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa


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


def load_key_pair(cert_path: str, key_path: str, role: str) -> tuple[tuple[x509.Certificate, ...], object]:
    """
    A certificate chain and its key (C{role}: "server", "device", for the messages), checked: the key is an
    unencrypted PEM private key of a supported type, of the first certificate. Raise L{TLSConfigError}.
    """
    chain = load_certificates(cert_path, f"{role} certificate")
    try:
        key = serialization.load_pem_private_key(_read(key_path, f"{role} key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"the {role} key {key_path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        raise TLSConfigError(f"the {role} key {key_path} has an unsupported key type")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TLSConfigError(f"the {role} key {key_path} does not match the first certificate in {cert_path}")
    return chain, key


def load_material(files: TLSFiles) -> TLSMaterial:
    """Read and check everything in C{files}; raise L{TLSConfigError}."""
    chain, key = load_key_pair(files.cert, files.key, "server")
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
