"""
``izreg dev-certs --host``: a real ``twistd izreg server`` on the certificate
it wrote, and clients that verify the host name they asked for (a lab
cluster reached by a real host name, not localhost).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys

import pytest

from tests.helpers.server import REPO_ROOT, free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg", reason="izreg's TLS")]

HOSTS = ("registry.lab.example", "10.20.30.40")


def _get_v2(port: int, ca: str, server_name: str) -> bytes:
    """GET /v2/ over TLS to 127.0.0.1:PORT, verifying the certificate against C{server_name} (SNI and name check)."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: " + server_name.encode() + b"\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer


def test_clients_verify_the_host_names_given(start_registry, tmp_path):
    certs = str(tmp_path / "certs")
    made = subprocess.run([sys.executable, "-m", "izreg.cli", "dev-certs", certs,
                           *(a for h in HOSTS for a in ("--host", h))],
                          cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    port = free_port()
    start_registry("--tls-listen", f"tcp:{port}:interface=127.0.0.1",
                   "--tls-cert", os.path.join(certs, "server", "server.crt"),
                   "--tls-key", os.path.join(certs, "server", "server.key"))
    ca = os.path.join(certs, "ca.crt")
    for name in (*HOSTS, "localhost"):
        assert _get_v2(port, ca, name).startswith(b"HTTP/1.1 401 "), name  # verified, then asked for credentials
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _get_v2(port, ca, "other.lab.example")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        _get_v2(port, ca, "10.20.30.41")
