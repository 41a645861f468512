# -*- test-case-name: tests.service.test_tls -*-
"""The TLS listener's files: paths (L{TLSFiles}) read and checked into parsed certificates and key (L{TLSMaterial})."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID


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


def _unreadable(data: bytes, path: str, what: str, wanted: str, pair: bool = True) -> TLSConfigError:
    """
    Why C{data}, the C{what} C{path}, holds no readable C{wanted} ("certificate" or "private key") and what
    to do, in one line: never the library's own text (cryptography's is a pointer to its FAQ). C{pair}:
    the file is one of a certificate and its key (not a CA file).
    """
    labels = [label.decode() for label in re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)]
    keys = [label for label in labels if label.endswith("PRIVATE KEY")]
    swapped = "are the certificate and key files swapped?"
    if not data.strip():
        why = "is empty: give the file your CA (or izreg dev-certs) wrote"
    elif not labels and data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        tool = "openssl x509" if wanted == "certificate" else "openssl pkey"
        why = f"is DER, not PEM: convert it ({tool} -inform DER -in {path} -out {path}.pem) and give the .pem file"
    elif not labels:
        line = "CERTIFICATE" if wanted == "certificate" else "PRIVATE KEY"
        why = f"is not PEM (no -----BEGIN {line}----- line): give the PEM file your CA (or izreg dev-certs) wrote"
    elif wanted == "certificate" and "CERTIFICATE" not in labels:
        if keys:
            why = f"holds a private key, not a certificate: {swapped if pair else 'give the CA certificate, never a key'}"
        elif labels[0] == "CERTIFICATE REQUEST":
            why = "holds a certificate request, not a certificate: give the certificate the CA issued for it"
        else:
            why = f"holds a {labels[0]}, not a certificate"
    elif wanted == "private key" and not keys:
        why = (f"holds a certificate, not a private key: {swapped}" if "CERTIFICATE" in labels
               else f"holds a {labels[0]}, not a private key")
    else:
        why = f"holds a PEM {wanted} that cannot be read (damaged or cut short?): copy the file again"
    return TLSConfigError(f"the {what} {path} {why}")


def load_certificates(path: str, what: str, pair: bool = False) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate in C{path}, in file order; at least one (C{pair}: of a certificate and its key)."""
    data = _read(path, what)
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise _unreadable(data, path, what, "certificate", pair) from None
    return certs


def load_key_pair(cert_path: str, key_path: str, role: str) -> tuple[tuple[x509.Certificate, ...], object]:
    """
    A certificate chain and its key (C{role}: "server", "device", for the messages), checked: the key is an
    unencrypted PEM private key of a supported type, of the first certificate. Raise L{TLSConfigError}.
    """
    chain = load_certificates(cert_path, f"{role} certificate", pair=True)
    data = _read(key_path, f"{role} key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise TLSConfigError(
            f"the {role} key {key_path} is encrypted (it needs a passphrase), and izreg reads unencrypted keys only:"
            f" decrypt it (openssl pkey -in {key_path} -out PLAIN.key) and give that file, mode 0600") from None
    except ValueError:
        raise _unreadable(data, key_path, f"{role} key", "private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        raise TLSConfigError(f"the {role} key {key_path} is a {type(key).__name__.removesuffix('PrivateKey')} key,"
                             " which TLS does not use: give an RSA, EC or Ed25519 key")
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise TLSConfigError(
            f"the {role} key {key_path} does not match the first certificate in {cert_path} (it is the key of"
            f" another certificate): give the key that was made with that certificate")
    return chain, key


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


#: the names of extended key usages, for the messages
_USAGES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
           ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning", ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
           ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning"}


def check_client_certificate(cert: x509.Certificate, path: str, role: str) -> None:
    """
    Raise L{TLSConfigError} when C{cert} (the C{role} certificate C{path}) cannot be a TLS client's
    certificate: a CA's, or one whose extended key usage leaves out clientAuth (a server's, say).
    """
    subject = cert.subject.rfc4514_string() or "an empty subject"
    if _is_ca(cert):
        raise TLSConfigError(f"the {role} certificate {path} is a CA certificate ({subject}), not a {role}'s: give"
                             f" the {role}'s own certificate (client.cert of izreg dev-certs), issued by that CA")
    names = _usages_without(cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    if names is not None:
        raise TLSConfigError(f"the {role} certificate {path} ({subject}) is not a client certificate (extended key"
                             f" usage: {names}; TLS clients need clientAuth): give the {role}'s certificate, not"
                             " the registry's server certificate")


def check_server_certificate(cert: x509.Certificate, path: str) -> None:
    """
    Raise L{TLSConfigError} when C{cert} (the server certificate C{path}) has an extended key usage that
    leaves out serverAuth: a device's (client.cert of izreg dev-certs) given for the server's, which every
    client would refuse at its first handshake. A CA's is let through: a quick self-signed certificate
    (openssl req -x509) is CA:TRUE, and clients that trust it directly accept it.
    """
    names = _usages_without(cert, ExtendedKeyUsageOID.SERVER_AUTH)
    if names is not None:
        subject = cert.subject.rfc4514_string() or "an empty subject"
        raise TLSConfigError(f"the server certificate {path} ({subject}) is not a server certificate (extended key"
                             f" usage: {names}; TLS servers need serverAuth): give the registry's own certificate"
                             " (server/server.crt of izreg dev-certs), not a device's")


def _usages_without(cert: x509.Certificate, needed: x509.ObjectIdentifier) -> str | None:
    """The names of C{cert}'s extended key usages when they leave out C{needed} (and any); else None."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None  # no restriction
    if needed in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return None
    return ", ".join(_USAGES.get(usage, usage.dotted_string) for usage in usages) or "none"


def check_trust_anchors(certs: tuple[x509.Certificate, ...], path: str, what: str) -> None:
    """
    Raise L{TLSConfigError} when C{certs} (the C{what} C{path}) holds a certificate that can anchor no
    chain: one that is neither a CA's nor self-signed (a device's or a server's, issued by a CA).
    """
    for cert in certs:
        if not _is_ca(cert) and cert.issuer != cert.subject:
            raise TLSConfigError(
                f"the {what} {path} holds {cert.subject.rfc4514_string() or 'a certificate'}, issued by"
                f" {cert.issuer.rfc4514_string() or 'another'}, which is not a CA certificate: give the CA"
                " certificate that signed the registry's certificate (ca.crt of izreg dev-certs)")


def load_material(files: TLSFiles) -> TLSMaterial:
    """Read and check everything in C{files}; raise L{TLSConfigError}."""
    chain, key = load_key_pair(files.cert, files.key, "server")
    check_server_certificate(chain[0], files.cert)
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
