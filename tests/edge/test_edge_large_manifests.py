"""
Large manifests (and blobs not yet cached) through the real edge (``twistd izreg edge``) in front of
the real registry: sent whole, byte for byte, on a miss (held in memory)
and on a hit (from the cache's file); a local client that asks for one and
reads nothing is closed after ``edge.send_timeout``, and until then what it
has not been sent of a miss counts in ``edge.response_memory``, past which
other misses are answered 503 UNAVAILABLE with Retry-After (a hit is read
from its file and holds none of it); once it is closed misses are served
again (L{izreg.edge.proxy.EdgeAPI.manifest}, L{izreg.http.responses.held_body},
L{izreg.http.limits.SlowReaders}).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import secrets
import socket
import struct

import pytest

from tests.helpers.edge import EdgeProcess, tls_registry
from tests.helpers.largemanifest import answer_of, padded_manifest
from tests.helpers.metrics import cut_responses
from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.server import RegistryProcess, free_port

pytestmark = pytest.mark.edge

#: a manifest: more than the kernel takes for a client that reads nothing (its send buffer grows to
#: 4 MiB on loopback, net.ipv4.tcp_wmem), so the edge holds the rest
SIZE = 12 * 1024 * 1024 + 5
#: the edge's max_manifest_size and response_memory: one such manifest fits, not one beside a stalled
#: miss (which holds at least SIZE less what the kernel took)
LIMIT = 16 * 1024 * 1024
SEND_TIMEOUT = 3
#: a blob not yet cached: more than the kernel and the edge's buffers take for a client that reads nothing
BLOB_SIZE = 24 * 1024 * 1024
REGISTRY_CONFIG = f"[limits]\nmax_manifest_size = {LIMIT}\nresponse_memory = {4 * LIMIT}\n"
EDGE_CONFIG = f"[edge]\nmax_manifest_size = {LIMIT}\nresponse_memory = {LIMIT}\nsend_timeout = {SEND_TIMEOUT}\n"


class Manifests:
    """Large manifests pushed to the registry, each once: a GET through the edge is a miss the first time."""

    def __init__(self, registry: RegistryProcess) -> None:
        self.repo = f"{registry.account}/t{secrets.token_hex(3)}/large"
        self.client = OCIClient(registry.url, auth=registry.requests_auth)
        self.config_blob = b"{}"
        expect(self.client.push_blob_monolithic(self.repo, self.config_blob), 201)

    def push(self) -> tuple[str, bytes]:
        """A new manifest of SIZE bytes, tagged: (its path on the edge, by tag; its bytes)."""
        tag = f"v{secrets.token_hex(4)}"
        data = padded_manifest(self.config_blob, SIZE, tag=tag)  # each different
        expect(self.client.put_manifest(self.repo, tag, data), 201)
        return f"/v2/{self.repo}/manifests/{tag}", data


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    base = tmp_path_factory.mktemp("edge-large-manifests")
    (base / "registry.toml").write_text(REGISTRY_CONFIG)
    metrics_port = free_port()
    (base / "edge.toml").write_text(EDGE_CONFIG + f'metrics_listen = ["tcp:{metrics_port}:interface=127.0.0.1"]\n')
    registry = RegistryProcess(data_dir=str(base / "registry"), log_path=str(base / "registry.log"),
                               config=base / "registry.toml")
    edge = None
    try:
        registry.start()
        certs = str(base / "certs")
        upstream = tls_registry(registry, certs)
        edge = EdgeProcess(str(base / "edge-cache"), upstream, certs, log_path=str(base / "edge.log"),
                           extra_args=("--config", str(base / "edge.toml")))
        edge.start()
        yield {"registry": registry, "edge": edge, "manifests": Manifests(registry),
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        if edge is not None:
            edge.close()
        registry.close()


def _get(edge: EdgeProcess, path: str):
    """GET C{path} from the edge on a new connection: the response and its body."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _stalled_get(edge: EdgeProcess, path: str, headers: str = "", status: int = 200) -> socket.socket:
    """A client that asks for C{path} and reads no more than the status line (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", edge.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 %d" % status)
    return sock


def _drain(sock: socket.socket) -> int:
    """What the edge still sends C{sock} before it closes it: bytes."""
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    return got


def _cuts(large) -> dict[str, float]:
    """The edge's izreg_edge_responses_cut_total, by reason."""
    return cut_responses(large["metrics"], "izreg_edge_responses_cut_total")


def _no_tracebacks(process) -> None:
    tail = process.log_text().splitlines()[-300:]
    assert not [line for line in tail if "Traceback" in line or "Unhandled" in line], tail


def test_a_large_manifest_is_sent_whole_on_a_miss_and_on_a_hit(large):
    edge = large["edge"]
    path, data = large["manifests"].push()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    mark = edge.log_mark()
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
    try:
        # a miss (held in memory), a HEAD, a hit (from the cache's file), a GET by digest: one connection
        for method, where in (("GET", path), ("HEAD", path), ("GET", path),
                              ("GET", path.rsplit("/", 1)[0] + "/" + digest)):
            answer_of(conn, method, where, data)
    finally:
        conn.close()
    edge.wait_for_log(rf"GET {path} 200 miss {SIZE}B", mark)
    edge.wait_for_log(rf"GET {path} 200 hit {SIZE}B", mark)
    edge.wait_for_log(rf"GET \S+/manifests/{digest} 200 hit {SIZE}B", mark)
    _no_tracebacks(edge)


def test_a_client_that_stops_reading_a_miss_is_closed_and_what_it_held_is_given_back(large):
    edge, manifests = large["edge"], large["manifests"]
    (stalled_path, data), (other_path, other), (after_path, after) = (manifests.push() for _ in range(3))
    mark = edge.log_mark()
    cuts = _cuts(large)
    stalled = _stalled_get(edge, stalled_path)
    try:
        # what the stalled client was not sent is held: another miss does not fit beside it
        response, body = _get(edge, other_path)
        error = json.loads(body)
        assert response.status == 503, error
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Docker-Content-Digest"] is None
        assert error["errors"][0]["code"] == "UNAVAILABLE"
        assert "response_memory" in error["errors"][0]["message"]
        edge.wait_for_log(rf"GET {other_path} 503 unavailable", mark)
        # after edge.send_timeout the stalled client is closed, short of the whole manifest
        edge.wait_for_log(rf"GET {stalled_path} 200 miss \d+B \(cut: slow_reader\)", mark, timeout=30)
        assert _cuts(large) == {**cuts, "slow_reader": cuts["slow_reader"] + 1}  # counted, once
        assert _drain(stalled) + 1024 < len(data)
        assert re.search(r"read nothing of (a response|a manifest) for \d+ s \(edge\.send_timeout\)", edge.log_text())
    finally:
        stalled.close()
    # what it held is given back: a new miss is served whole (and the refused one, cached by then, too)
    for path, expected, source in ((after_path, after, "miss"), (other_path, other, "hit")):
        response, body = _get(edge, path)
        assert (response.status, body == expected) == (200, True), (path, response.status, body[:300])
        edge.wait_for_log(rf"GET {path} 200 {source} {SIZE}B", mark)
    _no_tracebacks(edge)


def test_a_client_that_stops_reading_a_hit_is_closed_and_holds_no_response_memory(large):
    edge, manifests = large["edge"], large["manifests"]
    (cached_path, data), (miss_path, miss) = manifests.push(), manifests.push()
    response, body = _get(edge, cached_path)  # now cached
    assert (response.status, body == data) == (200, True)
    mark = edge.log_mark()
    cuts = _cuts(large)
    stalled = _stalled_get(edge, cached_path)
    try:
        # sent from the cache's file: a miss of the same size still fits beside it
        response, body = _get(edge, miss_path)
        assert (response.status, body == miss) == (200, True), (response.status, body[:300])
        # closed after edge.send_timeout (its warning may be one of the throttled lines: the request's is not)
        edge.wait_for_log(rf"GET {cached_path} 200 hit \d+B \(cut: slow_reader\)", mark, timeout=30)
        assert _cuts(large) == {**cuts, "slow_reader": cuts["slow_reader"] + 1}  # counted, once
        assert _drain(stalled) + 1024 < len(data)
    finally:
        stalled.close()
    _no_tracebacks(edge)


@pytest.mark.parametrize("source", ["miss", "relay"])
def test_a_client_that_stops_reading_a_blob_it_is_not_sent_from_the_cache_is_closed(large, source):
    """
    A blob the edge does not have yet, followed from its download (a miss) or relayed (a Range): a client that
    reads nothing of it is closed after edge.send_timeout too, and the blob is served whole afterwards.
    """
    edge, manifests = large["edge"], large["manifests"]
    data = secrets.token_bytes(BLOB_SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    expect(manifests.client.push_blob_monolithic(manifests.repo, data), 201)
    path = f"/v2/{manifests.repo}/blobs/{digest}"
    mark = edge.log_mark()
    cuts = _cuts(large)
    status = 200 if source == "miss" else 206
    stalled = _stalled_get(edge, path, "" if source == "miss" else f"Range: bytes=0-{BLOB_SIZE - 1}\r\n", status)
    try:
        edge.wait_for_log(rf"GET {path} {status} {source} \d+B \(cut: slow_reader\)", mark, timeout=30)
        assert _cuts(large) == {**cuts, "slow_reader": cuts["slow_reader"] + 1}  # counted, once
        assert _drain(stalled) + 1024 < len(data)
    finally:
        stalled.close()
    response, body = _get(edge, path)
    assert (response.status, len(body), body == data) == (200, len(data), True)
    _no_tracebacks(edge)


def test_a_client_gone_before_its_miss_is_answered_is_no_registry_outage(large):
    # its request to the registry is cancelled, which the edge took for the registry failing: /healthz said
    # upstream_unreachable ('could not be reached (CancelledError)') and the log had a traceback per client
    edge, manifests = large["edge"], large["manifests"]
    mark = edge.log_mark()
    for _ in range(3):
        path, _ = manifests.push()
        sock = socket.create_connection(("127.0.0.1", edge.port), timeout=60)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset: gone at once
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sock.close()
        edge.wait_for_log(rf"GET {path} \d+ \S+ \d+B \(client went away\)", mark)
    response, body = _get(edge, "/healthz")
    assert (response.status, json.loads(body)["status"]) == (200, "ok"), body
    assert not [line for line in list(edge.log_lines)[-(edge.lines_logged - mark):] if "is unreachable" in line]
    _no_tracebacks(edge)
