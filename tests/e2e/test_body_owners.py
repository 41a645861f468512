"""
C{limits.body_memory} (and C{response_memory}) shares against a real
server: an account's devices and read-only keys (edge gateways in the field,
pull-only CI) hold a share apart from its keys that push, so one gateway
that stalls its pull reports cannot make its account's pushes 503; and a
pull report is refused at its headers unless a device sends it, past its
own limit (izreg/http/pullreports.py BODY_LIMIT), not max_manifest_size.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl

import pytest
import requests

from izreg.http.pullreports import BODY_LIMIT
from tests.helpers.server import RegistryProcess, status_of
from tests.helpers.tls import restart_with_tls

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's limits.body_memory and device certificates")

MIB = 1024 * 1024
#: a share of 1 MiB (a quarter of body_memory, and one max_manifest_size): two stalled reports fill it
CONFIG = f"[limits]\nbody_memory = {4 * MIB}\nmax_manifest_size = {MIB}\n"
EMPTY_CONFIG = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("izreg-owners")
    config = base / "izreg.toml"
    config.write_text(CONFIG)
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=str(config))
    try:
        reg.start()
        reg.tls_port, reg.paths = restart_with_tls(reg, str(base / "certs"))
        yield reg
    finally:
        reg.close()


def device_socket(reg) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=reg.paths.ca_cert)
    context.check_hostname = False
    context.load_cert_chain(reg.paths.client_cert, reg.paths.client_key)
    return context.wrap_socket(socket.create_connection(("127.0.0.1", reg.tls_port), timeout=30))


def head_of_report(length: int, authorization: str | None = None) -> bytes:
    lines = ["POST /v2/_izreg/pulls HTTP/1.1", "Host: registry", "Content-Type: application/json",
             f"Content-Length: {length}", *([f"Authorization: {authorization}"] if authorization else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def push_manifest(reg, name: str) -> requests.Response:
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_CONFIG, "size": 2},
                "layers": []}
    return requests.put(f"{reg.url}/v2/{reg.account}/{name}/manifests/latest", data=json.dumps(manifest),
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                        auth=reg.requests_auth, timeout=30)


def test_a_device_stalling_its_pull_reports_does_not_stop_its_accounts_pushes(registry):
    stalled = []
    try:
        for _ in range(2):  # 2 x 512 KiB: the whole of a share, as one gateway's stalled reports
            sock = device_socket(registry)
            sock.sendall(head_of_report(BODY_LIMIT) + b'{"pulls": [')
            stalled.append(sock)
        # a third is past the share (503 at once): the two are held
        third = device_socket(registry)
        stalled.append(third)
        third.sendall(head_of_report(BODY_LIMIT))
        assert status_of(third) == 503
        answer = push_manifest(registry, "owners")
        assert answer.status_code == 201, answer.text
    finally:
        for sock in stalled:
            sock.close()


def test_a_pull_report_from_a_key_is_refused_before_its_body(registry):
    read_only = registry.cli("key", "create", registry.account, "--name", "ro", "--read-only")
    authorization = "Basic " + base64.b64encode(f"KEY:{read_only}".encode()).decode()
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        sock.sendall(head_of_report(BODY_LIMIT, authorization))  # no body byte: the answer comes anyway
        assert status_of(sock) == 403


def test_a_pull_report_over_its_limit_is_refused_before_its_body(registry):
    with device_socket(registry) as sock:
        sock.sendall(head_of_report(BODY_LIMIT + 1))
        assert status_of(sock) == 413
