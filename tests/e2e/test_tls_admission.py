"""
``[tls] max_handshakes`` against a real server (izreg/service/tls/admission.py):
raw TCP clients that send nothing or a partial ClientHello hold at most that
many handshakes; the others wait; a device with its certificate still gets
in once a slot frees or the silent ones time out (``[tls] handshake_timeout``);
a flood of refused client certificates is a few log lines, every one counted.
At ``[connections] max_connections``, a connection still in its handshake is
closed for a newcomer, else an idle one (TLS or plain: izreg/http/limits.py
IdleConnections), never one in the middle of a request or a response.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time

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


def device_get(reg, result: list, source: str = "127.0.0.1", paths=None) -> None:
    """GET /v2/ over TLS with the device certificate (or C{paths}'), from C{source} (in a thread: it may wait)."""
    paths = paths or reg.paths
    context = ssl.create_default_context(cafile=paths.ca_cert)
    context.load_cert_chain(paths.client_cert, paths.client_key)
    try:
        with socket.create_connection(("127.0.0.1", reg.tls_port), timeout=60, source_address=(source, 0)) as sock:
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
    a_known_device_goes_first(grouped)


def a_known_device_goes_first(reg) -> None:
    """CAP + 8 fresh /24s that are never struck queue before a device of a known group: it gets the first slot."""
    sources = [f"127.0.{net}.1" for net in range(40, 40 + CAP + 8)]
    silent = [raw(reg, source=source) for source in sources[:CAP]]
    device = None
    try:
        wait_for(reg, in_progress=CAP, waiting=0)
        silent += [raw(reg, source=source) for source in sources[CAP:]]
        wait_for(reg, in_progress=CAP, waiting=8)
        result: list = []
        device = threading.Thread(target=device_get, args=(reg, result))
        device.start()
        wait_for(reg, in_progress=CAP, waiting=9)
        silent[0].close()  # at once: no strike, and eight fresh groups holding none waited before the device
        device.join(30)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
    finally:
        for sock in silent:
            sock.close()
        if device is not None:
            device.join(60)
    wait_for(reg, in_progress=0, waiting=0)


def known_groups(reg) -> float:
    text = requests.get(reg.metrics_url, timeout=30).text
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "izreg_tls_known_device_groups"][0]


def device_answer(reg, source: str = "127.0.0.1", paths=None) -> bytes:
    """The start of the answer to a device's GET /v2/ (L{device_get}), here."""
    result: list = []
    device_get(reg, result, source, paths)
    assert result and isinstance(result[0], bytes), result
    return result[0]


def saved_groups(reg) -> str:
    """The known device groups the server writes when it stops: restarted, what its file holds."""
    reg.restart()
    with open(os.path.join(reg.data_dir, "tls-known-groups")) as f:
        return f.read()


def test_the_known_device_groups_are_kept_across_a_restart(tmp_path_factory):
    """
    After a restart the fleet reconnects at once: the groups in which devices completed a handshake before
    it still go first (izreg/service/tls/known.py), written to the data directory when the server stops.
    """
    fresh = tls_registry(tmp_path_factory, f"max_handshakes = {CAP}\nhandshake_timeout = 600\n"
                         "group_ipv4_prefix = 24\n", "[connections]\nidle_timeout = 600\n")
    reg = next(fresh)
    try:
        assert known_groups(reg) == 0
        assert device_answer(reg).startswith(b"HTTP/1.1 200")
        assert known_groups(reg) == 1
        assert saved_groups(reg) == f"127.0.0.0/24\ndevice\t{reg.account}\tgw-1\t127.0.0.0/24\n"
        assert known_groups(reg) == 1  # before any device connected in this run
        a_known_device_goes_first(reg)
    finally:
        fresh.close()


def test_a_revoked_device_certificate_makes_no_group_known(tmp_path_factory):
    """
    A revoked certificate still completes the handshake (revocation is the request's check): its group
    becomes known only once a request passes that check (else one revoked certificate and many IPv6 /64s
    would push the fleet's groups out of the remembered ones).
    """
    fresh = tls_registry(tmp_path_factory, f"max_handshakes = {CAP}\nhandshake_timeout = 600\n")
    reg = next(fresh)
    try:
        reg.cli("device", "revoke", "--cert", reg.paths.client_cert)
        for _ in range(2):  # every connection refused
            assert device_answer(reg).startswith(b"HTTP/1.1 401")
        assert known_groups(reg) == 0
        reg.cli("device", "unrevoke", "--cert", reg.paths.client_cert)
        assert device_answer(reg).startswith(b"HTTP/1.1 200")
        assert known_groups(reg) == 1
        assert saved_groups(reg) == f"127.0.0.1\ndevice\t{reg.account}\tgw-1\t127.0.0.1\n"
    finally:
        fresh.close()


def test_one_device_makes_at_most_8_groups_known_across_a_restart_too(tmp_path_factory):
    """
    One valid device certificate used from many addresses (an attacker's: from a /52 of IPv6 /64s) counts
    the last 8 groups it made known, so it cannot push the rest of the fleet's out of the known ones
    (izreg/service/tls/admission.py MAX_DEVICE_GROUPS); the file written at the stop holds those, and which
    device counts which (izreg/service/tls/known.py): after a restart its 8 groups are still its own, and
    the groups it makes known push them out, not the rest of the fleet's (read back counted by no device,
    they stayed known: 8 more each restart).
    """
    from izreg.devcerts import write_dev_certs

    fresh = tls_registry(tmp_path_factory, f"max_handshakes = {CAP}\nhandshake_timeout = 600\n")
    reg = next(fresh)
    try:
        other = write_dev_certs(str(tmp_path_factory.mktemp("gw-2")), time.time(), reg.account, "gw-2",
                                ca_dir=reg.paths.directory)
        assert device_answer(reg, paths=other).startswith(b"HTTP/1.1 200")
        sources = [f"127.0.0.{n}" for n in range(2, 14)]
        for source in sources:  # gw-1 from 12 addresses, a group each
            assert device_answer(reg, source).startswith(b"HTTP/1.1 200")
        assert known_groups(reg) == 1 + 8
        assert saved_groups(reg) == "".join(f"{group}\n" for group in ["127.0.0.1", *sources[-8:]]) + (
            f"device\t{reg.account}\tgw-2\t127.0.0.1\n"
            f"device\t{reg.account}\tgw-1\t" + "\t".join(sources[-8:]) + "\n")
        assert known_groups(reg) == 1 + 8  # read back
        more = [f"127.0.0.{n}" for n in range(14, 20)]
        for source in more:  # gw-1 from 6 more: its 6 least recent groups of before the restart forgotten
            assert device_answer(reg, source).startswith(b"HTTP/1.1 200")
        assert known_groups(reg) == 1 + 8
        assert saved_groups(reg) == "".join(f"{group}\n" for group in ["127.0.0.1", *sources[-2:], *more]) + (
            f"device\t{reg.account}\tgw-2\t127.0.0.1\n"
            f"device\t{reg.account}\tgw-1\t" + "\t".join([*sources[-2:], *more]) + "\n")
    finally:
        fresh.close()


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
    assert tls.json()["errors"][0]["message"] == ("authentication required: docker login <registry host> -u KEY -p <access key>,"
                                                  " or a device presents its client certificate")
    assert plain.json()["errors"][0]["message"] == "authentication required: docker login <registry host> -u KEY -p <access key>"


#: connections.max_connections of L{crowded}
FULL = 12


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """A small connection table, a slot for each: the silent connections hold the table, none waits or times out."""
    yield from tls_registry(tmp_path_factory, "max_handshakes = 16\nhandshake_timeout = 600\n",
                            f"[connections]\nmax_connections = {FULL}\nidle_timeout = 600\n")


def test_silent_connections_that_fill_the_connection_table_make_room_for_a_device(crowded):
    """At max_connections, the oldest connection still in its handshake is closed for the device's: not a 503."""
    wait_for(crowded, in_progress=0, waiting=0)
    silent = [raw(crowded, source=f"127.0.0.{40 + i}") for i in range(FULL)]
    wait_for(crowded, in_progress=FULL, waiting=0)
    result: list = []
    try:
        device_get(crowded, result)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
        assert gauges_of(crowded, "izreg_connections_evicted_total") == {
            ("state", "handshake"): 1.0, ("state", "refused"): 0.0, ("state", "idle_new"): 0.0,
            ("state", "idle_unauthenticated"): 0.0, ("state", "public_request"): 0.0,
            ("state", "idle_authenticated"): 0.0}
        assert closed_by_server(silent[0])  # the oldest
    finally:
        for sock in silent:
            sock.close()
    wait_for(crowded, in_progress=0, waiting=0)


# -- idle connections closed for newcomers (izreg.http.limits.IdleConnections) ----------------------

#: connections.max_connections of L{idle_table}
TABLE = 8


@pytest.fixture(scope="module")
def idle_table(tmp_path_factory):
    """A small connection table; nothing times out during a test (a started request or upload stays in progress)."""
    yield from tls_registry(tmp_path_factory, "max_handshakes = 16\nhandshake_timeout = 600\n",
                            f"[connections]\nmax_connections = {TABLE}\nmax_per_address = 0\nidle_timeout = 600\n"
                            "header_timeout = 600\nbody_grace = 600\n")


def connect_tls(reg, device: bool = False, receive_buffer: int = 0) -> ssl.SSLSocket:
    """A completed TLS handshake, with the device certificate or none."""
    context = ssl.create_default_context(cafile=reg.paths.ca_cert)
    if device:
        context.load_cert_chain(reg.paths.client_cert, reg.paths.client_key)
    return context.wrap_socket(connect_plain(reg, reg.tls_port, receive_buffer), server_hostname="localhost")


def connect_plain(reg, port: int = 0, receive_buffer: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(60)
    if receive_buffer:  # before the connect: the window the client offers stays this small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port or reg.port))
    return sock


def request(path: str, authorization: str = "") -> bytes:
    extra = f"Authorization: {authorization}\r\n" if authorization else ""
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


#: a request line and header lines, never the blank line after them (slowloris): the connection stays idle
TRICKLING = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\n"


def uploading(reg) -> bytes:
    """A request in progress: its headers all in (a monolithic upload with the access key), 10 of its 1000 bytes."""
    digest = "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()
    return (f"POST /v2/{reg.account}/idle/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: {key_authorization(reg)}\r\nContent-Length: 1000\r\n\r\n").encode() + b"x" * 10


def response(sock, body: bool = True) -> tuple[int, bytes]:
    """One whole response (by its Content-Length) off a keep-alive connection: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while body and len(rest) < length:
        chunk = sock.recv(min(1 << 20, length - len(rest)))
        assert chunk, len(rest)
        rest += chunk
    return int(lines[0].split()[1]), rest


def key_authorization(reg) -> str:
    import base64

    return "Basic " + base64.b64encode(reg.creds.encode()).decode("ascii")


def table(reg) -> dict:
    """Open and idle connections (by client), handshakes in progress, evictions (by state)."""
    idle = gauges_of(reg, "izreg_connections_idle")
    return {"open": gauges_of(reg, "izreg_connections_open")[()],
            "idle": tuple(idle[("client", name)] for name in ("new", "unauthenticated", "authenticated")),
            "shaking": gauges_of(reg, "izreg_tls_handshakes_in_progress")[()],
            "evicted": {labels[1]: value for labels, value in gauges_of(reg, "izreg_connections_evicted_total").items()
                        if value}}


def wait_table(reg, **wanted) -> dict:
    seen: dict = {}

    def matches() -> bool:
        seen.update(table(reg))
        return all(seen[name] == value for name, value in wanted.items())

    try:
        wait_until(matches, f"connections {wanted}", timeout=60)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {seen}") from None
    return seen


@pytest.mark.parametrize("first", [b"", TRICKLING], ids=["silent", "slowloris"])
def test_idle_handshaken_and_plain_connections_make_room_for_a_device_and_an_access_key(idle_table, first):
    """
    The table full of connections that completed their TLS handshake (no client certificate) or
    connected over plain HTTP and then sent nothing, or a request line and header lines with no end
    (slowloris): a device, then a client with an access key, get in; the oldest idle ones are closed
    for them (503 for both, until idle_timeout before idle connections were closed; until
    header_timeout for the slowloris ones while a request line made a connection busy).
    """
    reg = idle_table
    before = wait_table(reg, open=0, shaking=0)["evicted"].get("idle_new", 0)
    held = [connect_tls(reg) for _ in range(TABLE // 2)]
    wait_table(reg, open=TABLE // 2, shaking=0)
    held += [connect_plain(reg) for _ in range(TABLE // 2)]
    for sock in held:
        sock.sendall(first)
    try:
        wait_table(reg, open=TABLE, shaking=0, idle=(TABLE, 0, 0))
        result: list = []
        device_get(reg, result)
        assert result and isinstance(result[0], bytes) and result[0].startswith(b"HTTP/1.1 200"), result
        assert closed_by_server(held[0])  # the longest idle
        wait_table(reg, open=TABLE - 1, evicted={"idle_new": before + 1})  # the device's gone (Connection: close) too
        held.append(connect_plain(reg))
        held[-1].sendall(first)
        wait_table(reg, open=TABLE, idle=(TABLE, 0, 0))
        answer = requests.get(f"{reg.url}/v2/", auth=reg.requests_auth, headers={"Connection": "close"}, timeout=30)
        assert answer.status_code == 200
        assert closed_by_server(held[1])
        wait_table(reg, evicted={"idle_new": before + 2})
    finally:
        for sock in held:
            sock.close()
    wait_table(reg, open=0)


def test_idle_connections_go_unauthenticated_first_devices_last_and_a_slow_download_never(idle_table):
    """
    A device pulling a large blob and reading slowly, a device's and an access key's idle keep-alive
    connections, one that got a 401, and four that sent nothing (two TLS, two plain) fill the table.
    Newcomers, each starting a request and holding it, close the four, then the 401's, then the
    device's and the key's; then nothing is idle and the next newcomer is refused (503). The
    download was never cut: every byte of the blob arrives.
    """
    reg = idle_table
    before = wait_table(reg, open=0, shaking=0)["evicted"]
    blob = os.urandom(32 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    pushed = requests.post(f"{reg.url}/v2/{reg.account}/idle/blobs/uploads/?digest={digest}", data=blob,
                           auth=reg.requests_auth, headers={"Connection": "close"}, timeout=120)
    assert pushed.status_code == 201, pushed.text
    held: list = []
    try:
        download = connect_tls(reg, device=True, receive_buffer=64 * 1024)
        held.append(download)
        download.sendall(request(f"/v2/{reg.account}/idle/blobs/{digest}"))
        first = download.recv(65536)  # then it reads nothing for a while: the server waits for it
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        device = connect_tls(reg, device=True)
        held.append(device)
        device.sendall(request("/v2/"))
        assert response(device)[0] == 200
        key = connect_plain(reg)
        held.append(key)
        key.sendall(request("/v2/", key_authorization(reg)))
        assert response(key)[0] == 200
        asked = connect_plain(reg)
        held.append(asked)
        asked.sendall(request("/v2/"))
        assert response(asked)[0] == 401
        wait_table(reg, open=4, shaking=0, idle=(0, 1, 2))
        new = [connect_tls(reg), connect_tls(reg)]
        held += new
        wait_table(reg, shaking=0)
        new += [connect_plain(reg), connect_plain(reg)]
        held += new[2:]
        wait_table(reg, open=TABLE, shaking=0, idle=(4, 1, 2))
        order = [*new, asked, device, key]
        for n, closed in enumerate(order, 1):
            newcomer = connect_plain(reg)
            held.append(newcomer)
            newcomer.sendall(uploading(reg))  # a request in progress: its body coming (body_grace = 600)
            assert closed_by_server(closed), n
            wait_table(reg, open=TABLE, idle=(max(0, 4 - n), 1 if n <= 4 else 0, min(2, len(order) - n)))
        after = table(reg)["evicted"]
        assert {state: after[state] - before.get(state, 0) for state in after} == {
            "idle_new": 4, "idle_unauthenticated": 1, "idle_authenticated": 2}
        refused = connect_plain(reg)
        held.append(refused)
        status, body = response(refused)
        assert status == 503 and b"as many connections open as it may" in body
        # a bytearray, not bytes +=: TLS gives at most a 16 KiB record a recv, and 2,048 copies of up to
        # 32 MiB each were ~34 GB copied (the test's 50 s on a loaded machine)
        received = bytearray(first.partition(b"\r\n\r\n")[2])
        while len(received) < len(blob):
            chunk = download.recv(1 << 20)
            assert chunk, f"the download was cut after {len(received)} bytes"
            received += chunk
        assert hashlib.sha256(received).hexdigest() == digest.split(":")[1]
    finally:
        for sock in held:
            sock.close()
    wait_table(reg, open=0)


def test_a_refused_request_over_tls_is_closed_after_its_linger_without_waiting_for_the_client(idle_table):
    """
    An upload with no credentials over TLS is refused before its body (401); LINGER (2 s) later the close
    alert goes and the TCP connection is closed right after it: the client never sends its own alert, and
    its slot is given back at once. (The close waited for the client's alert: abortTimeout, 15 s, more,
    a slot held for 17 s by one refused request.)
    """
    reg = idle_table
    wait_table(reg, open=0)
    sock = connect_tls(reg)
    try:
        sock.sendall(f"POST /v2/{reg.account}/idle/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\n"
                     "Content-Length: 100000\r\n\r\n".encode())
        assert response(sock)[0] == 401
        refused = time.monotonic()
        assert closed_by_server(sock)  # the close alert (the client never answers it)
        wait_table(reg, open=0)
        assert time.monotonic() - refused < 10  # LINGER, not LINGER + abortTimeout
    finally:
        sock.close()


@pytest.fixture
def revocable(tmp_path_factory):
    """Its own server: its device is revoked (in the database) by the test."""
    yield from tls_registry(tmp_path_factory, "max_handshakes = 16\nhandshake_timeout = 600\n",
                            "[connections]\nmax_connections = 8\nmax_per_address = 0\nidle_timeout = 600\n")


def test_a_device_revoked_in_the_database_is_no_longer_ranked_authenticated_once_refused(revocable):
    """
    A device's connection ranks authenticated from its handshake on; once the device is revoked in the
    database (not in a CRL: the handshake still succeeds) its next request is refused (401) and the
    connection drops to the unauthenticated tier, closed before the key holders' and devices'.
    (It stayed authenticated for as long as it was kept open.)
    """
    reg = revocable
    device = connect_tls(reg, device=True)
    try:
        device.sendall(request("/v2/"))
        assert response(device)[0] == 200
        wait_table(reg, idle=(0, 0, 1))
        reg.cli("device", "revoke", "--cert", reg.paths.client_cert, "--note", "idle tier")
        device.sendall(request("/v2/"))
        assert response(device)[0] == 401
        wait_table(reg, idle=(0, 1, 0))
    finally:
        device.close()
