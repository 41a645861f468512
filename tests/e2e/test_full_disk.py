"""
A full disk, for real: the data dir on a small tmpfs the test mounts (root),
filled by a file, then freed. Pushes get a clear 507 (never a 500 or a
dropped connection), the upload session goes on from its last acknowledged
offset, no file descriptor is left open, pulls go on, and once space is
freed pushes work again without a restart.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.helpers.ociclient import OCIClient, expect, sha256_digest
from tests.helpers.server import RegistryProcess
from tests.helpers.tmpfs import tmpfs
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.e2e]

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=24m", "to fill a file system") as mount:
        yield mount


def fill(path) -> None:
    """Write C{path} until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        for size in (MIB, 64 * 1024, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def out_of_space(resp) -> None:
    assert resp.status_code == 507, f"{resp.status_code} {resp.content[:500]!r}"
    error = resp.json()["errors"][0]
    assert "out of storage space" in error["message"], error


def test_fill_push_free_push(small_disk, tmp_path):
    registry = RegistryProcess(data_dir=str(small_disk / "data"), log_path=str(tmp_path / "server.log"))
    try:
        registry.start()
        if registry.backend != "izreg":
            pytest.skip("izreg-specific")
        client = OCIClient(registry.url, auth=registry.requests_auth)
        repo = f"{registry.account}/disk/app"
        layer, config = os.urandom(256 * 1024), b'{"architecture":"amd64","os":"linux"}'
        for blob in (layer, config):
            expect(client.push_blob_monolithic(repo, blob), 201)
        manifest = (
            b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},'
            b'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}'
            % (sha256_digest(config).encode(), len(config), sha256_digest(layer).encode(), len(layer)))
        expect(client.put_manifest(repo, "v1", manifest), 201)

        # an upload in progress: its first chunk acknowledged
        big = os.urandom(3 * MIB)
        upload = client.location(expect(client.start_upload(repo), 202))
        expect(client.patch_chunk(upload, big[:MIB], 0), 202)
        upload = client.location(client.request("GET", upload))
        fds = open_fds(registry.pid)
        mark = registry.log_mark()

        fill(small_disk / "filler")
        # a chunk larger than the write buffer fails mid-body, a small one when it is made durable
        out_of_space(client.patch_chunk(upload, big[MIB:], MIB))
        out_of_space(client.patch_chunk(upload, big[MIB:MIB + 100_000], MIB))
        status = client.request("GET", upload)
        assert status.status_code == 204 and status.headers["Range"] == f"0-{MIB - 1}", status.headers
        out_of_space(client.push_blob_monolithic(repo, os.urandom(2 * MIB)))
        # small index writes may still fit in LMDB's free pages; never a 500
        assert client.start_upload(repo).status_code in (202, 507)
        # pulls go on
        assert client.get_manifest(repo, "v1").content == manifest
        assert client.get_blob(repo, sha256_digest(layer)).content == layer
        # a refused body's connection is closed after its linger (izreg.http.bodies.LINGER, 2 s)
        wait_until(lambda: open_fds(registry.pid) <= fds, "no file descriptor left open after the failures", 15)

        os.unlink(small_disk / "filler")
        # the same session goes on from its last acknowledged offset, without a restart
        expect(client.patch_chunk(upload, big[MIB:], MIB), 202)
        done = client.request("PUT", client.with_query(client.location(client.request("GET", upload)),
                                                       digest=sha256_digest(big)))
        expect(done, 201)
        assert client.get_blob(repo, sha256_digest(big)).content == big
        expect(client.push_blob_monolithic(repo, os.urandom(2 * MIB)), 201)
        expect(client.put_manifest(repo, "v2", manifest), 201)
        assert registry.starts == 1
        tail = list(registry.log_lines)[mark:]
        assert not [line for line in tail if "Traceback" in line], "\n".join(tail[-80:])
        assert any("storage failure" in line for line in tail)
    finally:
        registry.close()
