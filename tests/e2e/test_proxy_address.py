"""
Behind haproxy as docs/deploy.rst sets it up (``option forwardfor``, the
registry trusting it: ``[server] trusted_proxies``), a client cannot pick the
address the registry sees with a ``Forwarded`` header of its own (haproxy
passes it on): else it could brake another client's key from that client's
address, and guess keys from ever new addresses (izreg/http/clientaddr.py).
"""

from __future__ import annotations

import base64
import os
import socket

import pytest

from tests.conftest import require_tool
from tests.helpers.cluster import HAProxy, haproxy_available
from tests.helpers.server import RegistryProcess, status_of

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's trusted_proxies")

VICTIM, ATTACKER = "127.0.0.9", "127.0.0.66"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    require_tool(haproxy_available(), "haproxy")
    base = tmp_path_factory.mktemp("izreg-proxied")
    config = base / "izreg.toml"
    config.write_text('[server]\ntrusted_proxies = ["127.0.0.1"]\n[auth]\nfailure_limit = 3\n')
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=str(config))
    proxy = None
    try:
        reg.start()
        proxy = HAProxy(str(base), [("node1", reg.port)])
        proxy.start()
        yield reg, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        reg.close()


def get_v2(proxy, source: str, creds: str, *headers: str) -> int:
    """The status of ``GET /v2/`` through haproxy from C{source}, with HTTP Basic C{creds} ("user:password")."""
    lines = [f"GET /v2/ HTTP/1.1", f"Host: {proxy.host}", "Connection: close",
             f"Authorization: Basic {base64.b64encode(creds.encode()).decode()}", *headers]
    with socket.create_connection(("127.0.0.1", proxy.port), source_address=(source, 0), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return status_of(sock)


def test_a_forwarded_header_of_the_client_does_not_brake_another_clients_key(proxied):
    reg, proxy = proxied
    user, _, secret = reg.creds.partition(":")
    key_id = secret.split("_")[1]  # izr_<key id>_<secret>: the key id is no secret (logs, the UI)
    wrong = f"{user}:izr_{key_id}_{'x' * 43}"
    assert get_v2(proxy, VICTIM, reg.creds) == 200
    mark = reg.log_mark()
    # the attacker names the victim's address: past the brake's 3 failures it is braked itself (429), as its
    # own address, not the victim
    statuses = [get_v2(proxy, ATTACKER, wrong, f"Forwarded: for={VICTIM}") for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    assert get_v2(proxy, VICTIM, reg.creds) == 200
    logged = reg.wait_for_log(r"failed authentication from \S+", mark)
    assert VICTIM not in logged


def test_the_access_log_names_the_client_haproxy_forwards_for(proxied):
    """Each request's log line names the client, as the brake counts it, not haproxy's own address."""
    reg, proxy = proxied
    mark = reg.log_mark()
    assert get_v2(proxy, VICTIM, reg.creds, "X-Request-Id: proxied-client-logged") == 200
    line = reg.wait_for_log(r"izreg\.access.* id=proxied-client-logged", mark)
    assert f"] {VICTIM} GET /v2/ 200 " in line, line


def test_an_ipv4_client_a_dual_stack_proxy_names_is_logged_as_ipv4(proxied):
    """
    haproxy on a dual-stack bind (``bind :::443 v4v6``) names an IPv4 client by its IPv4-mapped address
    (``X-Forwarded-For: ::ffff:127.0.0.9``): it was logged ``::ffff:7f00:9``, found by no grep for the
    client's address, and braked apart from the same client reaching a node directly.
    """
    reg, _ = proxied
    mark = reg.log_mark()
    with socket.create_connection(("127.0.0.1", reg.port), timeout=30) as sock:  # from the trusted proxy's address
        sock.sendall((f"GET /v2/ HTTP/1.1\r\nHost: {reg.host}\r\nConnection: close\r\n"
                      f"X-Forwarded-For: ::ffff:{VICTIM}\r\nX-Request-Id: dual-stack-proxied\r\n\r\n").encode())
        assert status_of(sock) == 401
    line = reg.wait_for_log(r"izreg\.access.* id=dual-stack-proxied", mark)
    assert f"] {VICTIM} GET /v2/ 401 " in line, line
