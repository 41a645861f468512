# -*- test-case-name: tests.auth.test_devices -*-
"""
Device identity from a TLS client certificate (pure: no I/O, no clock).

An edge device proves who it is with a certificate issued by a configured
device CA. By default the subject's organizationalUnitName (OU) holds the
account id (32 lowercase hex) and the commonName (CN) the device id; both
attributes are configurable with L{SubjectFields}.

A device certificate is accepted when

  1. it was issued (signed) by one of the device CAs,            L{check_issuer}
  2. C{now} lies within its validity window,                      L{check_validity}
  3. if it has an extendedKeyUsage, that includes clientAuth,     L{check_client_usage}
  4. its subject names an account and a device,                   L{device_identity}
  5. neither its serial nor its SHA-256 fingerprint is revoked,
     and no configured CRL of its issuer lists it.                L{check_not_revoked}

L{DeviceVerifier} runs all of these with its collaborators injected (the
current CAs, CRLs and a revocation lookup), so the HTTP layer makes one call
per request. Every failure raises L{DeviceRejected}, a L{RegistryError}
C{UNAUTHORIZED} (401) whose C{reason} is a short stable string for logs and
whose detail tells the client what was wrong.

Time is an argument: C{now} is POSIX seconds (C{IReactorTime.seconds()}).
"""

from __future__ import annotations

import datetime
import functools
import re
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import ACCOUNT_RE

#: device ids end up in LMDB keys and log lines: keep them short and printable
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_HEX_RE = re.compile(r"^[0-9a-f]+\Z")

#: short attribute names accepted by L{SubjectFields.parse} (besides dotted OIDs)
ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "UID": NameOID.USER_ID,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "title": NameOID.TITLE,
    "pseudonym": NameOID.PSEUDONYM,
}


class DeviceRejected(RegistryError):
    """
    A client certificate that does not identify a usable device (HTTP 401).

    @ivar reason: a short stable token for logs and metrics, one of
        C{unknown-ca}, C{expired}, C{not-yet-valid}, C{not-client-cert},
        C{missing-account}, C{bad-account}, C{missing-device}, C{bad-device},
        C{revoked-serial}, C{revoked-fingerprint}, C{revoked-crl}, C{unknown-account} (the
        account was deleted: checked per request, L{izreg.http.guard}).
    """

    def __init__(self, reason: str, message: str, **detail: object) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, {"reason": reason, **detail}, f"device certificate rejected: {message}")
        self.reason = reason


@dataclass(frozen=True)
class SubjectFields:
    """Which subject attribute holds the account id, which the device id."""

    account: ObjectIdentifier = NameOID.ORGANIZATIONAL_UNIT_NAME
    device: ObjectIdentifier = NameOID.COMMON_NAME

    @classmethod
    def parse(cls, account: str = "OU", device: str = "CN") -> "SubjectFields":
        """From short names (C{"OU"}, C{"CN"}, C{"UID"}, ...) or dotted OIDs (C{"2.5.4.11"})."""
        fields = cls(_attribute(account), _attribute(device))
        if fields.account == fields.device:
            raise ValueError("the account and the device id must come from different subject attributes")
        return fields


def _attribute(name: str) -> ObjectIdentifier:
    if name in ATTRIBUTES:
        return ATTRIBUTES[name]
    if re.fullmatch(r"[0-9]+(\.[0-9]+)+", name):
        return ObjectIdentifier(name)
    raise ValueError(f"unknown subject attribute {name!r}: use one of {', '.join(ATTRIBUTES)} or a dotted OID")


@dataclass(frozen=True)
class DeviceIdentity:
    """Who a verified device certificate names."""

    account: str
    device_id: str
    #: the certificate serial number, lowercase hex without leading zeros
    serial_hex: str
    #: SHA-256 of the DER certificate, 64 lowercase hex
    fingerprint_sha256: str


@dataclass(frozen=True)
class Revoked:
    """Revoked serials and fingerprints (normalized, see L{normalize_serial})."""

    serials: Container[str] = frozenset()
    fingerprints: Container[str] = frozenset()


NOT_REVOKED = Revoked()


# -- normalization --------------------------------------------------------


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def normalize_serial(text: str) -> str:
    """
    A serial as an admin may paste it (C{openssl x509 -serial} prints
    C{serial=0A1B...}; colons are common) to lowercase hex without leading zeros.
    """
    cleaned = text.strip().lower()
    for prefix in ("serial=", "0x"):
        if cleaned.startswith(prefix):
            cleaned = cleaned[len(prefix):]
    cleaned = cleaned.replace(":", "")
    if not cleaned or not _HEX_RE.match(cleaned) or len(cleaned) > 64:
        raise ValueError(f"not a hexadecimal certificate serial: {text!r}")
    return format(int(cleaned, 16), "x")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint (64 hex, colons allowed, optional C{sha256:} prefix) to 64 lowercase hex."""
    cleaned = text.strip().lower()
    for prefix in ("sha256:", "sha256 fingerprint=", "sha256="):
        if cleaned.startswith(prefix):
            cleaned = cleaned[len(prefix):]
    cleaned = cleaned.replace(":", "")
    if len(cleaned) != 64 or not _HEX_RE.match(cleaned):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return cleaned


# -- the checks -----------------------------------------------------------


def device_identity(cert: x509.Certificate, fields: SubjectFields = SubjectFields()) -> DeviceIdentity:
    """Read the account and device id from the subject; raise L{DeviceRejected}."""
    account = _single(cert, fields.account, "account")
    if account is None:
        raise DeviceRejected("missing-account", f"the subject has no {_oid_name(fields.account)} (account id)",
                             subject=cert.subject.rfc4514_string())
    if not ACCOUNT_RE.match(account):
        raise DeviceRejected("bad-account",
                             f"the subject's {_oid_name(fields.account)} is not an account id (32 lowercase hex)",
                             value=account[:100])
    device = _single(cert, fields.device, "device")
    if device is None:
        raise DeviceRejected("missing-device", f"the subject has no {_oid_name(fields.device)} (device id)",
                             subject=cert.subject.rfc4514_string())
    if not DEVICE_ID_RE.fullmatch(device):  # fullmatch: "$" would let "dev1\n" pass
        raise DeviceRejected("bad-device",
                             f"the subject's {_oid_name(fields.device)} is not a device id "
                             "(1-128 of A-Z a-z 0-9 . _ : @ -, starting alphanumeric)",
                             value=device[:200])
    return DeviceIdentity(account, device, serial_hex(cert), fingerprint_sha256(cert))


def _single(cert: x509.Certificate, oid: ObjectIdentifier, what: str) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) > 1:
        reason = "bad-account" if what == "account" else "bad-device"
        raise DeviceRejected(reason, f"the subject has {len(values)} {_oid_name(oid)} attributes; exactly one names the {what}")
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _oid_name(oid: ObjectIdentifier) -> str:
    for short, known in ATTRIBUTES.items():
        if known == oid:
            return short
    return oid.dotted_string


def _utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


def check_validity(cert: x509.Certificate, now: float) -> None:
    """Raise L{DeviceRejected} unless notBefore <= now <= notAfter."""
    when = _utc(now)
    if when < cert.not_valid_before_utc:
        raise DeviceRejected("not-yet-valid", "the certificate is not valid yet",
                             not_before=cert.not_valid_before_utc.isoformat())
    if when > cert.not_valid_after_utc:
        raise DeviceRejected("expired", "the certificate has expired",
                             not_after=cert.not_valid_after_utc.isoformat())


def check_issuer(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate:
    """Return the device CA that signed C{cert}; raise L{DeviceRejected} C{unknown-ca}."""
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):  # wrong key, or a key type it cannot check
            continue
        return ca
    raise DeviceRejected("unknown-ca", "it was not issued by a configured device CA",
                         issuer=cert.issuer.rfc4514_string())


def check_client_usage(cert: x509.Certificate) -> None:
    """A certificate that limits its usage must allow TLS client authentication."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise DeviceRejected("not-client-cert", "its extendedKeyUsage does not include clientAuth")


def revocation_reason(
    identity: DeviceIdentity,
    revoked: Revoked = NOT_REVOKED,
    crls: Iterable[x509.CertificateRevocationList] = (),
    issuer: x509.Name | None = None,
) -> str | None:
    """
    Why C{identity} is revoked (C{revoked-serial}, C{revoked-fingerprint},
    C{revoked-crl}), or C{None}. A CRL applies only when its issuer is the
    certificate's C{issuer} (when given), since serials are unique per issuer.
    """
    if identity.serial_hex in revoked.serials:
        return "revoked-serial"
    if identity.fingerprint_sha256 in revoked.fingerprints:
        return "revoked-fingerprint"
    serial = int(identity.serial_hex, 16)
    for crl in crls:
        if issuer is not None and crl.issuer != issuer:
            continue
        if crl.get_revoked_certificate_by_serial_number(serial) is not None:
            return "revoked-crl"
    return None


def check_not_revoked(
    identity: DeviceIdentity,
    revoked: Revoked = NOT_REVOKED,
    crls: Iterable[x509.CertificateRevocationList] = (),
    issuer: x509.Name | None = None,
) -> None:
    reason = revocation_reason(identity, revoked, crls, issuer)
    if reason is not None:
        raise DeviceRejected(reason, "the certificate has been revoked", serial=identity.serial_hex,
                             device=identity.device_id)


# The checks that depend on nothing but their arguments (the issuer's signature,
# the key usage, the subject, the validity window's bounds), remembered for the
# certificates seen last: a device's every request skips the signature check
# and the parsing. A rejection is never remembered (it raises), and reloaded CAs
# are a new key. Only the comparison with the clock runs on every call.
@functools.lru_cache(maxsize=1024)
def _checked(cert: x509.Certificate, cas: tuple[x509.Certificate, ...],
             fields: SubjectFields) -> tuple[DeviceIdentity, x509.Name, float, float]:
    ca = check_issuer(cert, cas)
    check_client_usage(cert)
    identity = device_identity(cert, fields)
    return identity, ca.subject, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


@dataclass(frozen=True)
class DeviceVerifier:
    """
    Everything that decides whether a client certificate is a usable device.

    The collaborators are callables so that the current values are read on
    every call: C{cas()} the device CAs (they change on SIGHUP), C{crls()} the
    parsed CRLs (re-read when the file changes), C{revoked(serial_hex,
    fingerprint)} a L{Revoked} from one short LMDB read (so a revocation takes
    effect on the next request).
    """

    cas: Callable[[], Sequence[x509.Certificate]]
    revoked: Callable[[str, str], Revoked] = lambda serial, fingerprint: NOT_REVOKED
    crls: Callable[[], Sequence[x509.CertificateRevocationList]] = lambda: ()
    fields: SubjectFields = SubjectFields()

    def verify(self, cert: x509.Certificate, now: float) -> DeviceIdentity:
        """Return the device's identity or raise L{DeviceRejected}."""
        identity, issuer = self.identify(cert, now)
        return self.unrevoked(identity, issuer, self.revoked(identity.serial_hex, identity.fingerprint_sha256))

    def identify(self, cert: x509.Certificate, now: float) -> tuple[DeviceIdentity, x509.Name]:
        """
        Every check but revocation: C{(identity, issuer name)}, or raise
        L{DeviceRejected}. The caller reads the revocations (C{revoked}, a store
        read: off the reactor on a shared database), then calls L{unrevoked}.
        """
        try:
            identity, issuer, not_before, not_after = _checked(cert, tuple(self.cas()), self.fields)
        except DeviceRejected as e:
            if e.reason != "unknown-ca":
                check_validity(cert, now)  # the checks' order: the issuer, the validity, then the rest
            raise
        if not not_before <= now <= not_after:
            check_validity(cert, now)  # raises, with the reason
        return identity, issuer

    def unrevoked(self, identity: DeviceIdentity, issuer: x509.Name, revoked: Revoked) -> DeviceIdentity:
        """C{identity}, unless C{revoked} (read for this request) or a CRL of C{issuer} revokes it."""
        check_not_revoked(identity, revoked, self.crls(), issuer=issuer)
        return identity
