"""Device identity, validity, issuer and revocation checks; the LMDB device store and the pull recorder."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from izreg.auth import devices
from izreg.auth.devices import (
    DeviceRejected,
    DeviceVerifier,
    Revoked,
    SubjectFields,
    check_issuer,
    check_validity,
    device_identity,
    normalize_fingerprint,
    normalize_serial,
    revocation_reason,
)
from izreg.auth.devicestore import FINGERPRINT, SERIAL, DeviceStore, PullRecord, PullRecorder
from izreg.auth.interfaces import IDeviceStore
from izreg.core.errors import ErrorCode
from izreg.devcerts import Issued, make_ca, make_device_cert, make_server_cert, new_key
from izreg.storage.lmdbenv import open_env
from tests.auth.conftest import BACKENDS

NOW = 1_800_000_000.0
DAY = 86400.0
ACCOUNT = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca(NOW)


@pytest.fixture(scope="module")
def device(ca) -> Issued:
    return make_device_cert(ca, ACCOUNT, "gw-17", NOW, days=30)


def cert_with_subject(ca: Issued, attributes, eku=ExtendedKeyUsageOID.CLIENT_AUTH) -> x509.Certificate:
    key = new_key()
    when = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - datetime.timedelta(days=1))
        .not_valid_after(when + datetime.timedelta(days=1))
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


# -- identity -------------------------------------------------------------


def test_identity_from_ou_and_cn(device):
    identity = device_identity(device.cert)
    assert identity.account == ACCOUNT
    assert identity.device_id == "gw-17"
    assert identity.serial_hex == format(device.cert.serial_number, "x")
    assert identity.fingerprint_sha256 == device.cert.fingerprint(hashes.SHA256()).hex()
    assert len(identity.fingerprint_sha256) == 64


@pytest.mark.parametrize(
    "attributes, reason",
    [
        ([(NameOID.COMMON_NAME, "gw-1")], "missing-account"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT)], "missing-device"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, "not-hex-at-all-not-hex-at-all-xx"), (NameOID.COMMON_NAME, "gw")],
         "bad-account"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT.upper()), (NameOID.COMMON_NAME, "gw")], "bad-account"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT[:-1]), (NameOID.COMMON_NAME, "gw")], "bad-account"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT), (NameOID.ORGANIZATIONAL_UNIT_NAME, "f" * 32),
          (NameOID.COMMON_NAME, "gw")], "bad-account"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT), (NameOID.COMMON_NAME, "gw 1/../x")], "bad-device"),
        # a final newline is not part of an id ("$" would have let both through)
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT), (NameOID.COMMON_NAME, "gw1\n")], "bad-device"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, ACCOUNT + "\n"), (NameOID.COMMON_NAME, "gw1")], "bad-account"),
    ],
)
def test_identity_rejections(ca, attributes, reason):
    cert = cert_with_subject(ca, attributes)
    with pytest.raises(DeviceRejected) as e:
        device_identity(cert)
    assert e.value.reason == reason
    assert e.value.code is ErrorCode.UNAUTHORIZED
    assert e.value.detail["reason"] == reason
    assert "device certificate rejected" in e.value.message


def test_configurable_fields(ca):
    cert = cert_with_subject(ca, [(NameOID.ORGANIZATION_NAME, ACCOUNT), (NameOID.USER_ID, "edge-9"),
                                  (NameOID.COMMON_NAME, "ignored name")])
    with pytest.raises(DeviceRejected):
        device_identity(cert)  # the default OU/CN do not fit
    identity = device_identity(cert, SubjectFields.parse(account="O", device="UID"))
    assert (identity.account, identity.device_id) == (ACCOUNT, "edge-9")
    by_oid = device_identity(cert, SubjectFields.parse(account="2.5.4.10", device="0.9.2342.19200300.100.1.1"))
    assert by_oid == identity


def test_subject_fields_parse_errors():
    with pytest.raises(ValueError, match="unknown subject attribute"):
        SubjectFields.parse(account="organisation")
    with pytest.raises(ValueError, match="different"):
        SubjectFields.parse(account="CN", device="CN")


# -- validity and issuer --------------------------------------------------


def test_validity_window(device):
    check_validity(device.cert, NOW)
    check_validity(device.cert, NOW + 29 * DAY)
    with pytest.raises(DeviceRejected) as e:
        check_validity(device.cert, NOW + 31 * DAY)
    assert e.value.reason == "expired"
    with pytest.raises(DeviceRejected) as e:
        check_validity(device.cert, NOW - DAY)
    assert e.value.reason == "not-yet-valid"


def test_issuer(ca, device):
    assert check_issuer(device.cert, [ca.cert]) == ca.cert
    other = make_ca(NOW, common_name="izreg development CA")  # same name, different key
    with pytest.raises(DeviceRejected) as e:
        check_issuer(device.cert, [other.cert])
    assert e.value.reason == "unknown-ca"
    assert check_issuer(device.cert, [other.cert, ca.cert]) == ca.cert
    with pytest.raises(DeviceRejected):
        check_issuer(device.cert, [])


# -- revocation -----------------------------------------------------------


def make_crl(ca: Issued, serials, now=NOW) -> x509.CertificateRevocationList:
    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(when).next_update(when + datetime.timedelta(days=7)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca.key, hashes.SHA256())


def test_revocation_by_serial_fingerprint_and_crl(ca, device):
    identity = device_identity(device.cert)
    assert revocation_reason(identity) is None
    assert revocation_reason(identity, Revoked(serials={identity.serial_hex})) == "revoked-serial"
    assert revocation_reason(identity, Revoked(fingerprints={identity.fingerprint_sha256})) == "revoked-fingerprint"
    assert revocation_reason(identity, Revoked(serials={"1234"}, fingerprints={"ab" * 32})) is None
    crl = make_crl(ca, [device.cert.serial_number])
    assert revocation_reason(identity, crls=[crl], issuer=ca.cert.subject) == "revoked-crl"
    assert revocation_reason(identity, crls=[make_crl(ca, [12345])], issuer=ca.cert.subject) is None
    other = make_ca(NOW, common_name="another CA")
    # a CRL from another issuer does not apply (serials are unique per issuer only)
    assert revocation_reason(identity, crls=[make_crl(other, [device.cert.serial_number])],
                             issuer=ca.cert.subject) is None


def test_normalize():
    assert normalize_serial("serial=0A:1B") == "a1b"
    assert normalize_serial("0x00FF") == "ff"
    assert normalize_fingerprint("SHA256:" + ":".join(["AB"] * 32)) == "ab" * 32
    for bad in ("", "xyz", "12 34"):
        with pytest.raises(ValueError):
            normalize_serial(bad)
    with pytest.raises(ValueError):
        normalize_fingerprint("ab" * 31)


def test_verifier_runs_every_check(ca, device):
    lookups = []

    def revoked(serial, fingerprint):
        lookups.append((serial, fingerprint))
        return Revoked(serials={"dead"})

    verifier = DeviceVerifier(cas=lambda: [ca.cert], revoked=revoked)
    identity = verifier.verify(device.cert, NOW)
    assert identity.device_id == "gw-17"
    assert lookups == [(identity.serial_hex, identity.fingerprint_sha256)]

    def rejected(v: DeviceVerifier, cert, now=NOW) -> str:
        with pytest.raises(DeviceRejected) as e:
            v.verify(cert, now)
        return e.value.reason

    assert rejected(DeviceVerifier(cas=lambda: []), device.cert) == "unknown-ca"
    assert rejected(verifier, device.cert, NOW + 60 * DAY) == "expired"
    server = make_server_cert(ca, NOW)
    assert rejected(verifier, server.cert) == "not-client-cert"
    assert rejected(DeviceVerifier(cas=lambda: [ca.cert], revoked=lambda s, f: Revoked(fingerprints={f})),
                    device.cert) == "revoked-fingerprint"
    assert rejected(DeviceVerifier(cas=lambda: [ca.cert], crls=lambda: [make_crl(ca, [device.cert.serial_number])]),
                    device.cert) == "revoked-crl"


# -- the store ------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """The device store contract (IDeviceStore), on both backends."""
    if request.param == "postgresql":
        from izreg.auth.pgstore import PgDeviceStore

        yield PgDeviceStore(request.getfixturevalue("pg_db"))
        return
    env = open_env(str(tmp_path), 1 << 30)
    yield DeviceStore(env)
    env.close()


def test_store_provides_the_interface(store):
    assert IDeviceStore.providedBy(store)


def test_store_revocations(store, device):
    identity = device_identity(device.cert)
    assert store.revocations_for(identity.serial_hex, identity.fingerprint_sha256) == Revoked()
    assert store.revoke(SERIAL, identity.serial_hex.upper(), NOW, "stolen") is True
    assert store.revoke(SERIAL, identity.serial_hex, NOW + 1) is False
    found = store.revocations_for(identity.serial_hex, identity.fingerprint_sha256)
    assert revocation_reason(identity, found) == "revoked-serial"
    store.revoke(FINGERPRINT, identity.fingerprint_sha256, NOW + 2)
    [serial, fingerprint] = sorted(store.list_revoked(), key=lambda r: r.kind, reverse=True)
    assert (serial.kind, serial.value, serial.at, serial.note) == (SERIAL, identity.serial_hex, NOW, "stolen")
    assert (fingerprint.kind, fingerprint.value) == (FINGERPRINT, identity.fingerprint_sha256)
    assert store.unrevoke(SERIAL, identity.serial_hex) is True
    assert store.revocations_for(identity.serial_hex, identity.fingerprint_sha256) == Revoked(
        fingerprints=frozenset([identity.fingerprint_sha256]))
    with pytest.raises(ValueError):
        store.revoke(SERIAL, "not hex", NOW)


def test_pull_recorder_batches_and_keeps_the_last_pull(store):
    writes = []
    real = store.write_pulls
    store.write_pulls = lambda records: writes.append(list(records)) or real(writes[-1])
    recorder = PullRecorder(store)
    other = "f" * 32
    recorder.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW)
    recorder.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW + 5)
    recorder.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW + 3)  # late arrival
    recorder.record(ACCOUNT, "gw-2", f"{ACCOUNT}/db", "sha256:" + "b" * 64, NOW + 1)
    recorder.record(other, "gw-9", f"{other}/app", "sha256:" + "c" * 64, NOW + 2)
    assert store.list_pulls(ACCOUNT) == []  # nothing written before flush
    assert recorder.pending == 3
    assert recorder.flush() == 3
    assert len(writes) == 1  # one transaction for the batch
    assert recorder.flush() == 0 and len(writes) == 1
    assert store.list_pulls(ACCOUNT) == [
        PullRecord(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW + 5),
        PullRecord(ACCOUNT, "gw-2", f"{ACCOUNT}/db", "sha256:" + "b" * 64, NOW + 1),
    ]
    assert [r.device_id for r in store.list_pulls(ACCOUNT, f"{ACCOUNT}/db")] == ["gw-2"]
    recorder.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW + 100)
    recorder.flush()
    assert [r.at for r in store.list_pulls(ACCOUNT, f"{ACCOUNT}/app")] == [NOW + 100]  # overwritten, bounded


def test_pulls_of_a_manifest(store):
    digest = "sha256:" + "a" * 64
    assert store.pull_devices(f"{ACCOUNT}/app", digest) == {} and store.pulls_of(f"{ACCOUNT}/app", digest) == (0, None)
    store.write_pulls([PullRecord(ACCOUNT, "gw-1", f"{ACCOUNT}/app", digest, NOW),
                       PullRecord(ACCOUNT, "gw-2", f"{ACCOUNT}/app", digest, NOW + 2),
                       PullRecord(ACCOUNT, "gw-3", f"{ACCOUNT}/app", "sha256:" + "b" * 64, NOW + 9),
                       PullRecord(ACCOUNT, "gw-3", f"{ACCOUNT}/other", digest, NOW + 9)])
    assert store.pull_devices(f"{ACCOUNT}/app", digest) == {"gw-1": NOW, "gw-2": NOW + 2}
    assert store.pulls_of(f"{ACCOUNT}/app", digest) == (2, NOW + 2)


def test_two_nodes_flushing_pulls_of_one_device_keep_the_latest(store):
    """Each node batches its own pulls: the later pull wins whichever node writes last."""
    digest = "sha256:" + "a" * 64
    one, two = PullRecorder(store), PullRecorder(store)
    one.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", digest, NOW + 5)
    two.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", digest, NOW + 1)
    assert one.flush() == 1 and two.flush() == 1
    assert store.pulls_of(f"{ACCOUNT}/app", digest) == (1, NOW + 5)
    assert one.devices(f"{ACCOUNT}/app", digest) == {"gw-1": NOW + 5}


def test_pull_recorder_keeps_the_batch_when_a_write_fails(store):
    recorder = PullRecorder(store)
    recorder.record(ACCOUNT, "gw-1", f"{ACCOUNT}/app", "sha256:" + "a" * 64, NOW)

    def broken(records):
        raise OSError("disk full")

    real, store.write_pulls = store.write_pulls, broken
    with pytest.raises(OSError):
        recorder.flush()
    assert recorder.pending == 1
    store.write_pulls = real
    assert recorder.flush() == 1
    assert len(store.list_pulls(ACCOUNT)) == 1


def test_pull_recorder_rejects_key_separators(store):
    with pytest.raises(ValueError):
        PullRecorder(store).record(ACCOUNT, "gw\x001", f"{ACCOUNT}/app", "sha256:x", NOW)


def test_module_is_pure():
    import inspect

    source = inspect.getsource(devices)
    for forbidden in ("import os", "import lmdb", "twisted", "import time"):
        assert forbidden not in source
