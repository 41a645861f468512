"""
A stopping server ([server] drain_timeout) lets the requests in progress
finish: SIGTERM closes its listeners, closes idle keep-alive connections at
once, sends the rest of a blob download, then exits. Without it (0, the
default) a ``systemctl restart`` cut every download in flight (docs/deploy.rst,
"Upgrading one node at a time").
"""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import time

import pytest

from tests.helpers.ociclient import OCIClient, sha256_digest
from tests.helpers.ocilayout import random_bytes
from tests.helpers.server import RegistryProcess

BLOB = 48 * 1024 * 1024  # far more than the socket buffers hold: the server is still sending when it is told to stop


@pytest.fixture
def draining(tmp_path):
    def start(drain_timeout: int) -> RegistryProcess:
        config = tmp_path / "izreg.toml"
        config.write_text(f"[server]\ndrain_timeout = {drain_timeout}\n")
        reg = RegistryProcess(data_dir=str(tmp_path / "data"), log_path=str(tmp_path / "server.log"),
                              config=str(config))
        started.append(reg)
        reg.start()
        return reg

    started: list[RegistryProcess] = []
    yield start
    for reg in started:
        reg.close()


def _get(reg: RegistryProcess, path: str, keep_alive: bool = True) -> socket.socket:
    """A connection that sent C{GET path} with the registry's key, nothing read yet."""
    auth = base64.b64encode(reg.creds.encode()).decode()
    sock = socket.create_connection(("127.0.0.1", reg.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # keep the blob in the server's hands
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {reg.host}\r\nAuthorization: Basic {auth}\r\n"
                  f"{'' if keep_alive else 'Connection: close'}\r\n\r\n").encode())
    return sock


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head of the response on C{sock}, and the first bytes of its body that came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _read_response(sock: socket.socket, started: tuple[bytes, bytes] | None = None) -> tuple[bytes, bytes]:
    """The head and the body of the one response on C{sock} (C{Content-Length}), read to its end."""
    head, first = started or _read_head(sock)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    body = bytearray(first)  # not bytes +=: 48 MiB in 64 KiB reads copied ~18 GB, 50 s on a loaded machine
    while len(body) < length:
        chunk = sock.recv(1024 * 1024)
        assert chunk, f"cut after {len(body)} of {length} bytes"
        body += chunk
    return head, bytes(body)


def _download_started(reg: RegistryProcess, name: str) -> tuple[socket.socket, tuple[bytes, bytes], str]:
    """
    A blob of L{BLOB} bytes pushed to C{name}, and a connection downloading it whose response head has
    come (it is being sent: a request not read yet would be closed as idle): (connection, (head, first
    bytes), digest).
    """
    repo = f"{reg.account}/{name}"
    data = random_bytes(BLOB, name)
    digest = sha256_digest(data)
    assert OCIClient(reg.url, auth=reg.requests_auth).push_blob_monolithic(repo, data).status_code == 201
    sock = _get(reg, f"/v2/{repo}/blobs/{digest}")
    return sock, _read_head(sock), digest


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(15)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_download_in_progress_finishes_and_idle_connections_close(draining):
    reg = draining(30)
    idle = _get(reg, "/v2/")
    _read_response(idle)  # answered; the connection stays open, idle
    download, started, digest = _download_started(reg, "drained")
    mark = reg.log_mark()
    reg.send_signal(signal.SIGTERM)
    reg.wait_for_log(r"stopping: waiting for 1 connection\(s\) in progress", mark)
    with pytest.raises(ConnectionRefusedError):  # the listener is closed: a balancer sends the next one elsewhere
        socket.create_connection(("127.0.0.1", reg.port), timeout=10)
    assert _closed(idle)
    head, body = _read_response(download, started)
    assert head.startswith(b"HTTP/1.1 200") and len(body) == BLOB
    assert hashlib.sha256(body).hexdigest() == digest.split(":", 1)[1]
    reg.wait_for_log(r"stopping: every request in progress finished", mark)
    reg.stop()
    assert " 200 in=0 out=" + str(BLOB) in reg.log_text()  # logged as sent, not as 499


def test_a_client_that_reads_nothing_is_cut_after_the_drain_timeout(draining):
    reg = draining(1)
    stalled, _, _ = _download_started(reg, "stalled")
    mark = reg.log_mark()
    started = time.monotonic()
    reg.send_signal(signal.SIGTERM)
    reg.wait_for_log(r"stopping with 1 connection\(s\) still busy after server.drain_timeout \(1 s\)", mark)
    reg.stop(timeout=10)
    assert time.monotonic() - started < 10
    stalled.close()


def test_without_a_drain_timeout_a_stop_cuts_at_once(draining):
    reg = draining(0)
    download, started, _ = _download_started(reg, "cut")
    reg.stop()
    with pytest.raises((AssertionError, ConnectionResetError), match="cut after|reset"):
        _read_response(download, started)
    assert "stopping: waiting" not in reg.log_text()


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_the_drain_at_once(draining, again):
    """
    The operator who stops a draining node again (Ctrl-C twice, a second ``systemctl stop``) means now: it
    was a ReactorNotRunning traceback in the log, and the node waited on for its whole drain_timeout.
    """
    reg = draining(120)
    stalled, head, _ = _download_started(reg, "again")
    mark = reg.log_mark()
    reg.send_signal(signal.SIGTERM)
    reg.wait_for_log(r"stopping: waiting for 1 connection\(s\) in progress", mark)
    reg.send_signal(again)
    reg.wait_for_log(rf"stopping at once \({again.name} again\): 1 connection\(s\) still busy are cut", mark)
    reg.wait_exit(timeout=30)  # not the 120 s of its drain_timeout (and no third signal: reg.stop() sends one)
    with pytest.raises((AssertionError, ConnectionResetError), match="cut after|reset"):
        _read_response(stalled, head)  # what the node had sent, then the end: the download was cut
    assert "ReactorNotRunning" not in reg.log_text()
