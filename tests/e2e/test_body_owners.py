"""
C{limits.body_memory} against a real server: a pull report is refused at
its headers unless a device sends it, and past its own limit
(izreg/http/pullreports.py BODY_LIMIT), not once max_manifest_size of it is
held in the account's share.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl

import pytest

from izreg.http.pullreports import BODY_LIMIT
from tests.helpers.server import RegistryProcess
from tests.helpers.tls import restart_with_tls

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's limits.body_memory and device certificates")

MIB = 1024 * 1024
#: a share of 1 MiB (a quarter of body_memory, and one max_manifest_size): two stalled reports fill it
CONFIG = f"[limits]\nbody_memory = {4 * MIB}\nmax_manifest_size = {MIB}\n"


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


def status_of(sock) -> int:
    """The status of the answer on C{sock}, read before any more of the request is sent."""
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        assert data, f"closed before a status line: {head!r}"
        head += data
    return int(head.split(b" ", 2)[1])


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
