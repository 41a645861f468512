# -*- test-case-name: tests.test_devcerts -*-
"""
Development certificates: a CA, a server certificate and a device
certificate. C{DIR} itself is a client cert-dir as skopeo, podman
(C{--cert-dir}) and docker (C{/etc/docker/certs.d/<host:port>/}) read it;
the server's files and the CA key live in C{DIR/server/}::

    DIR/ca.crt              the development CA (clients trust it; izreg uses it as --device-ca)
    DIR/client.cert         the device certificate: OU=<account>, CN=<device id>; EKU clientAuth
    DIR/client.key          its key (0600)
    DIR/server/server.crt   izreg's certificate: SAN the --host names, localhost, 127.0.0.1, containers.local;
                            EKU serverAuth
    DIR/server/server.key   its key (0600)
    DIR/server/ca.key       the CA's key (0600), to issue more device certificates

One CA, several devices: a directory that holds a CA (C{ca.crt} and
C{server/ca.key}) keeps it; C{ca_dir} issues a device into another
directory from the CA of that one (which gets C{ca.crt}, C{client.cert}
and C{client.key} only: the CA key and the server's files stay with the CA).

Why the subdirectory: containers/image and docker pair every C{X.key} in a
cert dir with an C{X.cert} and refuse the whole directory otherwise
("missing client certificate ca.cert for key ca.key"), so C{ca.key} and
C{server.key} cannot sit next to C{client.key}. Subdirectories are ignored.

Keys are EC P-256 (fast to make; every client here accepts them). The
generators take C{now} (POSIX seconds) and return cryptography objects;
only L{write_dev_certs} touches the filesystem. For development only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from izreg.auth.devices import DEVICE_ID_RE
from izreg.core.names import ACCOUNT_RE

SERVER_NAMES = ("localhost", "127.0.0.1", "containers.local")
#: one label of a DNS name (LDH: letters, digits, hyphens inside); the first may be "*" (a wildcard)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
DEFAULT_DEVICE_ID = "dev-device"
DEFAULT_DAYS = 365
#: backdate notBefore a little so a client with a slightly slow clock accepts a fresh cert
BACKDATE = datetime.timedelta(minutes=5)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.cert"
CLIENT_KEY = "client.key"
SERVER_DIR = "server"
#: where each file goes, relative to the output directory
LAYOUT = {
    CA_CERT: CA_CERT,
    CLIENT_CERT: CLIENT_CERT,
    CLIENT_KEY: CLIENT_KEY,
    SERVER_CERT: os.path.join(SERVER_DIR, SERVER_CERT),
    SERVER_KEY: os.path.join(SERVER_DIR, SERVER_KEY),
    CA_KEY: os.path.join(SERVER_DIR, CA_KEY),
}

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    key: Key
    cert: x509.Certificate


@dataclass(frozen=True)
class DevCertPaths:
    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    account: str
    device_id: str
    #: the directory whose CA issued the device (C{directory} itself for a new CA or its own)
    ca_dir: str = ""
    #: whether the CA was there before (not made by this call)
    ca_reused: bool = False
    #: whether the server's certificate was written by this call (else it was kept, or is C{ca_dir}'s)
    server_issued: bool = True


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: float, days: float) -> x509.CertificateBuilder:
    start = _utc(now)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(now: float, common_name: str = "izreg development CA", days: float = DEFAULT_DAYS * 5,
            key: Key | None = None) -> Issued:
    """A self-signed CA that may issue leaf certificates only (pathlen 0)."""
    key = key or new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "izreg development"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    cert = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _leaf(ca: Issued, subject: x509.Name, usage: x509.ObjectIdentifier, now: float, days: float,
          key: Key) -> x509.CertificateBuilder:
    return (
        _builder(subject, ca.cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )


def host_name(name: str) -> str:
    """
    C{name} as a subjectAltName of the server's certificate: an IP address (v4 or v6), or a DNS name
    (ASCII letters, digits, hyphens and dots; a leading C{*.} for a wildcard), lowercased; else L{ValueError}.
    """
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".") if len(name) <= 253 else []
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name or IP address: {name[:200]!r} (a DNS name is ASCII letters, digits, hyphens"
                         " and dots: an internationalized name in its xn-- form)")
    return name.rstrip(".").lower()


def server_names(hosts: Sequence[str] = ()) -> tuple[str, ...]:
    """The names of a server certificate: C{hosts} (checked: L{host_name}) first, then L{SERVER_NAMES}, each once."""
    return tuple(dict.fromkeys([*(host_name(h) for h in hosts), *SERVER_NAMES]))


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate's subjectAltName holds (as L{host_name} writes them)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in sans.get_values_for_type(x509.DNSName)} | \
        {str(a) for a in sans.get_values_for_type(x509.IPAddress)}


def make_server_cert(ca: Issued, now: float, names: Sequence[str] = SERVER_NAMES, days: float = DEFAULT_DAYS,
                     key: Key | None = None) -> Issued:
    """A server certificate for C{names} (DNS names and IP addresses, as SANs)."""
    key = key or new_key()
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, now, days, key)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def make_device_cert(ca: Issued, account: str, device_id: str, now: float, days: float = DEFAULT_DAYS,
                     key: Key | None = None, extra: Sequence[x509.NameAttribute] = ()) -> Issued:
    """A device certificate: OU=C{account}, CN=C{device_id}, EKU clientAuth."""
    key = key or new_key()
    subject = x509.Name([
        *extra,
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, account),
        x509.NameAttribute(NameOID.COMMON_NAME, device_id),
    ])
    cert = _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, now, days, key).sign(ca.key, hashes.SHA256())
    return Issued(key, cert)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write C{data} to C{path} with C{mode} from the start (keys are never world-readable, even briefly)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)


class DevCertsExist(Exception):
    """The output directory already holds development certificates."""


class DevCertsError(ValueError):
    """A CA to issue from is missing, incomplete or unreadable (one line)."""


def has_ca(directory: str) -> bool:
    """Whether C{directory} holds a development CA (its certificate or its key)."""
    return any(os.path.exists(os.path.join(directory, LAYOUT[name])) for name in (CA_CERT, CA_KEY))


def load_ca(directory: str) -> Issued:
    """The CA of a directory L{write_dev_certs} wrote: C{ca.crt} and C{server/ca.key}, checked."""
    from izreg.service.tls.pem import TLSConfigError, load_key_pair

    if not os.path.isdir(directory):
        raise DevCertsError(f"{directory} does not exist: --ca takes the directory an earlier izreg dev-certs wrote"
                            " (the one holding ca.crt and server/ca.key)")
    cert, key = (os.path.join(directory, LAYOUT[name]) for name in (CA_CERT, CA_KEY))
    missing = [LAYOUT[name] for name, path in ((CA_CERT, cert), (CA_KEY, key)) if not os.path.exists(path)]
    if missing:
        raise DevCertsError(f"{directory} holds no CA to issue from (no {' and no '.join(missing)}): give the directory"
                            " an earlier izreg dev-certs wrote, or a new one")
    try:
        chain, ca_key = load_key_pair(cert, key, "CA")
    except TLSConfigError as e:
        raise DevCertsError(str(e)) from None
    try:
        is_ca = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise DevCertsError(f"{cert} is not a CA certificate (basicConstraints CA:TRUE)")
    return Issued(ca_key, chain[0])


def write_dev_certs(directory: str, now: float, account: str, device_id: str = DEFAULT_DEVICE_ID,
                    days: float = DEFAULT_DAYS, hosts: Sequence[str] = (),
                    overwrite: bool = False, ca_dir: str | None = None) -> DevCertPaths:
    """
    A device certificate (and its key) in C{directory}, issued by the CA of C{ca_dir}, else by the CA
    C{directory} holds, else by a new one; a server certificate beside a new CA, or beside one that lacks
    it (a server certificate there is kept: the running registry uses it). C{overwrite} replaces the
    device's files (and those a new CA's certificates would), never a CA. The server certificate names
    C{hosts} (L{server_names}); L{DevCertsError} if they are given and no server certificate naming them
    is written or kept.
    """
    if not ACCOUNT_RE.match(account):
        raise ValueError(f"not an account id (32 lowercase hex): {account!r}")
    if not DEVICE_ID_RE.fullmatch(device_id):  # the registry would refuse the certificate
        raise ValueError(f"not a device id (1-128 of A-Z a-z 0-9 . _ : @ -, starting alphanumeric): {device_id[:200]!r}")
    paths = {name: os.path.join(directory, relative) for name, relative in LAYOUT.items()}
    if ca_dir is not None and os.path.realpath(ca_dir) == os.path.realpath(directory):
        ca_dir = None  # its own CA
    if ca_dir is not None and os.path.exists(paths[CA_KEY]):
        raise DevCertsError(f"{directory} holds a CA of its own ({LAYOUT[CA_KEY]}): issue into another directory"
                            f" from {ca_dir}, or leave out --ca to issue from {directory}'s")
    reused = ca_dir is not None or has_ca(directory)
    ca = load_ca(ca_dir or directory) if reused else make_ca(now)
    own = ca_dir is None  # the directory holds the CA (and the server's files)
    ca_pem = cert_pem(ca.cert)
    # what this call writes; the device's files, and a CA certificate other than the one issuing, are not replaced
    device = [CLIENT_CERT, CLIENT_KEY]
    server = [SERVER_CERT, SERVER_KEY] if own and not (reused and all(os.path.exists(paths[n]) for n in
                                                                      (SERVER_CERT, SERVER_KEY))) else []
    names = server_names(hosts)  # ValueError before anything is written
    if hosts:
        _check_kept_server(directory, paths[SERVER_CERT], own, bool(server), names[:len(hosts)])
    existing = [LAYOUT[name] for name in device if os.path.exists(paths[name])]
    if not own and os.path.exists(paths[CA_CERT]) and _read(paths[CA_CERT]) != ca_pem:
        existing.append(LAYOUT[CA_CERT])
    if not reused:
        existing += [LAYOUT[name] for name in (SERVER_CERT, SERVER_KEY) if os.path.exists(paths[name])]
    if existing and not overwrite:
        raise DevCertsExist(f"{directory} already has {', '.join(sorted(existing))}")
    os.makedirs(os.path.join(directory, SERVER_DIR) if own else directory, mode=0o700, exist_ok=True)
    if not reused:
        write_file(paths[CA_KEY], key_pem(ca.key), 0o600)
    if not own or not reused:
        write_file(paths[CA_CERT], ca_pem)
    if server:
        issued = make_server_cert(ca, now, names, days)
        write_file(paths[SERVER_KEY], key_pem(issued.key), 0o600)
        write_file(paths[SERVER_CERT], cert_pem(issued.cert))
    issued = make_device_cert(ca, account, device_id, now, days)
    write_file(paths[CLIENT_KEY], key_pem(issued.key), 0o600)
    write_file(paths[CLIENT_CERT], cert_pem(issued.cert))
    home = {name: os.path.join(ca_dir or directory, LAYOUT[name]) for name in (CA_KEY, SERVER_CERT, SERVER_KEY)}
    return DevCertPaths(directory, paths[CA_CERT], home[CA_KEY], home[SERVER_CERT], home[SERVER_KEY],
                        paths[CLIENT_CERT], paths[CLIENT_KEY], account, device_id, ca_dir or directory, reused,
                        bool(server))


def _check_kept_server(directory: str, path: str, own: bool, issuing: bool, hosts: Sequence[str]) -> None:
    """L{DevCertsError} when C{hosts} are asked for but the server certificate is not written and lacks some."""
    if not own:
        raise DevCertsError("--host names the server certificate, which stays with the CA's directory: run"
                            " izreg dev-certs on that directory with --host")
    if issuing:
        return
    try:
        kept = certificate_names(x509.load_pem_x509_certificate(_read(path)))
    except (OSError, ValueError) as e:
        raise DevCertsError(f"cannot read the server certificate {path}: {e}") from None
    missing = [h for h in hosts if h not in kept]
    if missing:
        server = os.path.join(directory, SERVER_DIR)
        raise DevCertsError(f"{path} is kept (a running registry uses it) and does not name {', '.join(missing)}:"
                            f" remove {os.path.join(server, SERVER_CERT)} and {os.path.join(server, SERVER_KEY)} for a new one"
                            " from the same CA (then restart the registry with it)")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
