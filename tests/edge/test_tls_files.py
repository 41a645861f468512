"""
A bad ``--device-cert``, ``--device-key`` or ``--upstream-ca`` of the edge
(izreg.edge.upstream.MutualTLSPolicy over izreg.service.tls.pem) is one line:
which file, what is wrong, what to do; never cryptography's FAQ pointer.
Real files, written by izreg dev-certs and converted by openssl where a
client would have them so.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization

from izreg import devcerts
from izreg.edge.upstream import MutualTLSPolicy
from izreg.service.tls import TLSConfigError

ACCOUNT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def files(tmp_path):
    """Dev certs, and the wrong files a user may give instead (each a real file)."""
    paths = devcerts.write_dev_certs(str(tmp_path / "certs"), time.time(), ACCOUNT)
    other = devcerts.write_dev_certs(str(tmp_path / "other"), time.time(), ACCOUNT)
    with open(paths.client_cert, "rb") as f:
        cert_pem = f.read()
    with open(paths.client_key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    made = {
        "junk": b"hello\n",
        "empty": b"",
        "cert.der": devcerts.x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER),
        "key.der": key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
        "encrypted.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"secret")),
        "cut.pem": cert_pem[:300],
    }
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
    return paths, other, {name: str(tmp_path / name) for name in made}


def said(cert, key, ca=None) -> str:
    with pytest.raises(TLSConfigError) as e:
        MutualTLSPolicy(cert, key, ca)
    message = str(e.value)
    assert "\n" not in message and "cryptography.io" not in message and "MalformedFraming" not in message
    return message


def test_a_file_that_is_not_a_pem_certificate_says_what_it_is(files):
    paths, _, made = files
    key = paths.client_key
    assert said(made["junk"], key) == (f"the device certificate {made['junk']} is not PEM (no -----BEGIN CERTIFICATE-----"
                                       " line): give the PEM file your CA (or izreg dev-certs) wrote")
    assert said(made["empty"], key) == (f"the device certificate {made['empty']} is empty: give the file your CA (or"
                                        " izreg dev-certs) wrote")
    der = made["cert.der"]
    assert said(der, key) == (f"the device certificate {der} is DER, not PEM: convert it (openssl x509 -inform DER"
                              f" -in {der} -out {der}.pem) and give the .pem file")
    assert said(made["cut.pem"], key) == (f"the device certificate {made['cut.pem']} holds a PEM certificate that"
                                          " cannot be read (damaged or cut short?): copy the file again")
    assert said(key, paths.client_cert) == (f"the device certificate {key} holds a private key, not a certificate:"
                                            " are the certificate and key files swapped?")


def test_a_file_that_is_not_the_key_says_what_it_is(files):
    paths, other, made = files
    cert = paths.client_cert
    assert said(cert, made["junk"]) == (f"the device key {made['junk']} is not PEM (no -----BEGIN PRIVATE KEY-----"
                                        " line): give the PEM file your CA (or izreg dev-certs) wrote")
    der = made["key.der"]
    assert said(cert, der) == (f"the device key {der} is DER, not PEM: convert it (openssl pkey -inform DER -in {der}"
                               f" -out {der}.pem) and give the .pem file")
    encrypted = made["encrypted.key"]
    assert said(cert, encrypted) == (
        f"the device key {encrypted} is encrypted (it needs a passphrase), and izreg reads unencrypted keys only:"
        f" decrypt it (openssl pkey -in {encrypted} -out PLAIN.key) and give that file, mode 0600")
    assert said(cert, other.client_key) == (
        f"the device key {other.client_key} does not match the first certificate in {cert} (it is the key of"
        " another certificate): give the key that was made with that certificate")


def test_a_certificate_that_is_no_device_certificate_is_refused(files):
    paths, _, _ = files
    assert said(paths.server_cert, paths.server_key) == (
        f"the device certificate {paths.server_cert} (CN=localhost) is not a client certificate (extended key usage:"
        " serverAuth; TLS clients need clientAuth): give the device's certificate, not the registry's server"
        " certificate")
    assert said(paths.ca_cert, paths.ca_key) == (
        f"the device certificate {paths.ca_cert} is a CA certificate (CN=izreg development CA,O=izreg development),"
        " not a device's: give the device's own certificate (client.cert of izreg dev-certs), issued by that CA")


def test_an_upstream_ca_that_is_no_ca_is_refused(files):
    paths, _, made = files
    assert said(paths.client_cert, paths.client_key, paths.server_cert) == (
        f"the upstream CA {paths.server_cert} holds CN=localhost, issued by CN=izreg development CA,O=izreg"
        " development, which is not a CA certificate: give the CA certificate that signed the registry's"
        " certificate (ca.crt of izreg dev-certs)")
    assert said(paths.client_cert, paths.client_key, paths.client_key) == (
        f"the upstream CA {paths.client_key} holds a private key, not a certificate: give the CA certificate,"
        " never a key")
    MutualTLSPolicy(paths.client_cert, paths.client_key, paths.ca_cert)  # the right files


def test_an_expired_device_certificate_is_told_at_start_not_refused(tmp_path):
    """An edge whose certificate lapsed still serves its cache (and a gateway's clock may be wrong at boot)."""
    now = time.time()
    paths = devcerts.write_dev_certs(str(tmp_path / "certs"), now - 400 * 86400, ACCOUNT, days=30)
    policy = MutualTLSPolicy(paths.client_cert, paths.client_key, paths.ca_cert)
    expired = datetime.datetime.fromtimestamp(now - 370 * 86400, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    assert policy.validity_problem(datetime.datetime.now(datetime.timezone.utc)) == (
        f"the device certificate {paths.client_cert} expired on {expired} UTC: the registry refuses this gateway"
        " (its cache still serves) until it has a new one")
    early = datetime.datetime.fromtimestamp(now - 500 * 86400, datetime.timezone.utc)
    assert "is valid only from" in policy.validity_problem(early) and "clock" in policy.validity_problem(early)
    fresh = devcerts.write_dev_certs(str(tmp_path / "fresh"), now, ACCOUNT)
    assert MutualTLSPolicy(fresh.client_cert, fresh.client_key, None).validity_problem(
        datetime.datetime.now(datetime.timezone.utc)) is None


@pytest.mark.e2e  # a real twistd izreg edge
def test_twistd_izreg_edge_with_a_bad_device_certificate_says_one_line(files, tmp_path):
    paths, _, made = files
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    done = subprocess.run(
        [twistd, "-n", "--pidfile", "", "izreg", "edge", "--upstream", "https://127.0.0.1:9",
         "--device-cert", made["junk"], "--device-key", paths.client_key, "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    )
    assert done.returncode != 0
    assert done.stderr.splitlines() == [f"izreg edge: TLS: the device certificate {made['junk']} is not PEM (no"
                                        " -----BEGIN CERTIFICATE----- line): give the PEM file your CA (or izreg"
                                        " dev-certs) wrote"], done.stderr


@pytest.mark.e2e  # a real twistd izreg edge
def test_the_edge_with_an_expired_device_certificate_starts_and_says_so(tmp_path):
    from tests.helpers.edge import EdgeProcess

    paths = devcerts.write_dev_certs(str(tmp_path / "certs"), time.time() - 400 * 86400, ACCOUNT, days=30)
    edge = EdgeProcess(str(tmp_path / "cache"), "https://127.0.0.1:9", paths.directory,
                       log_path=str(tmp_path / "edge.log"))
    try:
        mark = edge.log_mark()
        edge.start()  # it serves (/healthz answers 200): its cache is still of use
        edge.wait_for_log(rf"#warn\] the device certificate {paths.client_cert} expired on .* UTC: the registry"
                          r" refuses this gateway \(its cache still serves\) until it has a new one", since=mark)
    finally:
        edge.close()
