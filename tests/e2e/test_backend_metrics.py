"""
The metrics of what a multi-node izreg depends on, and /readyz's bucket
check, on a real ``twistd izreg server``: S3 calls counted and timed by
operation and outcome against a real moto server (one of the test's own,
stopped and started again for an outage), the PostgreSQL pool's gauges and
counters against a real PostgreSQL (a table locked, connections refused).
"""

from __future__ import annotations

import concurrent.futures

import psycopg
import pytest
import requests

from tests.e2e.test_operations import scrape
from tests.e2e.test_pg_node import database_gone, node_config
from tests.helpers.ociclient import OCIClient, expect, sha256_digest
from tests.helpers.ocilayout import build_image, random_bytes
from tests.helpers.s3 import MotoServer, s3_registry
from tests.helpers.server import BACKEND, RegistryProcess, free_port, running
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(BACKEND != "izreg", reason="izreg's S3 and PostgreSQL backends")]


def with_metrics(registry: RegistryProcess) -> RegistryProcess:
    port = free_port()
    registry.extra_args += ["--metrics-listen", f"tcp:{port}:interface=127.0.0.1"]
    registry.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return registry


def s3_calls(registry, operation: str, outcome: str | None = None) -> float:
    """The S3 calls of C{operation} (of C{outcome}, or of any) the registry counted."""
    return sum(value for (name, labels), value in scrape(registry.metrics_url).items()
               if name == "izreg_s3_requests_total" and dict(labels)["operation"] == operation
               and (outcome is None or dict(labels)["outcome"] == outcome))


def names(registry) -> set[str]:
    return {name for name, _ in scrape(registry.metrics_url)}


# -- S3 ----------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_calls_are_counted_and_timed_by_operation_and_outcome(tmp_path_factory, moto_server):
    registry = with_metrics(s3_registry(tmp_path_factory, moto_server, "s3-metrics"))
    with running(registry):
        client = OCIClient(registry.url, auth=registry.requests_auth)
        repo = f"{registry.account}/counted"
        before = scrape(registry.metrics_url)
        data = random_bytes(20_000, "counted")
        expect(client.push_blob_monolithic(repo, data), 201)
        assert expect(client.get_blob(repo, sha256_digest(data)), 200).content == data
        after = scrape(registry.metrics_url)

        def moved(operation: str, outcome: str) -> float:
            key = ("izreg_s3_requests_total", (("operation", operation), ("outcome", outcome)))
            return after.get(key, 0) - before.get(key, 0)

        assert moved("HeadObject", "not_found") >= 1  # is it there already? no: written
        assert moved("PutObject", "ok") == 1
        assert moved("GetObject", "ok") == 1
        count = ("izreg_s3_request_duration_seconds_count", (("operation", "PutObject"),))
        assert after[count] - before.get(count, 0) == 1
        assert after[("izreg_s3_request_duration_seconds_sum", (("operation", "PutObject"),))] > 0
        # only the labels of fixed sets: no key, bucket, repository or digest
        labels = {k for (name, ls) in after if name.startswith("izreg_s3_") for k, _ in ls}
        assert labels <= {"operation", "outcome", "le"}
        present = names(registry)
        assert "izreg_lmdb_map_size_bytes" in present  # metadata in LMDB: its gauges, and no pool's
        assert not {n for n in present if n.startswith("izreg_postgres_")}


@pytest.fixture
def own_moto(tmp_path_factory):
    """A moto server of this test's own (the session's is shared: it is not stopped)."""
    server = MotoServer(str(tmp_path_factory.mktemp("moto-own") / "moto.log"))
    server.start()
    yield server
    server.stop()


def readyz(registry) -> requests.Response:
    return requests.get(f"{registry.url}/readyz", timeout=30)


@pytest.mark.s3
def test_an_s3_outage_is_not_ready_and_counted_then_ready_again(tmp_path_factory, moto_server, own_moto):
    # moto_server: its fixture sets the AWS_* credentials izreg and boto3 read
    registry = with_metrics(s3_registry(tmp_path_factory, own_moto, "s3-outage"))
    bucket = registry.bucket
    with running(registry):
        client = OCIClient(registry.url, auth=registry.requests_auth)
        repo = f"{registry.account}/outage"
        r = expect(readyz(registry), 200)
        assert r.json()["checks"]["bucket"] == {"ok": True}

        # a storm of probes is one HEAD of the bucket every few seconds, not one each
        heads = s3_calls(registry, "HeadBucket")
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            assert {r.status_code for r in pool.map(lambda _: readyz(registry), range(40))} == {200}
        assert s3_calls(registry, "HeadBucket") - heads <= 2

        own_moto.stop()
        down = wait_until(lambda: (r := readyz(registry)).status_code == 503 and r.json(),
                          what="/readyz says not ready")  # (a Response of a 503 is false)
        assert down["status"] == "unavailable"
        assert down["checks"]["bucket"] == {"ok": False, "error": "cannot connect to the S3 endpoint"}
        assert all(check["ok"] for name, check in down["checks"].items() if name != "bucket")
        assert s3_calls(registry, "HeadBucket", "unreachable") >= 1
        # a push while the bucket is away: a 503 (after botocore's retries), counted as unreachable
        failed = client.push_blob_monolithic(repo, random_bytes(1000, "outage"))
        assert failed.status_code == 503, failed.text
        assert s3_calls(registry, "HeadObject", "unreachable") + s3_calls(registry, "PutObject", "unreachable") >= 1
        assert "not ready: cannot connect to the S3 endpoint" in registry.log_text()

        own_moto.start()  # same port, but moto keeps its buckets in memory: made again
        own_moto.client().create_bucket(Bucket=bucket)
        wait_until(lambda: readyz(registry).status_code == 200, what="/readyz ready again")
        assert readyz(registry).json()["checks"]["bucket"] == {"ok": True}
        expect(client.push_blob_monolithic(repo, random_bytes(1000, "after")), 201)
        assert "the S3 bucket answers again" in registry.log_text()


@pytest.mark.s3
def test_without_the_bucket_check_a_node_stays_ready_and_serves_what_needs_no_bucket(tmp_path_factory, moto_server,
                                                                                      own_moto):
    registry = s3_registry(tmp_path_factory, own_moto, "s3-no-check", ready_check=False)
    with running(registry):
        client = OCIClient(registry.url, auth=registry.requests_auth)
        repo = f"{registry.account}/kept"
        image = build_image(layers=(1000,), seed="kept")
        for data in image["blobs"].values():
            expect(client.push_blob_monolithic(repo, data), 201)
        expect(client.put_manifest(repo, "v1", image["manifest_bytes"]), 201)
        assert "bucket" not in expect(readyz(registry), 200).json()["checks"]

        own_moto.stop()
        # still ready, and a device checking its tag is answered from the metadata store
        assert expect(readyz(registry), 200).json()["status"] == "ok"
        got = expect(client.head_manifest(repo, "v1"), 200)
        assert got.headers["Docker-Content-Digest"] == image["manifest_digest"]
        assert expect(client.get_manifest(repo, "v1"), 200).content == image["manifest_bytes"]
        assert client.tags(repo) == ["v1"]
        # what needs the bucket: 503 with Retry-After
        layer = image["layers"][0]["digest"]
        failed = expect(client.get_blob(repo, layer), 503)
        assert failed.json()["errors"][0]["code"] == "UNAVAILABLE" and failed.headers["Retry-After"]


# -- PostgreSQL --------------------------------------------------------------------------------


def pool(registry) -> dict[str, float]:
    """The pool's metrics by name less the prefix (a kind of error: "errors_<kind>")."""
    return {name[len("izreg_postgres_pool_"):].replace("_total", "") + "".join(f"_{v}" for _, v in labels): value
            for (name, labels), value in scrape(registry.metrics_url).items()
            if name.startswith("izreg_postgres_pool_")}


@pytest.fixture
def pg_node(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("pgmetrics")
    dsn = postgres_server.create_migrated_database()
    registry = with_metrics(RegistryProcess(data_dir=str(base / "data"), config=node_config(base / "izreg.toml", dsn)))
    registry.dsn = dsn
    with running(registry):
        yield registry
    postgres_server.drop_database(dsn)


@pytest.mark.postgres
def test_the_pool_metrics_move_with_real_calls(pg_node):
    node = pg_node
    first = pool(node)
    assert first["max_connections"] == 4  # pool_size in node_config
    assert 1 <= first["connections"] <= 4
    assert first["requests_waiting"] == 0 and first["connections_in_use"] < 4  # (a connection opening counts)
    assert first["errors_timeout"] == 0
    for _ in range(5):
        expect(requests.get(f"{node.url}/v2/_catalog", auth=node.requests_auth, timeout=30), 200)
    assert pool(node)["requests"] >= first["requests"] + 5
    present = names(node)
    assert "izreg_lmdb_map_size_bytes" not in present and not {n for n in present if n.startswith("izreg_s3_")}

    # a locked table: every connection is held by a call waiting for the lock (lock_timeout 1 s), more wait for one
    holder = psycopg.connect(node.dsn)
    try:
        holder.execute("LOCK TABLE repos IN ACCESS EXCLUSIVE MODE")

        def catalog(_):
            return requests.get(f"{node.url}/v2/_catalog", auth=node.requests_auth, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(24) as threads:
            answers = threads.map(catalog, range(24))
            busy = wait_until(lambda: (p := pool(node))["connections_in_use"] == 4 and p["requests_waiting"] >= 1
                              and p, what="every connection in use and calls waiting", timeout=30)
            assert busy["connections"] == 4
            assert set(answers) == {503}
    finally:
        holder.close()
    wait_until(lambda: (p := pool(node))["requests_waiting"] == 0 and p["connections_in_use"] < 4,
               what="the calls gone")


@pytest.mark.postgres
def test_connections_refused_count_as_pool_errors_and_timeouts(pg_node):
    node = pg_node
    before = pool(node)
    with database_gone(node):
        # more probes than connections: the broken ones go, then no new one is had in time
        wait_until(lambda: readyz(node).status_code == 503 and (p := pool(node))["errors_timeout"] >
                   before["errors_timeout"] and p["errors_connect"] > before["errors_connect"],
                   what="connections refused counted", timeout=60)
    wait_until(lambda: readyz(node).status_code == 200, what="ready again")
    assert pool(node)["connections"] >= 1
