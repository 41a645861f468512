"""Development certificates: contents, layout, modes."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from izreg import devcerts
from izreg.auth.devices import DeviceVerifier
from izreg.service.tls import TLSFiles, load_material

NOW = 1_800_000_000.0
ACCOUNT = "0123456789abcdef0123456789abcdef"


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def test_write_dev_certs_layout_and_contents(tmp_path):
    paths = devcerts.write_dev_certs(str(tmp_path / "d"), NOW, ACCOUNT, "edge-1")
    d = tmp_path / "d"
    # the top directory is a clean client cert-dir: every *.key has its *.cert
    assert sorted(os.listdir(d)) == ["ca.crt", "client.cert", "client.key", "server"]
    assert sorted(os.listdir(d / "server")) == ["ca.key", "server.crt", "server.key"]
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths.ca_cert).st_mode) == 0o644

    ca, server, client = load(paths.ca_cert), load(paths.server_cert), load(paths.client_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)

    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "containers.local"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == f"CN=edge-1,OU={ACCOUNT}"

    # what the server would load, and what the device verifier makes of the client cert
    material = load_material(TLSFiles(paths.server_cert, paths.server_key, (paths.ca_cert,)))
    identity = DeviceVerifier(cas=lambda: material.device_cas).verify(client, NOW + 60)
    assert (identity.account, identity.device_id) == (ACCOUNT, "edge-1")


def test_refuses_to_overwrite_unless_forced_and_keeps_the_ca(tmp_path):
    first = devcerts.write_dev_certs(str(tmp_path), NOW, ACCOUNT)
    serials = [load(path).serial_number for path in (first.ca_cert, first.server_cert, first.client_cert)]
    with pytest.raises(devcerts.DevCertsExist, match="client.cert, client.key"):
        devcerts.write_dev_certs(str(tmp_path), NOW, ACCOUNT)
    assert [load(path).serial_number for path in (first.ca_cert, first.server_cert, first.client_cert)] == serials
    second = devcerts.write_dev_certs(str(tmp_path), NOW, ACCOUNT, overwrite=True)
    assert second == dataclasses.replace(first, ca_reused=True, server_issued=False)
    # the CA and the server's certificate stay (a running registry uses them); the device's is new
    assert [load(path).serial_number for path in (second.ca_cert, second.server_cert)] == serials[:2]
    assert load(second.client_cert).serial_number != serials[2]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_bad_account(tmp_path):
    with pytest.raises(ValueError, match="account id"):
        devcerts.write_dev_certs(str(tmp_path), NOW, "ACCOUNT")
    assert not os.path.exists(tmp_path / "ca.crt")


@pytest.mark.parametrize("device_id", ["bad id!", "-gw", "gw-1\n", "g" * 129])
def test_bad_device_id(tmp_path, device_id):
    """A device id the registry would refuse in a certificate is refused before any file is written."""
    with pytest.raises(ValueError, match="not a device id"):
        devcerts.write_dev_certs(str(tmp_path), NOW, ACCOUNT, device_id)
    assert not os.path.exists(tmp_path / "ca.crt")


def test_validity_uses_now():
    ca = devcerts.make_ca(NOW)
    device = devcerts.make_device_cert(ca, ACCOUNT, "d", NOW, days=2)
    assert device.cert.not_valid_before_utc.timestamp() == NOW - devcerts.BACKDATE.total_seconds()
    assert device.cert.not_valid_after_utc.timestamp() == NOW + 2 * 86400


def _names(path: str) -> tuple[list[str], list[str]]:
    sans = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.DNSName), [str(a) for a in sans.get_values_for_type(x509.IPAddress)]


def test_hosts_are_named_in_the_server_certificate_first(tmp_path):
    paths = devcerts.write_dev_certs(str(tmp_path / "d"), NOW, ACCOUNT,
                                     hosts=["Registry.Lab.Example.", "10.1.2.3", "fd00::5", "*.nodes.lab.example"])
    assert _names(paths.server_cert) == (
        ["registry.lab.example", "*.nodes.lab.example", "localhost", "containers.local"],
        ["10.1.2.3", "fd00::5", "127.0.0.1"])
    assert load(paths.server_cert).subject.rfc4514_string() == "CN=registry.lab.example"


@pytest.mark.parametrize("host", ["bad name", "-lead.example", "a..b", "x" * 64 + ".example", "*", "*.com.",
                                  "ré.example", "10.1.2.3/24", ""])
def test_a_bad_host_is_refused_before_anything_is_written(tmp_path, host):
    with pytest.raises(ValueError, match="not a host name or IP address"):
        devcerts.write_dev_certs(str(tmp_path / "d"), NOW, ACCOUNT, hosts=[host])
    assert not os.path.exists(tmp_path / "d")


def test_hosts_and_a_kept_server_certificate(tmp_path):
    """A kept server certificate that lacks a --host name is not silently kept: the user is told what to remove."""
    d = str(tmp_path / "d")
    first = devcerts.write_dev_certs(d, NOW, ACCOUNT, hosts=["a.example"])
    # the kept one names it: fine, a new device only
    second = devcerts.write_dev_certs(d, NOW, ACCOUNT, hosts=["A.example"], overwrite=True)
    assert not second.server_issued and load(second.server_cert).serial_number == load(first.server_cert).serial_number
    with pytest.raises(devcerts.DevCertsError, match="does not name b.example: remove .*server.crt and .*server.key"):
        devcerts.write_dev_certs(d, NOW, ACCOUNT, hosts=["a.example", "b.example"], overwrite=True)
    os.remove(first.server_cert)
    os.remove(first.server_key)
    third = devcerts.write_dev_certs(d, NOW, ACCOUNT, hosts=["a.example", "b.example"], overwrite=True)
    assert third.server_issued and third.ca_reused
    assert _names(third.server_cert)[0][:2] == ["a.example", "b.example"]
    # another directory issued from this CA gets no server certificate: --host has nothing to name
    with pytest.raises(devcerts.DevCertsError, match="--host names the server certificate"):
        devcerts.write_dev_certs(str(tmp_path / "other"), NOW, ACCOUNT, hosts=["c.example"], ca_dir=d)
