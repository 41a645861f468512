"""A registry's TLS listener with development certificates (e2e tests and the benchmark's smoke runs)."""

from __future__ import annotations

import time

from izreg.devcerts import DevCertPaths, write_dev_certs
from tests.helpers.server import RegistryProcess, free_port


def restart_with_tls(registry: RegistryProcess, certs: str, device_id: str = "gw-1") -> tuple[int, DevCertPaths]:
    """
    Write development certificates (CA, server, a device of the registry's
    account) to C{certs} and restart C{registry} with a TLS listener beside
    its plain one: the TLS port and the certificate paths.
    """
    paths = write_dev_certs(certs, time.time(), registry.account, device_id)
    port = free_port()
    options = {"tls-listen": f"tcp:{port}:interface=127.0.0.1", "tls-cert": paths.server_cert,
               "tls-key": paths.server_key, "device-ca": paths.ca_cert}
    registry.extra_args = [arg for name, value in options.items() for arg in (f"--{name}", value)]
    registry.restart()
    return port, paths
