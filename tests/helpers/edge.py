"""
A registry with TLS and a device CA, and the real edge process in front of it.

L{EdgeProcess} runs ``twistd -n izreg edge`` from this checkout on a free
loopback port (a L{RegistryProcess} with another command line: the same
start/stop/kill9/log waiting). L{tls_registry} turns a started registry into
one with a TLS listener and development certificates (``izreg dev-certs``);
the gateway's certificate is the cert dir's ``client.cert``.
"""

from __future__ import annotations

import os
import socket
import sys

from tests.helpers.server import RegistryProcess, ServerStartError, free_port


class EdgeProcess(RegistryProcess):
    """``twistd -n izreg edge`` against C{registry}'s TLS listener; C{data_dir} is the cache dir."""

    def __init__(self, cache_dir: str, upstream: str, certs: str, log_path: str | None = None,
                 extra_args=(), cert: str | None = None, key: str | None = None) -> None:
        super().__init__(data_dir=cache_dir, log_path=log_path, extra_args=extra_args)
        self.upstream, self.certs = upstream, certs
        self.cert = cert or os.path.join(certs, "client.cert")
        self.key = key or os.path.join(certs, "client.key")

    def command(self) -> list[str]:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "-n", "--logfile=-", "--pidfile=", "izreg", "edge",
                "--upstream", self.upstream,
                "--upstream-ca", os.path.join(self.certs, "ca.crt"),
                "--device-cert", self.cert, "--device-key", self.key,
                "--cache-dir", self.data_dir,
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                *self.extra_args]

    def _after_start(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\nConnection: close\r\n\r\n")
            status = sock.recv(64)
        if not status.startswith(b"HTTP/1.1 200"):
            raise ServerStartError(f"GET /healthz answered {status!r}\n{self.log_tail()}")

    def cli(self, *args: str) -> str:
        """``izreg-edge --cache-dir CACHE ARGS``."""
        import subprocess

        from tests.helpers.server import REPO_ROOT

        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        proc = subprocess.run([sys.executable, "-m", "izreg.edge.cli", "--cache-dir", self.data_dir, *args],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"izreg-edge {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout.strip()


def tls_registry(registry: RegistryProcess, certs: str, device_id: str = "gw-1") -> str:
    """Give a started registry a TLS listener with dev certs in C{certs}; return its https URL."""
    registry.cli("dev-certs", certs, "--account", registry.account, "--device-id", device_id)
    port = free_port()
    registry.extra_args = [
        "--tls-listen", f"tcp:{port}:interface=127.0.0.1",
        "--tls-cert", os.path.join(certs, "server", "server.crt"),
        "--tls-key", os.path.join(certs, "server", "server.key"),
        "--device-ca", os.path.join(certs, "ca.crt"),
    ]
    registry.restart()
    registry.tls_port = port
    return f"https://127.0.0.1:{port}"
