"""Garbage collection (izreg.storage.gc) over a real index (LMDB and PostgreSQL) and blob files in tmp_path."""

from __future__ import annotations

import os

import pytest

from izreg.core.digest import Digest
from izreg.storage.blobs import BlobStore
from izreg.storage.gc import Collector, SweepLock
from tests.helpers.indexes import index, index_backend  # noqa: F401  (fixtures: both backends)

A = "0123456789abcdef0123456789abcdef"
REPO, OTHER = f"{A}/app", f"{A}/other"
GRACE = 100.0


@pytest.fixture
def store(index, tmp_path):
    return index, BlobStore(str(tmp_path)), str(tmp_path)


def blob(index, blobs, data: bytes, now: float, name: str = REPO) -> Digest:
    digest = Digest.of(data)
    index.commit_blob(name, digest, len(data), now, None, place=lambda: blobs.put_bytes(digest, data))
    return digest


def manifest(index, digests, now: float, name: str = REPO, tag: str | None = "v1", seed: bytes = b"m") -> Digest:
    digest = Digest.of(seed)
    index.put_manifest(name, digest, {"mediaType": "x", "subject": None, "created": now}, seed,
                       [(str(d), index.blob_record(d)["size"]) for d in digests], [], tag, None, now)
    return digest


def test_unreferenced_blobs_go_after_the_grace_period_only(store):
    index, blobs, _ = store
    kept = blob(index, blobs, b"referenced", 0.0)
    doomed = blob(index, blobs, b"orphaned", 0.0)
    young = blob(index, blobs, b"just uploaded", 950.0)
    manifest(index, [kept], 0.0)
    gc = Collector(index, blobs, GRACE)
    result = gc.sweep(lambda: 1000.0)
    assert (result.files, result.bytes, result.deleted) == (1, len(b"orphaned"), [str(doomed)])
    assert blobs.stat(doomed) is None and index.blob_record(doomed) is None
    assert blobs.stat(kept) is not None and blobs.stat(young) is not None
    assert index.blob_size(REPO, doomed) is None  # its link went with it


def test_dry_run_deletes_nothing(store):
    index, blobs, _ = store
    doomed = blob(index, blobs, b"orphaned", 0.0)
    result = Collector(index, blobs, GRACE).sweep(lambda: 1000.0, dry_run=True)
    assert (result.files, result.bytes) == (1, len(b"orphaned"))
    assert blobs.stat(doomed) is not None and index.blob_record(doomed) is not None


def test_a_touch_or_a_new_reference_between_scan_and_delete_keeps_the_blob(store):
    index, blobs, _ = store
    touched = blob(index, blobs, b"headed", 0.0)
    used = blob(index, blobs, b"used", 0.0)
    gc = Collector(index, blobs, GRACE)
    candidates = dict(gc.blob_candidates(1000.0))
    assert set(candidates) == {str(touched), str(used)}
    assert index.touch_blob(REPO, touched, 990.0)  # a client's HEAD
    manifest(index, [used], 995.0)  # a manifest push
    assert gc.collect_blobs([str(touched), str(used)], 1000.0) == [None, None]
    assert blobs.stat(touched) is not None and blobs.stat(used) is not None


def test_files_no_record_names_go_after_the_grace_period(store):
    index, blobs, _ = store
    old, new = Digest.of(b"crashed before its record"), Digest.of(b"being committed")
    blobs.put_bytes(old, b"crashed before its record")
    blobs.put_bytes(new, b"being committed")
    os.utime(blobs.path(old), (500.0, 500.0))
    os.utime(blobs.path(new), (990.0, 990.0))
    result = Collector(index, blobs, GRACE).sweep(lambda: 1000.0)
    assert result.deleted == [str(old)]
    assert blobs.stat(old) is None and blobs.stat(new) is not None


def test_stale_links_go_and_an_empty_repository_leaves_the_catalog(store):
    index, blobs, _ = store
    shared = blob(index, blobs, b"shared", 0.0)
    index.mount_blob(OTHER, shared, [REPO], 0.0)
    digest = manifest(index, [shared], 0.0)
    assert index.list_repos("", None, 10)[0] == [REPO, OTHER]
    result = Collector(index, blobs, GRACE).sweep(lambda: 1000.0)
    assert result.links == 1 and result.files == 0  # OTHER never used it; REPO does
    assert index.list_repos("", None, 10)[0] == [REPO]
    index.delete_manifest(REPO, digest)
    result = Collector(index, blobs, GRACE).sweep(lambda: 2000.0)
    assert result.files == 1 and index.list_repos("", None, 10)[0] == []


def test_untagged_manifests_expire_only_when_asked(store):
    index, blobs, _ = store
    layer = blob(index, blobs, b"layer", 0.0)
    untagged = manifest(index, [layer], 0.0, tag=None, seed=b"untagged")
    manifest(index, [layer], 0.0, tag="v1", seed=b"tagged")
    assert Collector(index, blobs, GRACE).untagged_candidates(10_000.0) == []
    gc = Collector(index, blobs, GRACE, untagged_after=1000.0)
    assert gc.untagged_candidates(500.0) == []
    assert gc.untagged_candidates(10_000.0) == [(REPO, str(untagged))]
    expired = []
    result = gc.sweep(lambda: 10_000.0, expire=lambda name, d: expired.append(d) or True)
    assert expired == [str(untagged)] and result.manifests == 1


def test_one_sweep_at_a_time(store):
    _, _, data_dir = store
    first, second = SweepLock(data_dir), SweepLock(data_dir)
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


class Spy:
    """The index, with the size of every batch its collect_* methods were given (one write transaction each)."""

    def __init__(self, index) -> None:
        self.index = index
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name):
        found = getattr(self.index, name)
        if not name.startswith(("collect_", "without_records")):
            return found

        def call(keys, *args):
            self.calls.append((name, len(keys)))
            return found(keys, *args)
        return call


def test_a_sweep_of_many_candidates_collects_them_all_a_batch_per_transaction(store, tmp_path):
    index, blobs, _ = store
    doomed = [blob(index, blobs, b"orphan %d" % i, 0.0, name=f"{A}/r{i % 3}") for i in range(40)]
    kept = blob(index, blobs, b"referenced", 0.0)
    manifest(index, [kept], 0.0)
    for i in range(5):  # files a crash left without their record
        blobs.put_bytes(Digest.of(b"file %d" % i), b"file %d" % i)
        os.utime(blobs.path(Digest.of(b"file %d" % i)), (1.0, 1.0))
    spy = Spy(index)
    result = Collector(spy, blobs, GRACE, batch=16).sweep(lambda: 1000.0)
    assert sorted(result.deleted) == sorted([str(d) for d in doomed] + [str(Digest.of(b"file %d" % i))
                                                                       for i in range(5)])
    assert (result.files, result.kept) == (45, 0)
    # each batch of blobs: their records (one transaction), then their bytes (another). The links
    # of the collected blobs went with them; each part is scanned when its turn comes, so they
    # are no candidates (all scanned first, they were: three batches re-checked them for nothing)
    assert spy.calls == [("collect_blobs", 16), ("without_records", 16), ("collect_blobs", 16),
                         ("without_records", 16), ("collect_blobs", 8), ("without_records", 8),
                         ("without_records", 5)]
    assert result.batches == 4 and result.links == 0
    assert all(blobs.stat(d) is None and index.blob_record(d) is None for d in doomed)
    assert index.list_repos("", None, 10)[0] == [REPO]  # the emptied repositories left
    assert blobs.stat(kept) is not None


def test_a_failing_delete_leaves_files_without_records_never_records_without_files(store):
    # as a crash between the collector's two transactions would: the next sweep deletes the files
    index, blobs, _ = store
    digests = [blob(index, blobs, b"orphan %d" % i, 0.0) for i in range(4)]
    deleted = []

    class Failing:
        def __getattr__(self, name):
            return getattr(blobs, name)

        def delete(self, digest):
            if len(deleted) == 2:
                raise OSError("disk error")
            blobs.delete(digest)
            deleted.append(digest)

    with pytest.raises(OSError):
        Collector(index, Failing(), GRACE).collect_blobs([str(d) for d in digests], 1000.0)
    assert len(deleted) == 2
    for d in digests:
        assert index.blob_record(d) is None
        assert (blobs.stat(d) is None) == (d in deleted)
    for d in digests[2:]:  # uploaded long ago (the test's clock is not the files')
        os.utime(blobs.path(d), (1.0, 1.0))
    assert Collector(index, blobs, GRACE).sweep(lambda: 1000.0).files == 2  # the next sweep finishes
    assert all(blobs.stat(d) is None for d in digests)
