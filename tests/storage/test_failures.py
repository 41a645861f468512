"""Which storage failures a client is told about, and how (izreg.storage.failures)."""

from __future__ import annotations

import errno

import lmdb
import pytest

from izreg.core.errors import ErrorCode
from izreg.storage.failures import storage_error


@pytest.mark.parametrize(
    "error, status",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 507),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 507),
        (lmdb.MapFullError("mdb_put", 0), 507),
        (lmdb.DiskError("mdb_txn_commit", 0), 507),
        (OSError(errno.EIO, "Input/output error"), 503),
        (OSError(errno.EROFS, "Read-only file system"), 503),
        (lmdb.PanicError("mdb_txn_begin", 0), 503),
        # LMDB's own EIO (a short write of its pages: a full tmpfs did it) is a plain lmdb.Error, as py-lmdb
        # raises it: a manifest PUT answered 500 on a disk filled by pushes
        (lmdb.Error("mdb_txn_commit: Input/output error"), 503),
        (lmdb.Error("mdb_txn_commit: No space left on device"), 507),
    ],
)
def test_storage_failures_are_told(error, status):
    told = storage_error(error)
    assert told is not None and told.code.status == status
    assert told.code in (ErrorCode.INSUFFICIENT_STORAGE, ErrorCode.UNAVAILABLE)
    if status == 507:
        assert "out of storage space" in told.message


@pytest.mark.parametrize("error", [ValueError("x"), KeyError("y"), OSError(errno.ENOENT, "gone"),
                                   lmdb.Error("mdb_get: Invalid argument")])
def test_other_failures_are_not_storage_failures(error):
    assert storage_error(error) is None
