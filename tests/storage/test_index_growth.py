"""
The LMDB index file does not grow while the collector scans a busy index: LMDB reuses a page
freed by a write only once no reader holds an older snapshot, so the scans read in short
transactions (izreg.storage.lmdbindex.SCAN_CHUNK entries each), not one across the database.
"""

from __future__ import annotations

import pytest

from izreg.core.digest import Digest
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import SCAN_CHUNK, Index

A = "0123456789abcdef0123456789abcdef"
REPO = f"{A}/app"
BLOBS = 16 * SCAN_CHUNK


@pytest.fixture
def index(tmp_path):
    idx = Index(open_env(str(tmp_path), map_size=64 * 1024 * 1024, sync=False))  # throwaway data: no fsync
    yield idx
    idx.close()


def pages(index: Index) -> int:
    """The index file's high-water mark, in pages."""
    return index.env.info()["last_pgno"]


def test_a_scan_among_writes_keeps_the_file_at_its_size(index, monkeypatch):
    digests = [Digest.of(b"%d" % i) for i in range(BLOBS)]
    for d in digests:
        index.commit_blob(REPO, d, 1, 0.0, None)
    # a write (a HEAD's touch: the blob's record and link rewritten) for every entry the scan reads,
    # as a busy registry's pushes go on beside the collector's scan in its thread
    referenced = index.refs.blob_referenced
    writes = iter(digests)

    def busy(txn, digest):
        assert index.touch_blob(REPO, next(writes), 1.0)
        return referenced(txn, digest)

    monkeypatch.setattr(index.refs, "blob_referenced", busy)
    before = pages(index)
    assert len(index.gc_blob_candidates(1000.0)) == BLOBS
    grown = pages(index) - before
    # one read transaction for the whole scan kept every page freed by its 1,024 writes from reuse:
    # the file grew by ~8 pages a write (measured: 8,157 pages); in chunks of 64, by about a chunk's
    # writes, and not at all the next time
    assert grown < BLOBS, f"the index grew by {grown} pages during the scan"
    writes = iter(digests)
    before = pages(index)
    index.gc_blob_candidates(1000.0)
    assert pages(index) - before < 16


def test_the_metrics_totals_count_every_chunk(index):
    # the gauges' scan reads in chunks too (a scrape every few seconds): each entry counted once
    count = 3 * SCAN_CHUNK + 5
    for i in range(count):
        index.commit_blob(REPO, Digest.of(b"%d" % i), i, 0.0, None)
    totals = index.totals()
    assert (totals["blobs"], totals["blob_bytes"]) == (count, count * (count - 1) // 2)
