"""
``[tls] max_handshakes`` against a real server (izreg/service/tls/admission.py):
raw TCP clients that send nothing or a partial ClientHello hold at most that
many handshakes; the others wait; a device with its certificate still gets
in once a slot frees or the silent ones time out (``[tls] handshake_timeout``);
a flood of refused client certificates is a few log lines, every one counted.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.server import free_port
from tests.helpers.tls import restart_with_tls
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's TLS listener")

CAP, TIMEOUT = 4, 3

#: the first bytes of a TLS record carrying a ClientHello, and no more: the server waits for the rest
PARTIAL_HELLO = bytes.fromhex("160301020001")


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    yield from tls_registry(tmp_path_factory, f"max_handshakes = {CAP}\nhandshake_timeout = {TIMEOUT}\n")


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """IPv4 clients counted per /24; nothing times out during a test (slots free as clients close)."""
    yield from tls_registry(tmp_path_factory, f"max_handshakes = {CAP}\nhandshake_timeout = 600\n"
                            "group_ipv4_prefix = 24\n", "[connections]\nidle_timeout = 600\n")


def tls_registry(tmp_path_factory, tls_section: str, more: str = ""):
    from tests.helpers.server import RegistryProcess

    base = tmp_path_factory.mktemp("izreg-tlscap")
    metrics_port = free_port()
    config = base / "izreg.toml"
    config.write_text(f"[tls]\n{tls_section}{more}"
                      f"[metrics]\nlisten = [\"tcp:{metrics_port}:interface=127.0.0.1\"]\n")
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=str(config))
    try:
        reg.start()
        reg.tls_port, reg.paths = restart_with_tls(reg, str(base / "certs"))
        reg.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield reg
    finally:
        reg.close()


def gauges(reg) -> dict[str, float]:
    text = requests.get(reg.metrics_url, timeout=30).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("izreg_tls_handshakes")}


def wait_for(reg, **wanted) -> dict[str, float]:
    seen = {}

    def matches():
        seen.update(gauges(reg))
        return all(seen.get(f"izreg_tls_handshakes_{name}") == value for name, value in wanted.items())

    wait_until(matches, f"handshake gauges {wanted}", timeout=60)
    return seen


def raw(reg, first: bytes = b"", source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", reg.tls_port), timeout=60, source_address=(source, 0))
    if first:
        sock.sendall(first)
    return sock


def device_get(reg, result: list) -> None:
    """GET /v2/ over TLS with the device certificate (in a thread: it waits for a slot)."""
    context = ssl.create_default_context(cafile=reg.paths.ca_cert)
    context.load_cert_chain(reg.paths.client_cert, reg.paths.client_key)
    try:
        with socket.create_connection(("127.0.0.1", reg.tls_port), timeout=60) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                result.append(tls.recv(100))
    except Exception as e:  # reported by the test
        result.append(e)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_device_gets_the_slot_a_silent_client_gives_back(capped):
    wait_for(capped, in_progress=0, waiting=0)
    silent = [raw(capped, source=f"127.0.0.{10 + i}") for i in range(CAP)]  # one address holds half the slots
    wait_for(capped, in_progress=CAP, waiting=0)
    result: list = []
    device = threading.Thread(target=device_get, args=(capped, result))
    device.start()
    try:
        wait_for(capped, in_progress=CAP, waiting=1)
        silent[0].close()  # its slot is the device's
        device.join(60)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
    finally:
        device.join(60)
        for sock in silent:
            sock.close()
    wait_for(capped, in_progress=0, waiting=0)


def test_silent_and_partial_clients_hold_only_the_cap_and_time_out(capped):
    wait_for(capped, in_progress=0, waiting=0)
    before = gauges(capped).get("izreg_tls_handshakes_timed_out_total", 0)
    clients = ([raw(capped, source=f"127.0.0.{10 + i}") for i in range(CAP)]
               + [raw(capped, PARTIAL_HELLO, f"127.0.0.{20 + i}") for i in range(CAP)])
    try:
        wait_for(capped, in_progress=CAP, waiting=CAP)
        result: list = []
        device = threading.Thread(target=device_get, args=(capped, result))
        device.start()
        device.join(120)  # after two rounds of handshake_timeout: first the silent ones, then the partial ones
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
        for sock in clients:  # each closed by the server, none answered
            assert closed_by_server(sock)
        seen = wait_for(capped, in_progress=0, waiting=0)
        assert seen["izreg_tls_handshakes_timed_out_total"] - before == 2 * CAP
    finally:
        for sock in clients:
            sock.close()


def test_one_address_holds_half_the_slots(capped):
    """Silent clients from one address: half the slots, the rest of them wait; a device elsewhere gets in at once."""
    wait_for(capped, in_progress=0, waiting=0)
    silent = [raw(capped, source="127.0.0.30") for _ in range(CAP)]
    try:
        wait_for(capped, in_progress=CAP // 2, waiting=CAP // 2)
        result: list = []
        device_get(capped, result)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
    finally:
        for sock in silent:
            sock.close()
    wait_for(capped, in_progress=0, waiting=0)


def test_a_device_gets_the_first_free_slot_while_many_addresses_hold_the_others(grouped):
    """
    24 silent clients from 24 addresses in four /24s hold every slot (one each) or wait; a device from
    another /24 that comes after them all gets the first slot that frees: its group holds none, each
    attacker's holds one (first come first served, or per address, it would wait behind all 20).
    """
    wait_for(grouped, in_progress=0, waiting=0)
    sources = [f"127.0.{net}.{host}" for host in range(10, 16) for net in range(1, 5)]
    silent = [raw(grouped, source=source) for source in sources[:CAP]]  # one slot for each /24
    device = None
    try:
        wait_for(grouped, in_progress=CAP, waiting=0)
        silent += [raw(grouped, source=source) for source in sources[CAP:]]
        wait_for(grouped, in_progress=CAP, waiting=len(sources) - CAP)
        result: list = []
        device = threading.Thread(target=device_get, args=(grouped, result))
        device.start()
        wait_for(grouped, in_progress=CAP, waiting=len(sources) - CAP + 1)
        silent[0].close()  # 127.0.1.0/24 holds none now, as the device's 127.0.0.0/24, which waited first
        device.join(60)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
        # the other three still hold theirs, and the slot after the device's went to 127.0.1.0/24 again
        seen = wait_for(grouped, in_progress=CAP, waiting=len(sources) - CAP - 1)
        assert seen["izreg_tls_handshakes_timed_out_total"] == 0
    finally:
        if device is not None:
            device.join(60)
        for sock in silent:
            sock.close()
    wait_for(grouped, in_progress=0, waiting=0)


def test_a_device_that_connected_before_goes_before_groups_that_are_never_struck(grouped):
    """
    Silent clients from more /24s than there are slots, each giving its slot up long before half the
    handshake timeout (never struck), queue ahead of a device: the device completed a handshake with its
    certificate before, so its group gets the first slot that frees, not after all of theirs.
    """
    wait_for(grouped, in_progress=0, waiting=0)
    result: list = []
    device_get(grouped, result)  # 127.0.0.0/24 completed a handshake with a device certificate
    assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
    sources = [f"127.0.{net}.1" for net in range(40, 40 + CAP + 8)]
    silent = [raw(grouped, source=source) for source in sources[:CAP]]
    device = None
    try:
        wait_for(grouped, in_progress=CAP, waiting=0)
        silent += [raw(grouped, source=source) for source in sources[CAP:]]
        wait_for(grouped, in_progress=CAP, waiting=8)
        result = []
        device = threading.Thread(target=device_get, args=(grouped, result))
        device.start()
        wait_for(grouped, in_progress=CAP, waiting=9)
        silent[0].close()  # at once: no strike, and eight fresh groups holding none waited before the device
        device.join(30)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
    finally:
        for sock in silent:
            sock.close()
        if device is not None:
            device.join(60)
    wait_for(grouped, in_progress=0, waiting=0)


def test_a_flood_of_refused_certificates_is_five_lines_and_every_one_counted(capped, tmp_path):
    """A device certificate of another CA, presented 12 times: 5 warning lines, the metric counts 12."""
    import time

    from izreg.devcerts import write_dev_certs

    stranger = write_dev_certs(str(tmp_path / "stranger"), time.time(), capped.account, "gw-x")
    context = ssl.create_default_context(cafile=capped.paths.ca_cert)
    context.load_cert_chain(stranger.client_cert, stranger.client_key)
    before = gauges_of(capped, "izreg_device_certificates_refused_total").get(("stage", "tls"), 0)
    mark = capped.log_mark()
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", capped.tls_port), timeout=60) as sock:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with context.wrap_socket(sock, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    tls.recv(100)  # TLS 1.3: the refusal comes after the client's Finished
    wait_until(lambda: gauges_of(capped, "izreg_device_certificates_refused_total").get(("stage", "tls"), 0)
               - before == 12, "12 refusals counted")

    def logged():
        return [line for line in list(capped.log_lines)[-(capped.lines_logged - mark):]
                if "refused TLS client certificate" in line]

    wait_until(lambda: len(logged()) >= 5, "the refusals logged")
    assert len(logged()) == 5, logged()


def gauges_of(reg, name: str) -> dict[tuple, float]:
    text = requests.get(reg.metrics_url, timeout=30).text
    return {tuple(kv for item in s.labels.items() for kv in item): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def test_plain_http_to_the_tls_port_is_told_to_use_https(capped):
    """curl http:// to the TLS port: a 400 with an OCI error, not an empty reply; TLS clients still get in."""
    import json
    import subprocess

    out = subprocess.run(["curl", "-sS", "--max-time", "30", "-D", "-", f"http://127.0.0.1:{capped.tls_port}/v2/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # 52: "Empty reply from server"
    head, _, body = out.stdout.partition("\n\n")  # text mode: CRLF read as LF
    assert head.startswith("HTTP/1.0 400 ") and "connection: close" in head.lower(), head
    assert json.loads(body)["errors"][0]["message"] == "this port speaks TLS: use https://"
    result: list = []
    device_get(capped, result)
    assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result


def test_no_credentials_on_the_tls_listener_are_told_about_device_certificates(capped):
    """401 with no key and no certificate: the TLS listener's message names the client certificate, the plain one's not."""
    tls = requests.get(f"https://127.0.0.1:{capped.tls_port}/v2/", verify=capped.paths.ca_cert, timeout=30)
    plain = requests.get(f"{capped.url}/v2/", timeout=30)
    assert (tls.status_code, plain.status_code) == (401, 401)
    assert tls.json()["errors"][0]["message"] == ("authentication required: docker login -u KEY -p <access key>,"
                                                  " or a device presents its client certificate")
    assert plain.json()["errors"][0]["message"] == "authentication required: docker login -u KEY -p <access key>"
