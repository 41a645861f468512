"""
A large manifest on the real server, plain and over TLS (a device
certificate): sent whole and byte for byte; a client that asks for one
and reads nothing is closed after connections.send_timeout as a blob's
is, and until then what it has not been sent counts in
limits.response_memory, past which others are answered 503 with
Retry-After; once it is closed they are served again
(L{izreg.http.responses.MemoryBody}, L{izreg.http.limits.SlowReaders}).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_pull_paths import _connection, _raw_get, _read_response
from tests.helpers.largemanifest import answer_of, padded_manifest
from tests.helpers.metrics import cut_responses
from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.server import RegistryProcess, free_port
from tests.helpers.tls import restart_with_tls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg", reason="izreg TLS listener"),
]

#: the manifest: more than the kernel takes for a client that reads nothing (its send buffer grows to
#: 4 MiB on loopback, net.ipv4.tcp_wmem), so the server holds the rest
SIZE = 12 * 1024 * 1024 + 5
#: limits.max_manifest_size and limits.response_memory: one such manifest fits, not two, nor one beside a
#: stalled one (which holds at least SIZE less what the kernel took)
LIMIT = 16 * 1024 * 1024
CONFIG = f"[limits]\nmax_manifest_size = {LIMIT}\nresponse_memory = {LIMIT}\n[connections]\nsend_timeout = 2\n"


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    base = tmp_path_factory.mktemp("izreg-large-responses")
    config = base / "izreg.toml"
    metrics_port = free_port()
    config.write_text(CONFIG + f'[metrics]\nlisten = ["tcp:{metrics_port}:interface=127.0.0.1"]\n')
    registry = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"), config=config)
    try:
        registry.start()
        tls_port, paths = restart_with_tls(registry, str(base / "certs"))
        repo = f"{registry.account}/large/manifest"
        client = OCIClient(registry.url, auth=registry.requests_auth)
        config_blob = b"{}"
        expect(client.push_blob_monolithic(repo, config_blob), 201)
        data = padded_manifest(config_blob, SIZE)
        expect(client.put_manifest(repo, "v1", data), 201)
        tls = ssl.create_default_context(cafile=paths.ca_cert)
        tls.load_cert_chain(paths.client_cert, paths.client_key)
        yield {"registry": registry, "data": data, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
               "path": f"/v2/{repo}/manifests/v1", "tls_port": tls_port,
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "tls": tls, "auth": registry.requests_auth}
    finally:
        registry.close()


def _response_memory(large) -> dict[str, float]:
    """The limits.response_memory metrics the server exposes."""
    text = requests.get(large["metrics"], timeout=30).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("izreg_response_memory")}


def _get(large, listener: str):
    """GET the manifest on a new connection: the response and its body."""
    conn, headers = _connection(large, listener)
    try:
        conn.request("GET", large["path"], headers=headers)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_large_manifest_is_sent_whole_with_its_headers(large, listener):
    conn, headers = _connection(large, listener)
    data, digest = large["data"], large["digest"]
    try:
        for method in ("GET", "HEAD", "GET"):  # and the connection still framed right after each
            body = answer_of(conn, method, large["path"], data, headers)
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    finally:
        conn.close()


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_client_that_stops_reading_a_manifest_is_closed_and_its_memory_freed(large, listener):
    registry = large["registry"]
    mark = registry.log_mark()
    before = _response_memory(large)
    cuts = cut_responses(large["metrics"])
    assert before["izreg_response_memory_bytes"] == 0 and before["izreg_response_memory_limit_bytes"] == LIMIT
    stalled = _raw_get(large, listener, rcvbuf=4096)
    try:
        assert stalled.recv(1024).startswith(b"HTTP/1.1 200")
        # the stalled answer holds what it has not handed on: more than leaves room for another
        assert _response_memory(large)["izreg_response_memory_bytes"] > LIMIT - SIZE
        # what it was not sent is held: another large answer does not fit beside it
        response, body = _get(large, listener)
        error = json.loads(body)
        assert response.status == 503, error
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Docker-Content-Digest"] is None
        assert error["errors"][0]["code"] == "UNAVAILABLE"
        assert "limits.response_memory" in error["errors"][0]["message"]
        refused = before["izreg_response_memory_refused_total"] + 1
        assert _response_memory(large)["izreg_response_memory_refused_total"] == refused
        # after connections.send_timeout its request ends cut by the server (cut=slow_reader, the status it was
        # sent; not 499, a client gone), and its connection
        got = 0
        registry.wait_for_log(r"GET /v2/\{name\}/manifests/\{reference\} 200 .* cut=slow_reader$", mark, timeout=30)
        assert "read nothing of a response for" in registry.log_text()
        # and counted (the module's server is shared: one more than before)
        assert cut_responses(large["metrics"]) == {**cuts, "slow_reader": cuts["slow_reader"] + 1}
        try:
            while chunk := stalled.recv(1 << 20):
                got += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert got < len(large["data"])
        # what it held is given back: the same manifest is served again, whole
        response, body = _get(large, listener)
        assert response.status == 200 and body == large["data"]
        assert _response_memory(large) == {**before, "izreg_response_memory_refused_total": refused}
        tail = registry.log_text().splitlines()[-200:]
        assert not [line for line in tail if "Traceback" in line or "Unhandled" in line], tail
    finally:
        stalled.close()
