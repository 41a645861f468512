"""
A real ``twistd izreg server`` whose bucket stops answering (moto behind a
TCP proxy of the test's own that swallows what it is sent: a blackhole),
with two S3 threads: the requests behind the stuck threads get a 503 with
Retry-After within ``[storage.s3] queue_timeout`` (they used to queue for as
long as the threads were stuck), an upload whose chunk was refused resumes
once the bucket is back, the node serves again, and a SIGTERM stops it in
bounded time with threads still stuck (twistd waited for them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time

import pytest
import requests

from tests.e2e.test_backend_metrics import with_metrics
from tests.e2e.test_operations import scrape
from tests.helpers.ociclient import OCIClient, describe, expect, sha256_digest
from tests.helpers.ocilayout import random_bytes
from tests.helpers.s3 import s3_registry
from tests.helpers.server import BACKEND, running
from tests.helpers.wait import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.s3,
    pytest.mark.skipif(BACKEND != "izreg", reason="izreg's S3 backend"),
]

THREADS = 2
QUEUE_TIMEOUT = 1
#: how long a refused request may take in all: its queue_timeout, and a loaded machine's slack
REFUSED_WITHIN = QUEUE_TIMEOUT + 7


@pytest.fixture
def proxy(moto_proxy):
    return moto_proxy


def node(tmp_path_factory, moto_server, proxy, label: str, read_timeout: int, extra_toml: str = "", **s3_options):
    """A registry (not started) with L{THREADS} S3 threads, talking to the bucket through C{proxy}."""
    registry = s3_registry(tmp_path_factory, moto_server, label, threads=THREADS, queue_timeout=QUEUE_TIMEOUT,
                           read_timeout=read_timeout, extra_toml=extra_toml, **s3_options)
    config = registry.extra_args[registry.extra_args.index("--config") + 1]
    with open(config) as f:
        text = f.read().replace(moto_server.url, proxy.url)
    with open(config, "w") as f:
        f.write(text)
    return with_metrics(registry)


def blob_in(registry, name: str):
    """A client of the running C{registry}, and a repository and the digest of a blob it pushed there."""
    client = OCIClient(registry.url, auth=registry.requests_auth, timeout=120)
    repo = f"{registry.account}/{name}/app"
    data = random_bytes(200_000, name)
    expect(client.push_blob_monolithic(repo, data), 201)
    return client, repo, sha256_digest(data)


def metric(registry, name: str) -> float:
    return sum(value for (found, _), value in scrape(registry.metrics_url).items() if found == name)


def hold_every_thread(registry, client, repo, digest, pool):
    """Pulls that each hold an S3 thread on the blackholed bucket (they wait for its answer)."""
    stuck = [pool.submit(client.get_blob, repo, digest, timeout=120) for _ in range(THREADS)]
    wait_until(lambda: metric(registry, "izreg_s3_threads_busy") == THREADS, "every S3 thread held", timeout=30)
    return stuck


@contextlib.contextmanager
def held_threads(registry, proxy, name: str):
    """A blob pushed, then the bucket silent and every S3 thread held by a pull of it: the client, the pulls."""
    client, repo, digest = blob_in(registry, name)
    proxy.blackhole()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        yield client, repo, hold_every_thread(registry, client, repo, digest, pool)


def refused(resp: requests.Response) -> None:
    assert resp.status_code == 503, describe(resp)
    assert resp.headers.get("Retry-After") == "1", describe(resp)
    assert resp.json()["errors"][0]["code"] == "UNAVAILABLE", describe(resp)


def timed(f, *args, **kwargs):
    began = time.monotonic()
    resp = f(*args, **kwargs)
    return resp, time.monotonic() - began


def test_requests_behind_stuck_s3_threads_are_refused_in_bounded_time_and_the_node_serves_again(
        tmp_path_factory, moto_server, proxy):
    # read_timeout 3: a stuck thread is held 3 s per attempt, six attempts while the blackhole lasts;
    # the calls queued behind it waited all that (and again behind the next stuck call), never a 503
    registry = node(tmp_path_factory, moto_server, proxy, "s3-queue", read_timeout=3)
    with running(registry):
        client, repo, digest = blob_in(registry, "queued")
        upload = random_bytes(300_000, "resumed")
        url = client.location(expect(client.start_upload(repo), 202))
        url = client.location(expect(client.patch_chunk(url, upload[:100_000], 0), 202))  # a tail object
        assert metric(registry, "izreg_s3_threads") == THREADS

        proxy.blackhole()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            stuck = hold_every_thread(registry, client, repo, digest, pool)
            pulls = [pool.submit(timed, client.get_blob, repo, digest) for _ in range(4)]
            patch = pool.submit(timed, client.patch_chunk, url, upload[100_000:200_000], 100_000)
            push = pool.submit(timed, client.push_blob_monolithic, repo, random_bytes(50_000, "refused"))
            for done in pulls + [patch, push]:
                resp, took = done.result()
                refused(resp)
                assert took < REFUSED_WITHIN, (took, describe(resp))
            assert metric(registry, "izreg_s3_queue_rejected_total") >= 6
            assert metric(registry, "izreg_s3_threads_busy") == THREADS  # still stuck: the bucket is silent
            # what the refused requests queued after (closing their readers, dropping an upload) is refused in turn
            wait_until(lambda: metric(registry, "izreg_s3_queue_waiting") == 0, "the queue empty",
                       timeout=REFUSED_WITHIN)

            proxy.restore()  # the stuck calls' connections stay dead: their next attempt passes
            for pulled in stuck:
                resp = pulled.result()
                assert resp.status_code in (200, 503), describe(resp)
                assert resp.status_code == 503 or sha256_digest(resp.content) == digest

        assert sha256_digest(expect(client.get_blob(repo, digest), 200).content) == digest
        # the refused chunk was never acknowledged: the upload goes on from the first one
        status = expect(client.request("GET", url), 204)
        assert status.headers["Range"] == "0-99999", describe(status)
        url = client.location(expect(client.patch_chunk(url, upload[100_000:], 100_000), 202))
        expect(client.request("PUT", client.with_query(url, digest=sha256_digest(upload)),
                              headers={"Content-Length": "0"}), 201)
        assert expect(client.get_blob(repo, sha256_digest(upload)), 200).content == upload
        assert metric(registry, "izreg_s3_threads_busy") == 0


def test_sigterm_stops_a_node_whose_s3_threads_are_stuck_in_bounded_time(tmp_path_factory, moto_server, proxy):
    # twistd's stop joined the S3 threads: with the bucket silent it waited their read timeout
    # (60 s, per attempt), and a systemctl stop ended in a SIGKILL
    drain = 2
    registry = node(tmp_path_factory, moto_server, proxy, "s3-stop", read_timeout=60,
                    extra_toml=f"[server]\ndrain_timeout = {drain}\n")
    with running(registry):
        with held_threads(registry, proxy, "stop") as (_, _, stuck):
            mark = registry.log_mark()
            began = time.monotonic()
            assert registry.stop(timeout=30) == -signal.SIGTERM  # twistd's own end on SIGTERM, not a SIGKILL
            took = time.monotonic() - began
            for pulled in stuck:  # cut after the drain: an error, never a hang
                try:
                    resp = pulled.result()
                except requests.RequestException:
                    continue
                assert resp.status_code == 503, describe(resp)
        # the drain (2 s), the S3 threads' grace (2 s), the start of the process's exit
        assert took < drain + 8, took
        registry.wait_for_log(r"2 call\(s\) of the izreg-s3 pool still waiting after 2 s: left behind", mark)


def test_a_silent_bucket_holds_the_index_writer_one_writer_timeout_not_minutes(tmp_path_factory, moto_server, proxy):
    # the collector deletes a blob's bytes inside an LMDB write transaction (no commit may record the blob
    # meanwhile): its DELETE to a silent bucket held the one writer thread read_timeout (60 s here) per
    # attempt, five attempts, and every account's writes waited behind it
    writer_timeout = 2
    registry = node(tmp_path_factory, moto_server, proxy, "s3-writer", read_timeout=60, writer_timeout=writer_timeout,
                    extra_toml="[gc]\ninterval = 1\ngrace = 2\n[uploads]\nmax_open_per_account = 0\n")
    with running(registry):
        client, repo, _ = blob_in(registry, "collected")  # linked to no manifest: collected after the grace
        proxy.blackhole(only=b"DELETE ")  # the sweep's scans are answered: it reaches the blob's bytes
        mark = registry.log_mark()
        slowest = 0.0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # the sweep that finds it (after 2 s) drops its record, then its bytes: the DELETE gets no answer
            failed = pool.submit(registry.wait_for_log, "garbage collection failed", mark, 60)
            while True:
                resp, took = timed(client.start_upload, f"{registry.account}/other/app")  # an index write, no S3
                expect(resp, 202)
                slowest = max(slowest, took)
                try:
                    line = failed.result(timeout=0.2)  # one write every 0.2 s until the sweep has failed
                    break
                except concurrent.futures.TimeoutError:
                    continue
        assert "timeout" in line.lower() or "did not answer" in line, line
        assert slowest < writer_timeout + 3, slowest
        assert metric(registry, "izreg_s3_threads_busy") == 0  # the writer's own bounded call: no S3 thread


def test_upload_expiry_waits_for_an_s3_thread_like_a_request_and_tries_again_next_round(
        tmp_path_factory, moto_server, proxy):
    # the expiry's S3 calls ran in the I/O pool on the S3 client: with the bucket silent, one I/O thread
    # held read_timeout per attempt per call, outside the S3 pool's bound and its metrics
    registry = node(tmp_path_factory, moto_server, proxy, "s3-expiry", read_timeout=3,
                    extra_toml="[uploads]\nttl = 1\nexpiry_interval = 1\n")
    with running(registry):
        with held_threads(registry, proxy, "expiry") as (client, repo, stuck):
            mark = registry.log_mark()
            url = client.location(expect(client.start_upload(repo), 202))  # an index record, no S3 call yet
            line = registry.wait_for_log("upload expiry failed", mark, timeout=REFUSED_WITHIN + 5)
            assert "no thread free" in line, line
            mark = registry.log_mark()
            proxy.restore()
            for pulled in stuck:
                pulled.result()
        # the bucket back: a later round drops the session (not asked meanwhile: a status read while a
        # round drops it brings it back into the node's cache, a race of its own)
        registry.wait_for_log("expired 1 abandoned upload", mark, timeout=60)
        expect(client.request("GET", url), 404)
