"""
A ``haproxy:`` TLS listener (docs/deploy.rst, haproxy in ``mode tcp`` with ``send-proxy-v2``) against a real
server, its clients raw sockets that send the PROXY v2 header haproxy would, naming TEST-NET addresses: the
connection caps (``[connections] max_per_address``) and the TLS handshake queue's client groups count the
address the header names, not the proxy's (izreg/service/proxyheader.py); a connection that sends no header
is closed after a few seconds.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct

import pytest

from tests.conftest import require_tool
from tests.e2e.test_tls_admission import closed_by_server, saved_groups, wait_for
from tests.helpers.cluster import HAProxy, haproxy_available
from tests.helpers.server import RegistryProcess, free_port
from tests.helpers.tls import restart_with_tls

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's TLS listener")

CAP, PER_ADDRESS = 4, 3  # [tls] max_handshakes (one group holds at most half), [connections] max_per_address
FLOODER, DEVICE = "192.0.2.1", "192.0.2.2"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    base = tmp_path_factory.mktemp("izreg-proxyproto")
    metrics_port = free_port()
    config = base / "izreg.toml"
    config.write_text('[server]\ntrusted_proxies = ["127.0.0.1"]\n'  # the proxy, as docs/deploy.rst sets it
                      f"[tls]\nmax_handshakes = {CAP}\nhandshake_timeout = 600\n"
                      f"[connections]\nmax_per_address = {PER_ADDRESS}\nidle_timeout = 600\n"
                      f'[metrics]\nlisten = ["tcp:{metrics_port}:interface=127.0.0.1"]\n')
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=str(config))
    try:
        reg.start()
        reg.tls_port, reg.paths = restart_with_tls(reg, str(base / "certs"))
        reg.extra_args[reg.extra_args.index("--tls-listen") + 1] = f"haproxy:tcp:{reg.tls_port}:interface=127.0.0.1"
        reg.restart()
        reg.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield reg
    finally:
        reg.close()


def proxy_header(source: str, port: int) -> bytes:
    """A PROXY v2 header (PROXY command, TCP over IPv4) naming C{source} as the client, as haproxy sends it."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def proxied_socket(reg, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", reg.tls_port), timeout=20)
    sock.sendall(proxy_header(source, reg.tls_port))
    return sock


def tls_client(reg, source: str, device: bool = True, via: HAProxy | None = None) -> ssl.SSLSocket:
    """
    A TLS connection (with the device certificate) whose PROXY header names C{source}; its handshake done.
    C{via} a real haproxy, from C{source} (a loopback address), haproxy sending the header.
    """
    context = ssl.create_default_context(cafile=reg.paths.ca_cert)
    if device:
        context.load_cert_chain(reg.paths.client_cert, reg.paths.client_key)
    sock = (proxied_socket(reg, source) if via is None
            else socket.create_connection(("127.0.0.1", via.port), timeout=20, source_address=(source, 0)))
    return context.wrap_socket(sock, server_hostname="localhost")


def get_v2(reg, source: str, via: HAProxy | None = None) -> bytes:
    """The first bytes of the answer to GET /v2/ from a device whose PROXY header names C{source}."""
    with tls_client(reg, source, via=via) as tls:
        tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(100)


def test_each_address_a_proxy_header_names_has_its_own_connection_cap(proxied):
    """The flooder's connections over its cap are refused (429); the device behind the same proxy is not."""
    each_address_its_own_cap(proxied, FLOODER, DEVICE)


def each_address_its_own_cap(reg, flooder: str, device: str, via: HAProxy | None = None) -> None:
    mark = reg.log_mark()
    held = [tls_client(reg, flooder, device=False, via=via) for _ in range(PER_ADDRESS)]
    try:
        with tls_client(reg, flooder, device=False, via=via) as over:
            assert over.recv(100).startswith(b"HTTP/1.1 429"), "the flooder's connection over its cap"
        assert get_v2(reg, device, via).startswith(b"HTTP/1.1 200")
        assert f"] {device} GET /v2/ 200 " in reg.wait_for_log(r"izreg\.access.* GET /v2/ 200 .*", mark)
    finally:
        for sock in held:
            sock.close()


def test_through_a_real_haproxy_in_mode_tcp_each_client_has_its_own_cap(proxied, tmp_path):
    """docs/deploy.rst's device frontend (mode tcp, send-proxy-v2): two clients, each with its own cap."""
    require_tool(haproxy_available(), "haproxy")
    proxy = HAProxy(str(tmp_path), [])
    with open(proxy.config_path, "w") as f:
        f.write(f"""global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend devices
    bind 127.0.0.1:{proxy.port}
    default_backend izreg-tls

backend izreg-tls
    server node1 127.0.0.1:{proxied.tls_port} send-proxy-v2
""")
    proxy.start()
    try:
        each_address_its_own_cap(proxied, "127.0.0.9", "127.0.0.10", via=proxy)
    finally:
        proxy.stop()


def test_a_handshake_flood_from_one_proxied_address_leaves_another_its_slots(proxied):
    """
    The flooder's silent connections hold its group's half of the slots and wait for more; a device whose
    header names another address has a group of its own, and a slot at once (not behind the flooder's).
    """
    wait_for(proxied, in_progress=0, waiting=0)
    silent = [proxied_socket(proxied, FLOODER) for _ in range(PER_ADDRESS)]
    try:
        wait_for(proxied, in_progress=CAP // 2, waiting=PER_ADDRESS - CAP // 2)
        # (before, the device's group was the proxy's too: it waited behind the flooder, its handshake timed out)
        assert get_v2(proxied, DEVICE).startswith(b"HTTP/1.1 200")
    finally:
        for sock in silent:
            sock.close()
    wait_for(proxied, in_progress=0, waiting=0)


def test_a_connection_that_sends_no_proxy_header_is_closed_within_seconds(proxied):
    with socket.create_connection(("127.0.0.1", proxied.tls_port), timeout=20) as sock:
        assert closed_by_server(sock)  # after proxyheader.HEADER_TIMEOUT (5 s), well before the socket's 20


def test_a_device_behind_the_proxy_is_known_by_the_address_its_header_names(proxied):
    """A device's request makes its group known (the handshake queue serves it first): its own, not the proxy's."""
    assert get_v2(proxied, "192.0.2.77").startswith(b"HTTP/1.1 200")
    saved = saved_groups(proxied)
    groups = saved.split("\n")
    assert "192.0.2.77" in groups and "127.0.0.1" not in groups, saved
