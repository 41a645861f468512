"""LatestBatch: the latest time per key, written in one go; kept when the write fails."""

from __future__ import annotations

import pytest

from izreg.storage.batch import LatestBatch


def test_latest_time_per_key_and_one_write():
    writes = []
    batch = LatestBatch(lambda b: (writes.append(dict(b)), len(b))[1])
    assert batch.flush() == 0 and writes == []  # nothing pending: no write at all
    batch.put("a", 2.0)
    batch.put("a", 1.0)  # older: ignored
    batch.put("b", 3.0)
    assert batch.get("a") == 2.0 and batch.pending == 2
    assert batch.flush() == 2
    assert writes == [{"a": 2.0, "b": 3.0}] and batch.pending == 0 and batch.get("a") is None


def test_a_failed_write_keeps_the_batch_and_newer_times_win():
    fail = [True]

    def write(b):
        if fail[0]:
            batch.put("a", 5.0)  # recorded while the write runs
            raise OSError("disk full")
        return len(b)

    batch = LatestBatch(write)
    batch.put("a", 1.0)
    batch.put("b", 1.0)
    with pytest.raises(OSError):
        batch.flush()
    assert batch.get("a") == 5.0 and batch.get("b") == 1.0
    fail[0] = False
    assert batch.flush() == 2
