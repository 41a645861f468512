"""
The edge against a small test upstream (HTTPS with the development server
certificate, written here) that can corrupt a blob or a manifest, hold a
blob half way, break its connection half way through a blob, and counts the
requests it gets.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers.edge import EdgeProcess
from tests.helpers.metrics import cut_responses
from tests.helpers.server import REPO_ROOT, free_port

pytestmark = pytest.mark.edge

ACCOUNT = secrets.token_hex(16)
REPO = f"{ACCOUNT}/app"
OCI = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Upstream:
    """
    A registry stand-in: C{blobs} and C{manifests} by digest; C{corrupt} digests get one byte flipped; C{broken}
    digests get that share of their body (0.5: half), then their connection reset (a registry that dies, or a link
    cut, mid-body).
    A blob GET with a C{Range: bytes=A-B} gets a 206 of those bytes.
    """

    def __init__(self, certs: str) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.corrupt: set[str] = set()
        self.broken: dict[str, float] = {}
        self.hold: dict[str, threading.Event] = {}  # digest -> released when set
        self.holding = threading.Event()
        self.requests: list[tuple[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head: bool):
                upstream.requests.append((self.command, self.path))
                kind, _, ref = self.path.rpartition("/")
                store = upstream.manifests if kind.endswith("/manifests") else upstream.blobs
                data = store.get(ref)
                if data is None:
                    body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown","detail":null}]}'
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                if ref in upstream.corrupt:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range") or "")
                if wanted and store is upstream.blobs:
                    start, end = int(wanted.group(1)), min(int(wanted.group(2)), len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                    data = data[start:end + 1]
                else:
                    self.send_response(200)
                self.send_header("Content-Type", OCI if store is upstream.manifests else "application/octet-stream")
                self.send_header("Docker-Content-Digest", ref)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                if ref in upstream.broken:
                    self.wfile.write(data[:int(len(data) * upstream.broken[ref])])
                    self.wfile.flush()
                    # a reset, not a TLS close_notify: the connection is gone, the body cut at half
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                gate = upstream.hold.get(ref)
                if gate is not None:
                    half = len(data) // 2
                    self.wfile.write(data[:half])
                    self.wfile.flush()
                    upstream.holding.set()
                    gate.wait(60)
                    data = data[half:]
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(certs, "server", "server.crt"), os.path.join(certs, "server", "server.key"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path_end: str) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and path.endswith(path_end))

    def close(self) -> None:
        for gate in self.hold.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge-upstream")
    certs = str(tmp / "certs")
    subprocess.run([sys.executable, "-m", "izreg.cli", "dev-certs", certs, "--account", ACCOUNT, "--device-id", "gw-t"],
                   cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), check=True, capture_output=True)
    upstream = Upstream(certs)
    metrics_port = free_port()
    edge = EdgeProcess(str(tmp / "cache"), upstream.url, certs, log_path=str(tmp / "edge.log"),
                       extra_args=("--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1"))
    edge.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        edge.start()
        yield upstream, edge
    finally:
        edge.close()
        upstream.close()


def fetch(edge, path: str, read_first: int = 0, started: threading.Event | None = None):
    """GET through the edge: (status, body bytes received, whether the whole announced body arrived)."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        announced = int(response.getheader("Content-Length", "-1"))
        parts = []
        if read_first:
            parts.append(response.read1(read_first))
            if started is not None:
                started.set()
        try:
            while chunk := response.read1(256 * 1024):
                parts.append(chunk)
        except (http.client.IncompleteRead, ConnectionResetError):
            pass  # the edge cut the connection
        body = b"".join(parts)
        return response.status, body, len(body) == announced
    finally:
        conn.close()


def cached_files(edge) -> list[str]:
    return [name for _, _, files in os.walk(os.path.join(edge.data_dir, "blobs")) for name in files]


def test_a_corrupt_blob_is_cut_before_its_end_and_not_cached(setup):
    upstream, edge = setup
    data = os.urandom(3 * 1024 * 1024 + 17)
    d = digest(data)
    upstream.blobs[d] = data
    upstream.corrupt.add(d)
    mark = edge.log_mark()
    status, body, complete = fetch(edge, f"/v2/{REPO}/blobs/{d}")
    assert status == 200 and not complete and len(body) < len(data)
    edge.wait_for_log(rf"refused {d} from the registry: .*digest", since=mark)
    assert d.split(":")[1] not in cached_files(edge)
    # nothing was kept: the next pull asks the registry again, and gets the good bytes once it has them
    upstream.corrupt.discard(d)
    status, body, complete = fetch(edge, f"/v2/{REPO}/blobs/{d}")
    assert (status, complete, body == data) == (200, True, True)
    assert upstream.gets(f"/blobs/{d}") == 2


def cut_get(edge, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes, str]:
    """
    GET through the edge on a raw socket, read to the end: (status, lowercase headers, every body byte received,
    how it ended: "eof" or "reset").
    """
    with socket.create_connection(("127.0.0.1", edge.port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        received, ended = b"", "eof"
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            ended = "reset"
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body, ended


def edge_cuts(edge) -> dict[str, float]:
    return cut_responses(edge.metrics_url, "izreg_edge_responses_cut_total")


@pytest.mark.parametrize("kind", ["miss", "relay"])
def test_a_blob_the_registry_breaks_off_is_cut_counted_and_never_kept(setup, kind):
    """
    The registry's connection reset half way through a blob, after the edge sent its head (a shared download on
    a miss; a Range on an uncached blob, relayed): the client's connection is cut (no complete-looking short body,
    no error body after the head: what it got is the blob's first bytes, then a reset), the access line says
    "(cut: unreadable)" (the registry's answer could not be read to its end: not "failed", which is the edge's
    own handler failing), izreg_edge_responses_cut_total{reason="unreadable"} counts it, and nothing is kept: once
    the registry is whole again the blob is fetched again, whole, and served from the cache after that.
    """
    upstream, edge = setup
    data = os.urandom(3 * 1024 * 1024 + 11)
    d = digest(data)
    upstream.blobs[d] = data
    upstream.broken[d] = 0.5
    path = f"/v2/{REPO}/blobs/{d}"
    first, last = (0, len(data) - 1) if kind == "miss" else (1000, len(data) - 1001)
    asked = "" if kind == "miss" else f"Range: bytes={first}-{last}\r\n"
    before, mark = edge_cuts(edge), edge.log_mark()
    status, headers, body, ended = cut_get(edge, path, asked)
    assert (status, int(headers["content-length"])) == ((200, len(data)) if kind == "miss" else (206, last - first + 1))
    assert "transfer-encoding" not in headers
    assert ended == "reset" and 0 < len(body) < last - first + 1, (ended, len(body))
    assert body == data[first:first + len(body)]  # the blob's bytes and nothing else
    # (its size: what the edge handed its transport; the reset drops what was not yet sent)
    edge.wait_for_log(rf"GET {path} {status} {kind} \d+B \(cut: unreadable\)", mark)
    after = edge_cuts(edge)
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "unreadable": 1, "failed": 0, "slow_reader": 0}
    assert d.split(":")[1] not in cached_files(edge)
    assert os.listdir(os.path.join(edge.data_dir, "tmp")) == []  # the download's file is gone too
    # the registry whole again: fetched again (nothing partial was kept), verified, then a hit
    del upstream.broken[d]
    gets = upstream.gets(path)
    for _ in range(2):
        status, headers, body, ended = cut_get(edge, path, "Connection: close\r\n")
        assert (status, ended, len(body), digest(body)) == (200, "eof", len(data), d)
    assert upstream.gets(path) == gets + 1
    assert d.split(":")[1] in cached_files(edge)


@pytest.mark.parametrize("kind", ["miss", "relay"])
def test_a_blob_the_registry_breaks_off_before_its_first_byte_is_a_502(setup, kind):
    """Nothing of the blob sent yet when the registry's connection is reset: a 502, not a connection cut."""
    upstream, edge = setup
    data = os.urandom(100_000)
    d = digest(data)
    upstream.blobs[d] = data
    upstream.broken[d] = 0
    path = f"/v2/{REPO}/blobs/{d}"
    before, mark = edge_cuts(edge), edge.log_mark()
    status, headers, body, ended = cut_get(edge, path, "Connection: close\r\n" if kind == "miss"
                                           else "Range: bytes=10-20\r\nConnection: close\r\n")
    assert (status, ended, headers["content-type"], int(headers["content-length"])) == (
        502, "eof", "application/json", len(body))
    assert "docker-content-digest" not in headers and "content-range" not in headers
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNKNOWN" and "broke off" in error["message"], error
    edge.wait_for_log(rf"GET {path} 502 {kind} \d+B$", mark)
    assert edge_cuts(edge) == before
    assert d.split(":")[1] not in cached_files(edge)
    del upstream.broken[d]
    status, headers, body, ended = cut_get(edge, path, "Connection: close\r\n")
    assert (status, digest(body)) == (200, d)


def test_a_corrupt_manifest_is_refused_and_not_cached(setup):
    upstream, edge = setup
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [], "n": secrets.token_hex(4)}).encode()
    d = digest(manifest)
    upstream.manifests[d] = manifest
    upstream.corrupt.add(d)
    status, body, _ = fetch(edge, f"/v2/{REPO}/manifests/{d}")
    assert status == 502 and json.loads(body)["errors"][0]["code"] == "UNKNOWN"
    assert d.split(":")[1] not in cached_files(edge)


def test_two_concurrent_pulls_of_one_blob_make_one_upstream_fetch(setup):
    upstream, edge = setup
    data = os.urandom(2 * 1024 * 1024 + 5)
    d = digest(data)
    upstream.blobs[d] = data
    gate = upstream.hold[d] = threading.Event()
    upstream.holding.clear()
    results, second_started = {}, threading.Event()
    first = threading.Thread(target=lambda: results.__setitem__("first", fetch(edge, f"/v2/{REPO}/blobs/{d}")))
    first.start()
    assert upstream.holding.wait(30), "the upstream never got the first request"
    second = threading.Thread(target=lambda: results.__setitem__(
        "second", fetch(edge, f"/v2/{REPO}/blobs/{d}", read_first=1024, started=second_started)))
    second.start()
    # the second client already has bytes while the upstream still holds the rest: it follows the download
    assert second_started.wait(30)
    gate.set()
    first.join(60)
    second.join(60)
    for name in ("first", "second"):
        status, body, complete = results[name]
        assert (status, complete, body == data) == (200, True, True), name
    assert upstream.gets(f"/blobs/{d}") == 1


def test_methods_are_case_sensitive(setup):
    """RFC 9110 9.1: "get" is not GET: 501 from the edge, and nothing asked of the registry."""
    upstream, edge = setup
    data = os.urandom(1024)
    d = digest(data)
    upstream.blobs[d] = data
    for method, path in (("get", f"/v2/{REPO}/blobs/{d}"), ("Get", "/v2/"), ("head", f"/v2/{REPO}/blobs/{d}")):
        conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 501, (method, path, response.status, body[:200])
            assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
        finally:
            conn.close()
    assert upstream.gets(f"/blobs/{d}") == 0


def raw(edge, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the edge (one request); (status, lowercase headers, body) of its answer."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=60) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode())
        response.begin()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def oci_error(status: int, headers: dict, body: bytes) -> str:
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    errors = json.loads(body)["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}, body[:300]
    return errors[0]["code"]


def test_absolute_form_targets_are_served(setup):
    """
    RFC 9112 3.2.2: "GET http://containers.local:8080/v2/... HTTP/1.1" (what a proxy or a client configured with
    the edge as its proxy sends) is served as its origin form, and the registry is asked for the path alone.
    """
    upstream, edge = setup
    data = os.urandom(4096)
    d = digest(data)
    upstream.blobs[d] = data
    close = b"Connection: close\r\n\r\n"
    status, _, body = raw(edge, b"GET http://containers.local:8080/v2/ HTTP/1.1\r\nHost: other.example\r\n" + close)
    assert (status, body) == (200, b"{}")
    target = f"HTTP://containers.local:8080/v2/{REPO}/blobs/{d}".encode()
    status, headers, body = raw(edge, b"GET " + target + b" HTTP/1.1\r\nHost: containers.local:8080\r\n" + close)
    assert (status, headers["docker-content-digest"], body) == (200, d, data)
    assert (upstream.gets(f"/v2/{REPO}/blobs/{d}"), upstream.gets(target.decode())) == (1, 0)
    # relayed with its query, in origin form; the registry's answer passed on
    target = f"http://user@containers.local/v2/{REPO}/tags/list?n=5".encode()
    status, headers, body = raw(edge, b"GET " + target + b" HTTP/1.1\r\nHost: containers.local\r\n" + close)
    assert (status, oci_error(status, headers, body)) == (404, "BLOB_UNKNOWN")
    assert ("GET", f"/v2/{REPO}/tags/list?n=5") in upstream.requests
    status, headers, body = raw(edge, b"GET http://containers.local:8080/healthz HTTP/1.1\r\nHost: x\r\n" + close)
    assert status == 200 and json.loads(body)["upstream"] == upstream.url
    # a push in absolute form is refused as in origin form, before its body
    status, headers, body = raw(edge, f"PUT http://containers.local/v2/{REPO}/manifests/v1 HTTP/1.1\r\n".encode()
                                + b"Host: containers.local\r\nContent-Length: 2\r\n" + close + b"{}")
    assert (status, oci_error(status, headers, body)) == (405, "UNSUPPORTED")
    # RFC 9110 4.2.1: an empty host is no host (the Host header does not stand in)
    for target in (b"http:///v2/", f"http://user@/v2/{REPO}/blobs/{d}".encode()):
        status, headers, body = raw(edge, b"GET " + target + b" HTTP/1.1\r\nHost: containers.local\r\n" + close)
        assert (status, oci_error(status, headers, body)) == (400, "UNSUPPORTED"), body[:200]
    assert upstream.gets(f"/v2/{REPO}/blobs/{d}") == 1


@pytest.mark.parametrize("target", [b"/v2/", b"http://containers.local:8080/v2/", b"/v2/%s/blobs/sha256:%s"])
def test_host_rules(setup, target):
    """RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host header (absolute form too), else 400; HTTP/1.0 none."""
    upstream, edge = setup
    if b"%s" in target:
        target = target % (REPO.encode(), b"0" * 64)
    asked = len(upstream.requests)
    for headers, kind in ((b"", "needs a Host"), (b"Host: a\r\nHost: b\r\n", "only one Host"),
                          (b"Host: a\r\nHost: a\r\n", "only one Host")):
        status, response_headers, body = raw(edge, b"GET " + target + b" HTTP/1.1\r\n" + headers
                                             + b"Connection: close\r\n\r\n")
        assert (status, oci_error(status, response_headers, body)) == (400, "UNSUPPORTED"), (headers, body[:200])
        assert kind in json.loads(body)["errors"][0]["message"]
    # with a body, refused at its headers
    status, response_headers, body = raw(edge, b"PUT " + target + b" HTTP/1.1\r\nContent-Length: 2\r\n"
                                         b"Connection: close\r\n\r\n{}")
    assert (status, oci_error(status, response_headers, body)) == (400, "UNSUPPORTED"), body[:200]
    assert len(upstream.requests) == asked  # nothing asked of the registry
    if target.endswith(b"/v2/"):
        status, _, body = raw(edge, b"GET " + target + b" HTTP/1.0\r\n\r\n")
        assert (status, body) == (200, b"{}")


def test_lowercase_methods_in_absolute_form_are_not_implemented(setup):
    upstream, edge = setup
    asked = len(upstream.requests)
    for method in (b"get", b"Head"):
        status, headers, body = raw(edge, method + b" http://containers.local:8080/v2/ HTTP/1.1\r\n"
                                    b"Host: containers.local\r\nConnection: close\r\n\r\n")
        assert (status, oci_error(status, headers, body)) == (501, "UNSUPPORTED"), (method, body[:200])
    assert len(upstream.requests) == asked


def test_the_edge_pulls_with_twisteds_own_pool_factory(setup, tmp_path, monkeypatch):
    """
    IZREG_STOCK_TWISTED=1 (what a Twisted without the internals izreg.edge.pool checks gets): said once at start,
    and the edge pulls the same through Twisted's own connection pool factory.
    """
    from izreg.http.internals import STOCK_ENV

    upstream, edge = setup
    data = os.urandom(300_000)
    d = digest(data)
    upstream.blobs[d] = data
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [], "n": secrets.token_hex(4)}).encode()
    upstream.manifests[digest(manifest)] = manifest
    monkeypatch.setenv(STOCK_ENV, "1")  # the edge inherits the environment
    stock = EdgeProcess(str(tmp_path / "cache"), upstream.url, edge.certs, log_path=str(tmp_path / "edge.log"))
    try:
        stock.start()
        stock.wait_for_log(rf"the edge's upstream connections: Twisted's stock _HTTP11ClientFactory \({STOCK_ENV}",
                           since=0)
        for _ in range(2):  # a miss, then a hit
            assert fetch(stock, f"/v2/{REPO}/blobs/{d}") == (200, data, True)
            assert fetch(stock, f"/v2/{REPO}/manifests/{digest(manifest)}") == (200, manifest, True)
        assert upstream.gets(f"/blobs/{d}") == 1
        assert "Starting factory _HTTP11ClientFactory" in stock.log_text()  # Twisted's, per upstream connection
    finally:
        stock.close()
    # the edge on izreg's factory: no word of it, and no such line
    assert fetch(edge, f"/v2/{REPO}/blobs/{d}")[0] == 200
    assert "upstream connections" not in edge.log_text() and "_HTTP11ClientFactory" not in edge.log_text()


def test_relayed_answers_keep_their_length_and_only_the_registrys_headers(setup):
    """
    An answer relayed as it comes (tags list, referrers, the registry's errors) says its length as the
    registry did, not chunked (Twisted's client takes Content-Length out of a GET's headers), and gets no
    header the registry did not send; its own /v2/ too.
    """
    upstream, edge = setup
    for method in ("GET", "HEAD"):
        request = f"{method} /v2/{REPO}/tags/list HTTP/1.1\r\nHost: containers.local\r\nConnection: close\r\n\r\n"
        status, headers, body = raw(edge, request.encode())
        assert status == 404 and "transfer-encoding" not in headers, (method, headers)
        announced = 70  # the test upstream's error body
        assert headers.get("content-length") == str(announced) and len(body) == (announced if method == "GET" else 0)
        assert "content-encoding" not in headers, (method, headers.get("content-encoding"), sorted(headers))
    status, headers, body = raw(edge, b"GET /v2/ HTTP/1.1\r\nHost: containers.local\r\nConnection: close\r\n\r\n")
    assert status == 200 and headers.get("content-length") == str(len(body)) and "transfer-encoding" not in headers


def test_the_root_page_names_where_this_edge_listens(setup):
    """``twistd izreg edge --listen tcp:PORT:interface=127.0.0.1``: C{/} says to pull by 127.0.0.1:PORT, not 8080."""
    upstream, edge = setup
    for host, named in ((f"127.0.0.1:{edge.port}", f"127.0.0.1:{edge.port}"),
                        (f"containers.local:{edge.port}", f"containers.local:{edge.port}"),
                        ("registry.example:8080", f"127.0.0.1:{edge.port}")):
        status, headers, body = raw(edge, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert (status, headers["content-type"], int(headers["content-length"])) == (
            200, "text/plain; charset=utf-8", len(body))
        assert f"docker pull {named}/<account_id>/<app>:<tag>\n" in body.decode(), body
        assert upstream.url not in body.decode()
