"""
Edge devices over mutual TLS with a real client: skopeo with ``--cert-dir``
(the containers/image layout: ``ca.crt``, ``client.cert``, ``client.key``)
pulls from its account over the TLS listener; it may not push, may not read
another account, needs its certificate, and is refused once revoked.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.helpers.ocilayout import build_layout, layout_manifest_digest, read_layout_blob
from tests.helpers.server import free_port
from tests.helpers.skopeo import SKOPEO, Skopeo

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                       reason="izreg device certificates"),
    pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed"),
]


class _TLSView:
    """The TLS listener of a registry, as the Skopeo helper sees a registry (no key: the cert is the identity)."""

    def __init__(self, registry, port):
        self.host = f"127.0.0.1:{port}"
        self.port = port
        self.creds = None


def _cert_dir_without_client_cert(certs, target):
    os.makedirs(target)
    shutil.copy(os.path.join(certs, "ca.crt"), target)
    return str(target)


def _issue_device_cert(certs, account, device_id, target):
    """A second device certificate from the same development CA, as a cert dir."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from izreg.devcerts import Issued, cert_pem, key_pem, make_device_cert

    with open(os.path.join(certs, "server", "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(certs, "ca.crt"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    device = make_device_cert(Issued(ca_key, ca_cert), account, device_id, time.time())
    os.makedirs(target)
    shutil.copy(os.path.join(certs, "ca.crt"), target)
    with open(os.path.join(target, "client.cert"), "wb") as f:
        f.write(cert_pem(device.cert))
    fd = os.open(os.path.join(target, "client.key"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem(device.key))
    return str(target)


@pytest.fixture
def edge(start_registry, tmp_path):
    """A registry with a plain listener (keys) and a TLS listener (device certificates)."""
    registry = start_registry()
    certs = str(tmp_path / "certs")
    registry.cli("dev-certs", certs, "--account", registry.account, "--device-id", "gw-1")
    tls_port = free_port()
    registry.extra_args = [
        "--tls-listen", f"tcp:{tls_port}:interface=127.0.0.1",
        "--tls-cert", os.path.join(certs, "server", "server.crt"),
        "--tls-key", os.path.join(certs, "server", "server.key"),
        "--device-ca", os.path.join(certs, "ca.crt"),
    ]
    registry.restart()
    image = build_layout(tmp_path / "src", tag="v1", layers=[4096, 150_000], seed=50)
    repo = f"{registry.account}/edge/app"
    Skopeo(registry, tmp_path).copy(f"oci:{image['path']}:v1", f"docker://{registry.host}/{repo}:v1")
    return {"registry": registry, "certs": certs, "tls": _TLSView(registry, tls_port), "repo": repo,
            "image": image, "tmp": tmp_path}


def _device_skopeo(edge):
    return Skopeo(edge["tls"], edge["tmp"])


def test_device_pulls_with_its_certificate(edge):
    sk, tls, certs, repo, image = _device_skopeo(edge), edge["tls"], edge["certs"], edge["repo"], edge["image"]
    ref = f"docker://{tls.host}/{repo}:v1"
    raw = sk.run("inspect", "--cert-dir", certs, "--raw", ref).stdout
    assert raw.encode() == image["manifest_bytes"]
    out = edge["tmp"] / "on-device"
    sk.run("copy", "--src-cert-dir", certs, ref, f"oci:{out}:v1")
    assert layout_manifest_digest(out, "v1") == image["manifest_digest"]
    for digest, data in image["blobs"].items():
        assert read_layout_blob(out, digest) == data

    # pull records are batched in memory and flushed periodically and at shutdown
    edge["registry"].stop()
    pulls = edge["registry"].cli("device", "pulls", edge["registry"].account)
    assert "gw-1" in pulls and repo in pulls, pulls


def test_device_may_not_push(edge):
    sk, tls, certs, repo, image = _device_skopeo(edge), edge["tls"], edge["certs"], edge["repo"], edge["image"]
    proc = sk.run("copy", "--dest-cert-dir", certs, f"oci:{image['path']}:v1",
                  f"docker://{tls.host}/{repo}:from-device", check=False)
    assert proc.returncode != 0, proc.stdout
    tags = Skopeo(edge["registry"], edge["tmp"]).list_tags(repo)
    assert tags == ["v1"]


def test_device_needs_its_certificate(edge):
    sk, tls, repo = _device_skopeo(edge), edge["tls"], edge["repo"]
    ca_only = _cert_dir_without_client_cert(edge["certs"], edge["tmp"] / "ca-only")
    proc = sk.run("inspect", "--cert-dir", ca_only, "--raw", f"docker://{tls.host}/{repo}:v1", check=False)
    assert proc.returncode != 0, proc.stdout


def test_device_of_another_account_is_refused(edge):
    registry = edge["registry"]
    other_account, _ = registry.new_account()
    other = _issue_device_cert(edge["certs"], other_account, "gw-other", edge["tmp"] / "other-device")
    sk, tls, repo = _device_skopeo(edge), edge["tls"], edge["repo"]
    proc = sk.run("inspect", "--cert-dir", other, "--raw", f"docker://{tls.host}/{repo}:v1", check=False)
    assert proc.returncode != 0, proc.stdout


def test_revoked_device_is_refused(edge):
    sk, tls, certs, repo = _device_skopeo(edge), edge["tls"], edge["certs"], edge["repo"]
    ref = f"docker://{tls.host}/{repo}:v1"
    sk.run("inspect", "--cert-dir", certs, "--raw", ref)
    edge["registry"].cli("device", "revoke", "--cert", os.path.join(certs, "client.cert"), "--note", "e2e")
    proc = sk.run("inspect", "--cert-dir", certs, "--raw", ref, check=False)
    assert proc.returncode != 0, proc.stdout


def test_sighup_rotates_the_server_certificate_and_device_ca(start_registry, tmp_path):
    """Replace the TLS files in place, ``kill -HUP``: new connections use the new CA at once."""
    registry = start_registry()
    old, new, served = str(tmp_path / "old"), str(tmp_path / "new"), tmp_path / "served"
    registry.cli("dev-certs", old, "--account", registry.account, "--device-id", "gw-old")
    registry.cli("dev-certs", new, "--account", registry.account, "--device-id", "gw-new")

    def serve(certs):
        for src, name in ((os.path.join(certs, "server", "server.crt"), "server.crt"),
                          (os.path.join(certs, "server", "server.key"), "server.key"),
                          (os.path.join(certs, "ca.crt"), "device-ca.crt")):
            shutil.copy(src, served / f".{name}.tmp")
            os.replace(served / f".{name}.tmp", served / name)  # atomic, as an operator should

    served.mkdir()
    serve(old)
    tls_port = free_port()
    registry.extra_args = ["--tls-listen", f"tcp:{tls_port}:interface=127.0.0.1",
                           "--tls-cert", str(served / "server.crt"), "--tls-key", str(served / "server.key"),
                           "--device-ca", str(served / "device-ca.crt")]
    registry.restart()
    image = build_layout(tmp_path / "src", tag="v1", layers=[1000], seed=80)
    repo = f"{registry.account}/rotating"
    Skopeo(registry, tmp_path).copy(f"oci:{image['path']}:v1", f"docker://{registry.host}/{repo}:v1")

    device = Skopeo(_TLSView(registry, tls_port), tmp_path)
    ref = f"docker://127.0.0.1:{tls_port}/{repo}:v1"
    assert device.run("inspect", "--cert-dir", old, "--raw", ref).stdout.encode() == image["manifest_bytes"]
    assert device.run("inspect", "--cert-dir", new, "--raw", ref, check=False).returncode != 0

    serve(new)
    mark = registry.log_mark()
    registry.send_signal(signal.SIGHUP)
    line = registry.wait_for_log(r"reloaded TLS|TLS reload failed", since=mark)
    assert "reload failed" not in line, line

    assert device.run("inspect", "--cert-dir", new, "--raw", ref).stdout.encode() == image["manifest_bytes"]
    assert device.run("inspect", "--cert-dir", old, "--raw", ref, check=False).returncode != 0


def _curl_v2(port: int, cert_dir: str) -> tuple[int, dict]:
    """GET /v2/ over TLS with the device certificate of C{cert_dir}: (status, JSON body)."""
    import json
    import subprocess

    proc = subprocess.run(
        ["curl", "-sS", "--cacert", os.path.join(cert_dir, "ca.crt"), "--cert", os.path.join(cert_dir, "client.cert"),
         "--key", os.path.join(cert_dir, "client.key"), "-w", "\n%{http_code}", f"https://127.0.0.1:{port}/v2/"],
        capture_output=True, text=True, timeout=60, check=True)
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), json.loads(body) if body.strip() else {}


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_device_of_a_deleted_account_is_refused_at_its_next_request(edge):
    # an account deleted while its device is connected: its certificate no longer opens anything, like its keys
    registry = edge["registry"]
    gone, _ = registry.new_account()
    certs = _issue_device_cert(edge["certs"], gone, "gw-gone", edge["tmp"] / "gone-device")
    assert _curl_v2(edge["tls"].port, certs)[0] == 200
    registry.cli("account", "delete", gone)
    status, body = _curl_v2(edge["tls"].port, certs)
    assert status == 401, body
    assert body["errors"][0]["code"] == "UNAUTHORIZED" and body["errors"][0]["detail"]["reason"] == "unknown-account"
    # the account's own device still gets in
    assert _curl_v2(edge["tls"].port, edge["certs"])[0] == 200
