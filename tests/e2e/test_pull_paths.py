"""
Blob GETs through both of izreg's send paths, on the real server: sendfile(2)
on the plain listener, reads through the TLS layer on the TLS listener (a
device certificate). Whole blobs, ranges, HEAD and keep-alive framing, a
client that stops reading (back-pressure: the server goes on serving others),
a client that resets the connection mid-body, and TLS session resumption
(tickets) for devices.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import ssl
import struct
import threading

import pytest

from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.metrics import cut_responses
from tests.helpers.server import RegistryProcess, free_port
from tests.helpers.tls import restart_with_tls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg", reason="izreg TLS listener"),
]

#: many sendfile calls (64 KiB each) and many TLS writes
SIZE = 9 * 1024 * 1024 + 7


@pytest.fixture(scope="module")
def pulls(tmp_path_factory):
    yield from _serving(tmp_path_factory, "izreg-pull-paths")


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """The same, with connections.send_timeout = 2 s."""
    yield from _serving(tmp_path_factory, "izreg-send-timeout", "[connections]\nsend_timeout = 2\n")


def _serving(tmp_path_factory, name: str, config_text: str = ""):
    base = tmp_path_factory.mktemp(name)
    config = base / "izreg.toml"
    metrics_port = free_port()
    config.write_text(config_text + f'[metrics]\nlisten = ["tcp:{metrics_port}:interface=127.0.0.1"]\n')
    registry = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=config)
    try:
        registry.start()
        certs = str(base / "certs")
        tls_port, paths = restart_with_tls(registry, certs)
        data = os.urandom(SIZE)
        repo = f"{registry.account}/pull/paths"
        client = OCIClient(registry.url, auth=registry.requests_auth)
        expect(client.push_blob_monolithic(repo, data), 201)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        tls = ssl.create_default_context(cafile=paths.ca_cert)
        tls.load_cert_chain(paths.client_cert, paths.client_key)
        yield {"registry": registry, "data": data, "digest": digest, "path": f"/v2/{repo}/blobs/{digest}",
               "tls_port": tls_port, "tls": tls, "auth": registry.requests_auth, "client_cert": paths.client_cert,
               "client_key": paths.client_key, "ca_cert": paths.ca_cert,
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        registry.close()


def _connection(pulls, listener: str) -> tuple[http.client.HTTPConnection, dict]:
    if listener == "plain":
        import base64
        user, password = pulls["auth"]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return (http.client.HTTPConnection("127.0.0.1", pulls["registry"].port, timeout=60),
                {"Authorization": f"Basic {token}"})
    return http.client.HTTPSConnection("127.0.0.1", pulls["tls_port"], context=pulls["tls"], timeout=60), {}


def _raw_get(pulls, listener: str, rcvbuf: int | None = None, session=None, extra: str = "") -> socket.socket:
    """A socket that has sent a GET of the blob (and read nothing yet)."""
    port = pulls["registry"].port if listener == "plain" else pulls["tls_port"]
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    if listener == "tls":
        sock = pulls["tls"].wrap_socket(sock, server_hostname="127.0.0.1", session=session)
    _, headers = _connection(pulls, listener)
    lines = [f"GET {pulls['path']} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode())
    return sock


def _device_pull(pulls, session=None, status: int = 200) -> tuple[bool, object]:
    """GET the blob over TLS as the device (resuming C{session} if given): (resumed?, the new session)."""
    sock = _raw_get(pulls, "tls", session=session, extra="Connection: close\r\n")
    with sock:
        body = _read_response(sock, status=status)
        if status == 200:
            assert body == pulls["data"]
        return sock.session_reused, sock.session


def _read_response(sock: socket.socket, already: bytes = b"", status: int = 200) -> bytes:
    """The body of one Content-Length response with C{status} read from C{sock}."""
    buf = already
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")][0])
    parts = [body]
    got = len(body)
    while got < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {got} of {length} bytes"
        parts.append(chunk)
        got += len(chunk)
    assert got == length
    return b"".join(parts)


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_whole_ranged_and_head_on_one_connection(pulls, listener):
    conn, headers = _connection(pulls, listener)
    data, path = pulls["data"], pulls["path"]
    try:
        cases = [
            (None, 200, data),
            ("bytes=0-0", 206, data[:1]),
            ("bytes=4194300-8388620", 206, data[4194300:8388621]),  # across many sendfile calls' ends
            ("bytes=-10", 206, data[-10:]),
            (f"bytes=100-{SIZE + 50}", 206, data[100:]),
        ]
        for rng, status, expected in cases:
            conn.request("GET", path, headers=dict(headers, **({"Range": rng} if rng else {})))
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == status, (rng, resp.status, body[:200])
            assert int(resp.headers["Content-Length"]) == len(expected)
            assert body == expected, rng
        conn.request("HEAD", path, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == SIZE
        assert resp.read() == b""
        # the connection is still framed right: another request answers on it
        conn.request("GET", path, headers=dict(headers, Range="bytes=5-9"))
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, data[5:10])
    finally:
        conn.close()


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_stalled_client_does_not_stop_others(pulls, listener):
    """A client that stops reading holds only its own response; it gets all of it when it reads again."""
    stalled = _raw_get(pulls, listener, rcvbuf=4096)
    try:
        first = stalled.recv(1024)
        assert first.startswith(b"HTTP/1.1 200"), first
        conn, headers = _connection(pulls, listener)
        try:
            conn.request("GET", pulls["path"], headers=headers)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == pulls["data"]
        finally:
            conn.close()
        assert _read_response(stalled, first) == pulls["data"]
    finally:
        stalled.close()


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_client_that_half_closes_after_its_request_gets_the_whole_response(pulls, listener):
    """
    A bare TCP FIN after the request (over TLS without a close_notify first):
    the request is whole, so it is answered in full, as plain HTTP, nginx and
    Go's net/http do; then the server closes (with its close_notify over TLS).
    """
    sock = _raw_get(pulls, listener)
    with sock, socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as raw:
        raw.shutdown(socket.SHUT_WR)  # on the TCP socket under TLS: no close_notify
        assert _read_response(sock) == pulls["data"]
        sock.settimeout(10)  # (not waiting for an idle timeout)
        assert sock.recv(1) == b""  # then the server closed (TLS: its close_notify came first, else an error)


def _close_notify_after(pulls, request: bytes, fin: bool, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
                        first: bool = False) -> tuple[bytes, str]:
    """
    A TLS client over memory BIOs (Python's C{SSLSocket.unwrap} would wait for
    the server's close_notify, discarding what comes before it) that sends
    C{request} (C{first}: reads the whole answer to a first GET of the blob
    before, on a keep-alive connection), then its close_notify
    (C{SSLObject.unwrap}: SSL_shutdown), then (C{fin}) a FIN: what it reads
    after, and how that ended: C{"close_notify"} (the server's, then its FIN),
    C{"eof"} (a FIN without one) or C{"reset"}.
    """
    context = pulls["tls"] if version == ssl.TLSVersion.TLSv1_3 else _tls12_context(pulls)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # (the blob cannot be in the sockets' buffers at once)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", pulls["tls_port"]))
        tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

        def pump():
            data = sock.recv(1 << 20)
            if data:
                incoming.write(data)
            return data

        def read_all(limit: int | None = None) -> tuple[bytes, str]:
            parts, got = [], 0
            while limit is None or got < limit:
                try:
                    chunk = tls.read(1 << 20)
                except ssl.SSLWantReadError:
                    try:
                        if not pump():
                            return b"".join(parts), "eof"
                    except ConnectionResetError:
                        return b"".join(parts), "reset"
                    continue
                except ssl.SSLZeroReturnError:
                    chunk = b""
                if not chunk:
                    return b"".join(parts), "close_notify"
                parts.append(chunk)
                got += len(chunk)
            return b"".join(parts), "open"

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                assert pump()
        assert tls.version() == ("TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
        if first:
            tls.write(_blob_request(pulls))
            sock.sendall(outgoing.read())
            head = b""
            while b"\r\n\r\n" not in head:
                more, _ = read_all(1)
                assert more
                head += more
            _, _, body = head.partition(b"\r\n\r\n")
            rest, _ = read_all(len(pulls["data"]) - len(body))
            assert body + rest == pulls["data"]
        if request:
            tls.write(request)
        try:
            tls.unwrap()  # the close_notify (OpenSSL then wants the server's: not waited for here)
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        if fin:
            sock.shutdown(socket.SHUT_WR)
        answer, end = read_all()
        if end == "close_notify":
            sock.settimeout(10)
            assert sock.recv(1) == b""  # then the server's FIN
        return answer, end


def _tls12_context(pulls) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pulls["ca_cert"])
    context.load_cert_chain(pulls["client_cert"], pulls["client_key"])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _blob_request(pulls) -> bytes:
    return f"GET {pulls['path']} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


@pytest.mark.parametrize("fin", [True, False], ids=["close_notify-fin", "close_notify"])
def test_a_tls13_client_that_sends_close_notify_after_its_request_gets_the_whole_response(pulls, fin):
    """
    Over TLS 1.3 a close_notify closes only its sender's side (RFC 8446 6.1),
    as a FIN does: the request, whole, is answered in full (nginx and Go's
    net/http too), then the server sends its close_notify and closes.
    """
    answer, end = _close_notify_after(pulls, _blob_request(pulls), fin)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.partition(b"\r\n\r\n")[2] == pulls["data"]
    assert end == "close_notify"


def test_an_idle_tls13_connection_closed_by_its_clients_close_notify_is_closed(pulls):
    answer, end = _close_notify_after(pulls, b"", fin=False, first=True)
    assert (answer, end) == (b"", "close_notify")


def test_under_tls12_a_close_notify_ends_the_connection_at_once(pulls):
    """
    TLS 1.2 has no half-close: the server answers a close_notify with its own
    and closes, discarding the response's rest (RFC 5246 7.2.1; Twisted's TLS
    protocol), or answers in full when the request came in a read of its own
    (the channel reads no more while it answers). Either way the server closes
    at once after its close_notify: it did not while its TCP transport had
    paused the sender for a full socket (until connections.send_timeout).
    """
    answer, end = _close_notify_after(pulls, _blob_request(pulls), fin=True, version=ssl.TLSVersion.TLSv1_2)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 200 ")  # (cut before its head was sent: nothing)
    assert pulls["data"].startswith(answer.partition(b"\r\n\r\n")[2])
    assert end == "close_notify"  # (and then the server's FIN, at once: _close_notify_after)


def test_a_fin_after_the_servers_close_notify_ends_the_connection(pulls):
    """
    After a response with Connection: close the server has sent its close_notify and waits for the
    client's; a client that sends a bare FIN instead (as most do when they close) ends it: the server
    closes its socket too, it does not stay half-open.
    """
    sock = _raw_get(pulls, "tls", extra="Connection: close\r\n")
    with sock, socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as raw:
        assert _read_response(sock) == pulls["data"]
        assert sock.recv(1) == b""  # the server's close_notify
        raw.shutdown(socket.SHUT_WR)  # a FIN, no close_notify
        raw.settimeout(10)
        assert raw.recv(1) == b""  # the server's FIN


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_an_idle_connection_half_closed_by_its_client_is_closed(pulls, listener):
    sock = _raw_get(pulls, listener)
    with sock, socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as raw:
        assert _read_response(sock) == pulls["data"]  # a keep-alive connection, now idle
        raw.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(1) == b""


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_client_reset_mid_body(pulls, listener):
    registry = pulls["registry"]
    mark = registry.log_mark()
    sock = _raw_get(pulls, listener)
    got = 0
    while got < 256 * 1024:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
    sock.close()
    conn, headers = _connection(pulls, listener)
    try:
        conn.request("GET", pulls["path"], headers=dict(headers, Range="bytes=0-99"))
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, pulls["data"][:100])
    finally:
        conn.close()
    new = registry.lines_logged - mark
    tail = list(registry.log_lines)[len(registry.log_lines) - new:] if new else []
    assert not [line for line in tail if "Traceback" in line or "Unhandled" in line], tail


def test_device_sessions_resume_until_reload_and_revocation(pulls):
    """
    Session tickets: a device that reconnects resumes its session and is still
    that device; a SIGHUP reload (new ticket keys) ends the old sessions; a
    revoked device is refused on a resumed session too.
    """
    registry = pulls["registry"]
    resumed, session = _device_pull(pulls)
    assert not resumed
    resumed, _ = _device_pull(pulls, session)
    assert resumed

    mark = registry.log_mark()
    registry.send_signal(signal.SIGHUP)
    registry.wait_for_log("reloaded TLS", mark)
    resumed, session = _device_pull(pulls, session)
    assert not resumed  # a full handshake against the reloaded context
    assert _device_pull(pulls, session)[0]

    registry.cli("device", "revoke", "--cert", pulls["client_cert"])
    resumed, _ = _device_pull(pulls, session, status=401)
    assert resumed


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_client_that_stops_reading_is_closed_after_send_timeout(impatient, listener):
    """connections.send_timeout: a client that reads nothing of a blob loses its connection; a slow one does not."""
    registry = impatient["registry"]
    mark = registry.log_mark()
    cuts = cut_responses(impatient["metrics"])
    stalled = _raw_get(impatient, listener, rcvbuf=4096)
    slow = _raw_get(impatient, listener, rcvbuf=4096)
    done = threading.Event()
    received = []

    def read_slowly():  # 16 KiB every 0.2 s (80 KiB/s) until the stalled one is closed, then the rest at once
        while not done.wait(0.2):
            received.append(slow.recv(16384))
        received.append(_read_response(slow, b"".join(received)))

    reader = threading.Thread(target=read_slowly)
    try:
        assert stalled.recv(1024).startswith(b"HTTP/1.1 200")
        reader.start()
        # its request ends cut by the server: the status it was sent, and why (the warning line is throttled to
        # one per 10 s); not 499, a client that went away
        registry.wait_for_log(r"GET /v2/\{name\}/blobs/\{digest\} 200 .* cut=slow_reader$", mark, timeout=30)
        assert "read nothing of a blob for" in registry.log_text()
        # and counted, once (the module's server is shared: one more than before)
        assert cut_responses(impatient["metrics"]) == {**cuts, "slow_reader": cuts["slow_reader"] + 1}
        done.set()
        # the one that stopped: what was on its way, then the end, well short of the blob
        got = 0
        try:
            while chunk := stalled.recv(1 << 20):
                got += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert got < len(impatient["data"]) // 2
        # the slow reader was not cut: the whole blob
        reader.join(60)
        assert received[-1] == impatient["data"]
        tail = registry.log_text().splitlines()[-200:]
        assert not [line for line in tail if "Traceback" in line or "Unhandled" in line], tail
    finally:
        done.set()
        stalled.close()
        slow.close()


def test_a_blob_file_cut_short_behind_a_get_resets_the_connection(pulls):
    """
    Plain TCP (sendfile(2)): the blob's file is truncated while a client that
    reads slowly is pulling it. The server cuts the connection (a reset) when
    it finds the file's end; closed in order, the close waited behind the
    megabytes queued for the client, which learnt only at their end, and
    only by counting, that its blob was short.
    """
    from izreg.core.digest import Digest
    from izreg.storage.paths import blob_path

    registry = pulls["registry"]
    data = os.urandom(32 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = f"{registry.account}/pull/cut"
    expect(OCIClient(registry.url, auth=registry.requests_auth).push_blob_monolithic(repo, data), 201)
    mark = registry.log_mark()
    cuts = cut_responses(pulls["metrics"])
    sock = _raw_get(dict(pulls, path=f"/v2/{repo}/blobs/{digest}"), "plain", rcvbuf=4096)
    with sock:
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        os.truncate(blob_path(registry.data_dir, Digest.parse(digest)), 1000)
        sock.settimeout(10)
        got = 0
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                got += len(chunk)
    assert got < len(data)
    # logged with the status it was sent and why, and counted: storage trouble, not a client gone
    registry.wait_for_log(r"GET /v2/\{name\}/blobs/\{digest\} 200 .* cut=unreadable$", mark, timeout=30)
    assert cut_responses(pulls["metrics"]) == {**cuts, "unreadable": cuts["unreadable"] + 1}
