"""The content-addressed blob store (izreg.storage.blobs) on a real temp dir."""

from __future__ import annotations

import hashlib
import os

import pytest

from izreg.core.digest import Digest
from izreg.storage import paths
from izreg.storage.blobs import HASH_CHUNK, BlobStore, fsync_dir, fsync_file, hash_file


@pytest.fixture
def store(tmp_path):
    return BlobStore(str(tmp_path))


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_creates_blobs_dir(tmp_path):
    BlobStore(str(tmp_path / "data"))
    assert (tmp_path / "data" / "blobs").is_dir()
    BlobStore(str(tmp_path / "data"))  # twice is fine


@pytest.mark.parametrize(
    "digest, relative",
    [
        (Digest("sha256", "ab" + "0" * 62), os.path.join("blobs", "sha256", "ab", "ab" + "0" * 62)),
        (Digest("sha512", "0f" * 64), os.path.join("blobs", "sha512", "0f", "0f" * 64)),
    ],
)
def test_path_layout(store, tmp_path, digest, relative):
    assert store.path(digest) == os.path.join(str(tmp_path), relative)
    assert paths.blob_path(str(tmp_path), digest) == store.path(digest)


@pytest.mark.parametrize(
    "data, algorithm",
    [(b"", "sha256"), (b"x", "sha256"), (b"\x00" * 4097, "sha256"), (b"hello", "sha512"), (b"", "sha512")],
    ids=["empty", "one-byte", "4097-nul", "sha512", "sha512-empty"],
)
def test_put_bytes_then_read(store, tmp_path, data, algorithm):
    digest = Digest.of(data, algorithm)
    assert store.size(digest) is None
    assert store.open(digest) is None
    store.put_bytes(digest, data)
    assert store.size(digest) == len(data)
    with store.open(digest) as f:
        assert f.read() == data
    assert list(store.digests()) == [digest]
    assert not [p for p in files_under(tmp_path) if p.endswith(".tmp")]


def test_put_bytes_twice_keeps_the_first_file(store):
    digest = Digest.of(b"data")
    store.put_bytes(digest, b"data")
    inode = os.stat(store.path(digest)).st_ino
    store.put_bytes(digest, b"data")
    assert os.stat(store.path(digest)).st_ino == inode
    assert list(store.digests()) == [digest]


@pytest.mark.parametrize("exists", [False, True])
def test_ingest(store, tmp_path, exists):
    data = b"layer bytes"
    digest = Digest.of(data)
    if exists:
        store.put_bytes(digest, data)
    source = tmp_path / "upload-file"
    source.write_bytes(data)
    store.ingest(str(source), digest)
    assert not source.exists()  # moved or dropped, never left behind
    with store.open(digest) as f:
        assert f.read() == data
    assert list(store.digests()) == [digest]


def test_ingest_existing_keeps_original_content(store, tmp_path):
    digest = Digest.of(b"original")
    store.put_bytes(digest, b"original")
    source = tmp_path / "dup"
    source.write_bytes(b"original")
    store.ingest(str(source), digest)
    assert open(store.path(digest), "rb").read() == b"original"


def test_delete(store):
    digest = Digest.of(b"gone")
    store.put_bytes(digest, b"gone")
    store.delete(digest)
    assert store.size(digest) is None and store.open(digest) is None
    store.delete(digest)  # missing is fine
    assert list(store.digests()) == []


def test_digests_sorted_and_skip_temp_files(store):
    data = [b"a", b"b", b"c", b"d"]
    wanted = sorted(Digest.of(x) for x in data) + sorted(Digest.of(x, "sha512") for x in data[:2])
    for x in data:
        store.put_bytes(Digest.of(x), x)
    for x in data[:2]:
        store.put_bytes(Digest.of(x, "sha512"), x)
    some = Digest.of(b"a")
    with open(store.path(some) + ".deadbeef.tmp", "wb") as f:
        f.write(b"partial")
    with open(os.path.join(store.root, "blobs", ".izreg-probe-x1y2"), "wb") as f:  # a crashed write probe's
        f.write(b"ok")
    assert list(store.digests()) == sorted(wanted, key=lambda d: (d.algorithm, d.hex))


def test_digests_of_empty_store(store):
    assert list(store.digests()) == []


def test_open_is_independent_of_delete(store):
    digest = Digest.of(b"streaming")
    store.put_bytes(digest, b"streaming")
    f = store.open(digest)
    store.delete(digest)
    assert f.read() == b"streaming"  # an open reader survives unlink
    f.close()


@pytest.mark.parametrize(
    "size, length, algorithm",
    [
        (0, None, "sha256"),
        (0, 0, "sha256"),
        (0, 10, "sha256"),
        (10, None, "sha256"),
        (10, 0, "sha256"),
        (10, 3, "sha256"),
        (10, 10, "sha256"),
        (10, 11, "sha256"),  # past the end: everything there is
        (10, 3, "sha512"),
        (HASH_CHUNK + 1, None, "sha256"),
        (HASH_CHUNK + 1, HASH_CHUNK, "sha256"),
        (HASH_CHUNK + 1, HASH_CHUNK + 1, "sha256"),
        (2 * HASH_CHUNK + 5, HASH_CHUNK + 7, "sha256"),
    ],
)
def test_hash_file(tmp_path, size, length, algorithm):
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    path = tmp_path / "f"
    path.write_bytes(data)
    hasher = hash_file(str(path), algorithm, length)
    expected = data if length is None else data[:length]
    assert hasher.name == algorithm
    assert hasher.hexdigest() == hashlib.new(algorithm, expected).hexdigest()


def test_hash_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_file(str(tmp_path / "nope"), "sha256")


def test_fsync_helpers(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    fsync_file(str(f))
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_file(str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError):
        fsync_dir(str(f))
