"""
Operating izreg (#14) against a real ``twistd izreg server``: Prometheus
metrics scraped over HTTP, /healthz and /readyz, the disk floor and an
unwritable data directory turning pushes away, the JSON access log.
"""

from __future__ import annotations

import json
import time
import os
import signal
import socket
import subprocess
from contextlib import contextmanager

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.ociclient import OCI_MANIFEST, OCIClient, expect, sha256_digest
from tests.helpers.server import RegistryProcess, free_port
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's own operations features")

MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"
BLOB_ROUTE = "/v2/{name}/blobs/{digest}"


def push_image(client: OCIClient, repo: str, tag: str, seed: bytes = b"x") -> tuple[str, bytes]:
    """A config and one layer, then the manifest under C{tag}: (manifest digest, manifest bytes)."""
    config = b'{"architecture":"amd64","os":"linux","seed":"%s"}' % seed.hex().encode()
    layer = os.urandom(2048) + seed
    for blob in (config, layer):
        expect(client.push_blob_monolithic(repo, blob), 201)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(layer), "size": len(layer)}],
    }).encode()
    expect(client.put_manifest(repo, tag, manifest), 201)
    return sha256_digest(manifest), manifest


def pull_image(client: OCIClient, repo: str, ref: str) -> bytes:
    """The manifest and every blob it names, each checked against its digest."""
    manifest = expect(client.get_manifest(repo, ref), 200).content
    parsed = json.loads(manifest)
    for descriptor in [parsed["config"], *parsed["layers"]]:
        data = expect(client.get_blob(repo, descriptor["digest"]), 200).content
        assert sha256_digest(data) == descriptor["digest"]
    return manifest


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = expect(requests.get(url, timeout=30), 200).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def ops_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("izreg-ops")
    metrics_port = free_port()
    reg = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"),
                          extra_args=["--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1",
                                      "--log-format", "json"])
    reg.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        reg.start()
        yield reg
    finally:
        reg.close()


def test_metrics_after_push_and_pull(ops_registry):
    reg = ops_registry
    client = OCIClient(reg.url, auth=reg.requests_auth)
    repo = f"{reg.account}/metrics/app"
    digest, _ = push_image(client, repo, "v1")
    pull_image(client, repo, "v1")
    expect(requests.get(f"{reg.url}/v2/", timeout=30), 401)

    samples = scrape(reg.metrics_url)

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    assert value("izreg_http_requests_total", route=MANIFEST_ROUTE, method="PUT", status="201") >= 1
    assert value("izreg_http_requests_total", route=MANIFEST_ROUTE, method="GET", status="200") >= 1
    assert value("izreg_http_requests_total", route=BLOB_ROUTE, method="GET", status="200") >= 2
    assert value("izreg_http_requests_total", route="/v2/{name}/blobs/uploads/", method="POST", status="201") >= 2
    assert value("izreg_http_request_duration_seconds_count", route=MANIFEST_ROUTE, method="PUT") >= 1
    assert value("izreg_http_request_bytes_total", route=MANIFEST_ROUTE, method="PUT") > 100
    assert value("izreg_http_response_bytes_total", route=BLOB_ROUTE, method="GET") > 2048
    assert value("izreg_auth_failures_total", kind="missing_credentials") >= 1
    assert value("izreg_manifests") >= 1 and value("izreg_blobs") >= 2
    assert value("izreg_blobs_bytes") > 2048
    assert value("izreg_lmdb_map_used_bytes") > 0 and value("izreg_lmdb_map_free_bytes") > 0
    assert ("izreg_upload_sessions", ()) in samples
    # limits.body_memory (64 MiB by default): the manifest bodies given back once handled
    assert (value("izreg_body_memory_bytes"), value("izreg_body_memory_limit_bytes")) == (0, 64 * 1024 * 1024)
    assert ("izreg_body_memory_refused_total", ()) in samples
    # bounded labels: no repository, account, digest or raw path in any label value
    for (_, labels) in samples:
        for _, label_value in labels:
            assert reg.account not in label_value and "sha256:" not in label_value and "metrics/app" not in label_value
            assert digest.split(":")[1][:12] not in label_value


def test_the_metrics_listeners_root_leads_to_the_metrics(ops_registry):
    """People open the listener's root: it redirects to /metrics; any other path is a plain-text 404 naming it."""
    root = ops_registry.metrics_url[:-len("metrics")]
    response = requests.get(root, timeout=30, allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"] == "/metrics"
    assert response.headers["Content-Type"].startswith("text/plain")
    followed = expect(requests.get(root, timeout=30), 200)
    assert followed.url == ops_registry.metrics_url and "izreg_http_requests_total" in followed.text
    head = requests.head(root, timeout=30)
    assert head.status_code == 302 and head.headers["Location"] == "/metrics" and not head.content
    for path in ("favicon.ico", "metric", "a/b"):
        response = requests.get(root + path, timeout=30)
        assert response.status_code == 404 and response.headers["Content-Type"].startswith("text/plain")
        assert "/metrics" in response.text and "<" not in response.text


def test_the_metrics_listener_keeps_a_few_connections_open(ops_registry):
    """
    Idle connections to /metrics held a file descriptor each for 12 hours, as many as anyone opened; past
    MAX_SCRAPE_CONNECTIONS a newcomer closes the one idle the longest, so the count stays there.
    """
    from izreg.service.metrics import MAX_SCRAPE_CONNECTIONS

    port = int(ops_registry.metrics_url.split(":")[2].split("/")[0])
    idle = []
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_SCRAPE_CONNECTIONS)]
        newcomer = socket.create_connection(("127.0.0.1", port), timeout=30)
        idle.append(newcomer)
        assert _closed(idle[0])  # the first, idle the longest, closed for it
        assert not any(_closed(sock, wait=False) for sock in idle[1:])
    finally:
        for sock in idle:
            sock.close()


def test_held_metrics_connections_do_not_keep_a_scrape_out(ops_registry):
    """
    Anyone on the management network held all MAX_SCRAPE_CONNECTIONS connections (a byte of a request head a
    minute each, within SCRAPE_IDLE_TIMEOUT) and every scrape was closed at once, for as long as it kept that up.
    A scrape now closes the connection idle the longest and is served.
    """
    from izreg.service.metrics import MAX_SCRAPE_CONNECTIONS

    port = int(ops_registry.metrics_url.split(":")[2].split("/")[0])
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_SCRAPE_CONNECTIONS)]
        for sock in held:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # a head begun, never finished
        for _ in range(3):  # scrape after scrape, each on a new connection (Connection: close), each served
            response = requests.get(ops_registry.metrics_url, timeout=30, headers={"Connection": "close"})
            assert response.status_code == 200 and "izreg_" in response.text
        # the first closed for it, the longest idle; the next scrapes took the place each one before left
        assert _closed(held[0]) and not any(_closed(sock, wait=False) for sock in held[1:])
    finally:
        for sock in held:
            sock.close()


def _closed(sock: socket.socket, wait: bool = True) -> bool:
    """Whether the server closed C{sock} (reset, or an end of stream); without C{wait}, only if it already has."""
    sock.settimeout(30 if wait else 0)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def _scraped(url: str) -> bool:
    try:
        return requests.get(url, timeout=30).status_code == 200
    except requests.ConnectionError:
        return False


def test_the_json_access_log_carries_the_request_id(ops_registry):
    reg = ops_registry
    client = OCIClient(reg.url, auth=reg.requests_auth)
    repo = f"{reg.account}/logs/app"
    push_image(client, repo, "v1")
    mark = reg.log_mark()
    resp = expect(client.get_manifest(repo, "v1"), 200)
    request_id = resp.headers["X-Request-Id"]
    line = reg.wait_for_log(request_id, mark)
    event = json.loads(line)
    assert event["namespace"] == "izreg.access" and event["level"] == "info"
    assert event["request_id"] == request_id
    assert (event["method"], event["route"], event["status"]) == ("GET", MANIFEST_ROUTE, 200)
    assert event["repository"] == repo and event["account"] == reg.account
    assert event["key_id"] and event["principal"] == "key"
    assert event["bytes_out"] == len(resp.content) and event["duration"] >= 0
    assert event["client"] == "127.0.0.1"
    # every line is one JSON object, and no line holds the access key
    secret = reg.creds.split(":", 1)[1]
    for text in list(reg.log_lines):
        if text.startswith("{"):
            json.loads(text)
        assert secret not in text


@contextmanager
def unwritable(path: str):
    """Make a directory unwritable, for root too (immutable attribute), then restore it."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make {path} immutable here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", path], check=True)
    else:
        os.chmod(path, 0o500)
        try:
            yield
        finally:
            os.chmod(path, 0o700)


def files_under(path: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


def assert_push_refused(client: OCIClient, repo: str) -> None:
    """A new blob push and a new manifest get 503 UNAVAILABLE."""
    resp = expect(client.push_blob_monolithic(repo, os.urandom(4096)), 503)
    assert resp.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert resp.headers.get("Retry-After") and resp.headers.get("X-Request-Id")
    resp = expect(client.start_upload(repo), 503)
    assert resp.json()["errors"][0]["code"] == "UNAVAILABLE"


@contextmanager
def configured_registry(tmp_path, toml: str):
    """A registry of its own started with C{--config} holding C{toml} (rewrite C{reg.config} and SIGHUP it)."""
    config = tmp_path / "izreg.toml"
    config.write_text(toml)
    reg = RegistryProcess(data_dir=str(tmp_path / "data"), log_path=str(tmp_path / "server.log"),
                          extra_args=["--config", str(config)])
    reg.config = config
    try:
        reg.start()
        yield reg
    finally:
        reg.close()


def test_readyz_and_pushes_follow_the_data_dir_and_the_disk_floor(tmp_path):
    metrics_url = f"http://127.0.0.1:{(port := free_port())}/metrics"
    metrics = f'[metrics]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
    with configured_registry(tmp_path, '[server]\nmin_free_disk = "0"\n' + metrics) as reg:
        client = OCIClient(reg.url, auth=reg.requests_auth)
        repo = f"{reg.account}/ready/app"
        push_image(client, repo, "v1")
        assert expect(requests.get(f"{reg.url}/healthz", timeout=30), 200).json() == {"status": "ok"}
        ready = expect(requests.get(f"{reg.url}/readyz", timeout=30), 200).json()
        assert ready["status"] == "ok" and all(c["ok"] for c in ready["checks"].values())
        assert ready["checks"]["disk"] == {"ok": True}  # anyone may ask /readyz: no figures of the machine's
        space = scrape(metrics_url)  # they are the operator's
        assert 0 < space[("izreg_disk_free_bytes", ())] <= space[("izreg_disk_size_bytes", ())]
        assert space[("izreg_disk_floor_bytes", ())] == 0
        before = files_under(reg.data_dir)

        with unwritable(reg.data_dir):
            resp = expect(requests.get(f"{reg.url}/readyz", timeout=30), 503)
            assert resp.json()["checks"]["data_dir"]["ok"] is False
            # anyone may ask /readyz: it says which directory by its role, not the server's path
            assert resp.json()["checks"]["data_dir"]["error"].startswith("the data directory is not writable: ")
            assert reg.data_dir not in resp.text
            assert_push_refused(client, repo)
            assert reg.data_dir not in client.start_upload(repo).text
            mark = reg.log_mark()
        assert files_under(reg.data_dir) == before
        # writable again: the gate opens by itself (its own probe), with no /readyz asked (it stayed shut)
        reg.wait_for_log(r"the data directory is writable again", mark, timeout=30)
        push_image(client, repo, "v1.1")
        expect(requests.get(f"{reg.url}/readyz", timeout=30), 200)

        # raise the floor above the free space; SIGHUP re-reads it
        reg.config.write_text('[server]\nmin_free_disk = "100%"\n' + metrics)
        mark = reg.log_mark()
        reg.send_signal(signal.SIGHUP)
        reg.wait_for_log(r"reloaded: log level info, min_free_disk 100%", mark)
        resp = expect(requests.get(f"{reg.url}/readyz", timeout=30), 503)
        assert resp.json()["checks"]["disk"] == {"ok": False, "error": "the free disk space is below server.min_free_disk"}
        space = scrape(metrics_url)
        assert space[("izreg_disk_free_bytes", ())] < space[("izreg_disk_floor_bytes", ())] == space[
            ("izreg_disk_size_bytes", ())]
        before = files_under(reg.data_dir)
        assert_push_refused(client, repo)
        resp = expect(client.put_manifest(repo, "v2", b"{}"), 503)
        assert "low on disk space" in resp.json()["errors"][0]["message"]
        assert files_under(reg.data_dir) == before  # nothing half-written
        pull_image(client, repo, "v1")  # pulls go on


def test_gc_runs_and_bytes_freed_are_counted(tmp_path):
    """An unreferenced blob, a sweep every second with a 1 s grace: the sweep and its bytes show in the metrics."""
    config = tmp_path / "gc.toml"
    config.write_text("[gc]\ninterval = 1\ngrace = 1\n")
    metrics_port = free_port()
    reg = RegistryProcess(data_dir=str(tmp_path / "data"), log_path=str(tmp_path / "server.log"),
                          extra_args=["--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1",
                                      "--config", str(config)])
    try:
        reg.start()
        client = OCIClient(reg.url, auth=reg.requests_auth)
        blob = b"nobody references me" * 100
        expect(client.push_blob_monolithic(f"{reg.account}/gc/app", blob), 201)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 120
        while True:
            samples = scrape(url)
            if samples.get(("izreg_gc_freed_bytes_total", ()), 0) >= len(blob):
                break
            assert time.monotonic() < deadline, "no sweep freed the blob within 120 s"
            time.sleep(0.5)  # polling the server's own timer: no event to await from outside
        assert samples[("izreg_gc_runs_total", ())] >= 1
    finally:
        reg.close()
