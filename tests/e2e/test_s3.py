"""
The real ``twistd izreg server`` with ``[storage] backend = "s3"`` over a
real S3 API server (moto in server mode, started by the tests on a free
loopback port): skopeo push and pull, the protocol tests, redirects to
presigned URLs, a bucket that cannot be reached, a session that survives a
restart, expiry that aborts the multipart upload, and a big blob pushed
and pulled with izreg's memory flat.

(kill -9 during concurrent pushes runs on S3 too: tests/e2e/test_durability.py.)
"""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from tests.e2e.test_protocol import (  # noqa: F401  (the same tests, on the S3 registry below)
    test_blob_range_requests,
    test_large_monolithic_put,
    test_streamed_patch_without_content_range,
    test_upload_cancel,
)
from tests.e2e.test_skopeo import (  # noqa: F401
    pushed,
    source,
    test_copy_out_to_oci_layout,
    test_cross_repository_copy_and_mount,
    test_delete,
    test_multi_platform_index,
    test_push_then_inspect,
)
from tests.helpers.ociclient import OCIClient, describe, expect, sha256_digest
from tests.helpers.ocilayout import random_bytes
from tests.helpers.s3 import s3_registry, stored_blobs
from tests.helpers.server import BACKEND, RegistryProcess, ServerStartError, running
from tests.helpers.wait import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.s3,
    pytest.mark.skipif(BACKEND != "izreg", reason="izreg's S3 backend"),
]

MiB = 1024 * 1024
#: izreg's multipart part (izreg.storage.s3.PART_SIZE): bodies longer than this span parts
PART = 5 * MiB


@pytest.fixture(scope="module")
def registry(tmp_path_factory, moto_server):
    """One S3-backed registry for the module (the skopeo and protocol tests use it)."""
    with running(s3_registry(tmp_path_factory, moto_server, "s3-module")) as reg:
        yield reg


@pytest.fixture
def start_s3(tmp_path_factory, moto_server):
    started = []

    def start(extra_toml: str = "", **options) -> RegistryProcess:
        reg = s3_registry(tmp_path_factory, moto_server, "s3-fn", extra_toml=extra_toml, **options)
        started.append(reg)
        reg.start()
        return reg

    yield start
    for reg in started:
        reg.close()


def test_bucket_holds_whole_blobs_only(registry, client, new_repo, moto_server):
    repo = new_repo("whole")
    small, big = random_bytes(1000, "s"), random_bytes(PART + 12345, "b")
    expect(client.push_blob_monolithic(repo, small), 201)
    expect(client.push_blob_chunked(repo, big, 3 * MiB), 201)
    stored = stored_blobs(moto_server, registry.bucket)
    for data in (small, big):
        assert stored[sha256_digest(data)] == sha256_digest(data)
    assert all(name == actual for name, actual in stored.items()), stored
    assert not os.path.exists(os.path.join(registry.data_dir, "blobs", "sha256")), "blob bytes on local disk"
    listed = moto_server.client().list_multipart_uploads(Bucket=registry.bucket)
    assert listed.get("Uploads", []) == [], "a committed upload left its multipart upload behind"


def test_redirect_to_a_presigned_url(start_s3, moto_server):
    registry = start_s3(redirect=True)
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/redirected"
    data = random_bytes(300_000, "redirect")
    digest = sha256_digest(data)
    expect(client.push_blob_monolithic(repo, data), 201)
    resp = expect(client.get_blob(repo, digest), 307)
    location = resp.headers["Location"]
    assert location.startswith(moto_server.url + "/"), location
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    fetched = requests.get(location, timeout=30)  # no izreg credentials: the URL itself is the grant
    assert fetched.status_code == 200 and fetched.content == data
    ranged = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    head = expect(client.head_blob(repo, digest), 200)  # HEAD answers itself
    assert head.headers["Content-Length"] == str(len(data))
    assert client.get_blob(repo, digest, allow_redirects=True).content == data
    # the URL is only for blobs this repository may read
    other = f"{registry.account}/other"
    assert client.get_blob(other, digest).status_code == 404


def test_unreachable_bucket_is_one_line(tmp_path_factory, moto_server):
    registry = s3_registry(tmp_path_factory, moto_server, "s3-missing", bucket="izreg-no-such-bucket")
    try:
        with pytest.raises(ServerStartError):
            registry.start(timeout=60)
    finally:
        registry.close()
    text = registry.log_text()
    expected = f"S3 bucket 'izreg-no-such-bucket' at {moto_server.url} is not reachable: no such bucket"
    # the log (on stdout, where stderr goes too) says it once: as a log line, not again as "izreg: ..."
    said = [line for line in text.splitlines() if expected in line]
    assert len(said) == 1 and said[0].endswith(f"#error] {expected}"), text
    assert "Traceback" not in text, text


def test_upload_session_survives_a_restart(start_s3, moto_server):
    """A part and a tail are acknowledged, izreg is killed, and the upload goes on where it was."""
    registry = start_s3()
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/resumed"
    data = random_bytes(2 * PART + 777, "resume-s3")
    first = PART + 3 * MiB  # one whole part shipped, the rest a tail object
    url = client.location(expect(client.start_upload(repo), 202))
    url = client.location(expect(client.patch_chunk(url, data[:first], 0), 202))
    registry.kill9()
    registry.start()
    status = expect(client.request("GET", url), 204)
    assert status.headers["Range"] == f"0-{first - 1}"
    url = client.location(expect(client.patch_chunk(url, data[first:], first), 202))
    resp = expect(client.request("PUT", client.with_query(url, digest=sha256_digest(data)),
                                 headers={"Content-Length": "0"}), 201)
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(data)
    got = expect(client.get_blob(repo, sha256_digest(data)), 200)
    assert got.content == data
    assert stored_blobs(moto_server, registry.bucket) == {sha256_digest(data): sha256_digest(data)}


def test_expired_session_aborts_its_multipart_upload(start_s3, moto_server):
    registry = start_s3(extra_toml="[uploads]\nttl = 1\nexpiry_interval = 1\n")
    client = OCIClient(registry.url, auth=registry.requests_auth)
    s3 = moto_server.client()
    url = client.location(expect(client.start_upload(f"{registry.account}/abandoned"), 202))
    expect(client.patch_chunk(url, random_bytes(PART + 100, "abandoned"), 0), 202)
    assert len(s3.list_multipart_uploads(Bucket=registry.bucket).get("Uploads", [])) == 1
    wait_until(lambda: not s3.list_multipart_uploads(Bucket=registry.bucket).get("Uploads"),
               what="the abandoned multipart upload is aborted")
    wait_until(lambda: not s3.list_objects_v2(Bucket=registry.bucket).get("Contents"),
               what="the tail object is deleted")
    assert client.request("GET", url).status_code == 404


# -- a big blob, memory flat ------------------------------------------------------------------

#: the big blob's size (IZREG_S3_BIG_BLOB_MIB, MiB; default 1024: moto on a shared
#: 2-core machine takes about a minute per GiB each way)
BIG = int(os.environ.get("IZREG_S3_BIG_BLOB_MIB", "1024")) * MiB
#: how far izreg's peak RSS may rise over its warmed-up RSS while the big blob goes through: parts of
#: PART in flight, gathering buffers; measured 8.4 MiB for 1 GiB (a process holding the blob, or a
#: part per thread unbounded, goes far past it). The warmed-up RSS itself (about 89 MiB, most of it
#: botocore's service models and the modules) is not the transfer's and varies with the libraries.
RSS_GROWTH_LIMIT = 40 * MiB


def _stream(size: int, seed: str):
    block = b"".join(hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(32768))  # 1 MiB
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        yield chunk[:1] + sent.to_bytes(8, "big")[1:] + chunk[8:] if len(chunk) >= 8 else chunk
        sent += len(chunk)


def _status(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM...), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def test_big_blob_push_and_pull_with_flat_memory(start_s3):
    registry = start_s3()
    client = OCIClient(registry.url, auth=registry.requests_auth, timeout=600)
    repo = f"{registry.account}/big"
    # warmed up (a small blob through the same paths: botocore's modules, clients and pools loaded)
    small = random_bytes(PART + 1000, "warm")
    expect(client.push_blob_monolithic(repo, small), 201)
    assert expect(client.get_blob(repo, sha256_digest(small)), 200).content == small
    before = _status(registry.pid, "VmRSS")
    with open(f"/proc/{registry.pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here (proc(5)): the start's own peak is not the transfer's
    hasher = hashlib.sha256()

    def body():
        for chunk in _stream(BIG, "big"):
            hasher.update(chunk)
            yield chunk

    url = client.location(expect(client.start_upload(repo), 202))
    resp = expect(client.request("PATCH", url, data=body(), headers={"Content-Type": "application/octet-stream"}), 202)
    assert resp.headers["Range"] == f"0-{BIG - 1}"
    digest = f"sha256:{hasher.hexdigest()}"
    expect(client.request("PUT", client.with_query(client.location(resp), digest=digest),
                          headers={"Content-Length": "0"}), 201)
    pulled = hashlib.sha256()
    size = 0
    with client.get_blob(repo, digest, stream=True) as got:
        expect(got, 200)
        for chunk in got.iter_content(1 << 20):
            pulled.update(chunk)
            size += len(chunk)
    assert (size, f"sha256:{pulled.hexdigest()}") == (BIG, digest)
    peak = _status(registry.pid, "VmHWM")
    print(f"izreg RSS {before / MiB:.1f} MiB warmed up, peak {peak / MiB:.1f} MiB for a {BIG / MiB:.0f} MiB blob"
          " pushed and pulled through S3")
    assert peak - before < RSS_GROWTH_LIMIT, (
        f"izreg's peak RSS was {peak / MiB:.1f} MiB, {(peak - before) / MiB:.1f} MiB over its warmed-up RSS\n"
        f"{describe(got)}")


def test_a_bucket_out_of_reach_is_a_503_with_retry_after(tmp_path_factory, moto_server):
    # with the S3 server gone, a blob GET sent its 200 head before the first read and then cut the
    # connection (no error a client can act on), a DELETE of an upload was a 500, the other 503s
    # had no Retry-After, and a failed monolithic POST left an unhandled error in the log
    from tests.helpers.s3 import MotoServer

    own = MotoServer(str(tmp_path_factory.mktemp("moto-own") / "moto.log"))  # ours to stop
    own.start()
    try:
        with running(s3_registry(tmp_path_factory, own, "s3-gone")) as reg:
            client = OCIClient(reg.url, auth=reg.requests_auth)
            repo = f"{reg.account}/gone/app"
            data = random_bytes(300_000, "gone")
            digest = sha256_digest(data)
            expect(client.push_blob_monolithic(repo, data), 201)
            patched = client.location(expect(client.start_upload(repo), 202))
            patched = client.location(expect(client.patch_chunk(patched, data[:1000], 0), 202))
            other = client.location(expect(client.start_upload(repo), 202))
            mark = reg.log_mark()
            own.stop()
            answers = {
                "GET": client.get_blob(repo, digest),
                "ranged GET": client.get_blob(repo, digest, headers={"Range": "bytes=10-20"}),
                "monolithic POST": client.push_blob_monolithic(repo, random_bytes(2000, "gone-2")),
                "PATCH": client.patch_chunk(patched, data[1000:], 1000),
                "DELETE of an upload": client.request("DELETE", other),
            }
            for what, resp in answers.items():
                assert resp.status_code == 503, (what, describe(resp))
                assert resp.headers.get("Retry-After") == "1", what
                assert resp.json()["errors"][0]["code"] == "UNAVAILABLE", what
            expect(client.head_blob(repo, digest), 200)  # the index (not the bucket) answers
            expect(client.request("GET", patched), 204)  # the session is where it was: resumable
            reg.wait_for_log(r"dropping upload \S+ failed: S3: ", mark)  # the failed POST's bytes: one line
            logged = "\n".join(list(reg.log_lines)[-(reg.lines_logged - mark):])
            assert "Traceback" not in logged and "Unhandled error" not in logged, logged[-3000:]
    finally:
        own.stop()


def test_a_secret_key_in_a_config_every_user_may_read_is_warned_about(tmp_path_factory, moto_server):
    # docs/operations.rst installed the config 0644, and etc/izreg.toml offers secret_access_key there
    from tests.helpers.s3 import CREDENTIALS

    reg = s3_registry(tmp_path_factory, moto_server, "s3-secret", access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    config = reg.extra_args[reg.extra_args.index("--config") + 1]
    os.chmod(config, 0o644)
    with running(reg):
        line = reg.wait_for_log("every user of this machine may read it", 0)
        assert "storage.s3.secret_access_key" in line and "chmod 0640" in line
        assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in reg.log_text()
        reg.stop()
        os.chmod(config, 0o640)
        mark = reg.log_mark()
        reg.start()
        assert "every user of this machine" not in "\n".join(list(reg.log_lines)[-(reg.lines_logged - mark):])


def test_a_node_is_back_soon_after_a_blackhole_of_the_bucket(tmp_path_factory, moto_server):
    # connections to the bucket that died silently (10 s of blackhole) held every S3 thread for the
    # read timeout, then a fixed 300 s (now [storage.s3] read_timeout, 60 by default): the node's pulls hung that
    # long after the bucket was back, new ones too
    import concurrent.futures
    import time

    from tests.helpers.tcpproxy import TCPProxy

    proxy = TCPProxy(moto_server.port)
    bucket = moto_server.new_bucket()
    reg = s3_registry(tmp_path_factory, moto_server, "s3-blackhole", bucket=bucket, threads=4, read_timeout=2)
    config = reg.extra_args[reg.extra_args.index("--config") + 1]
    with open(config) as f:
        text = f.read().replace(moto_server.url, proxy.url)
    with open(config, "w") as f:
        f.write(text)
    try:
        with running(reg):
            client = OCIClient(reg.url, auth=reg.requests_auth)
            repo = f"{reg.account}/blackhole/app"
            data = random_bytes(200_000, "blackhole")
            digest = sha256_digest(data)
            expect(client.push_blob_monolithic(repo, data), 201)
            proxy.blackhole()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # more than the S3 threads: all held
                pulls = [pool.submit(client.get_blob, repo, digest, timeout=120) for _ in range(8)]
                time.sleep(3)  # the blackhole lasts (nothing to await: it is the absence of answers)
                proxy.restore()
                back = time.monotonic()
                for pulled in pulls:  # each one whole, or a clear 503 to retry: never a hang
                    resp = pulled.result()
                    assert resp.status_code in (200, 503), describe(resp)
                    assert resp.status_code == 503 or sha256_digest(resp.content) == digest
            assert time.monotonic() - back < 30
            expect(client.get_blob(repo, digest), 200)
    finally:
        proxy.close()
