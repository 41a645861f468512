# -*- test-case-name: tests.storage.test_failures -*-
"""
Storage failures a client can be told about: a full disk, a full LMDB map,
an I/O error, the shared database or the S3 bucket out of reach. L{storage_error} turns one into a L{RegistryError} (507 when
out of space, 503 for other disk errors) with a message saying so, so the
HTTP layer answers it without a traceback; nothing else is a storage failure.
"""

from __future__ import annotations

import errno
import os
import sys

import lmdb

from izreg.core.errors import ErrorCode, RegistryError
from izreg.storage.interfaces import StorageBusy, StorageError

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK = (errno.EIO, errno.EROFS, errno.ENXIO)


def out_of_space(detail: str = "the data directory's file system is full") -> RegistryError:
    return RegistryError(
        ErrorCode.INSUFFICIENT_STORAGE,
        {"reason": detail},
        "the registry is out of storage space; pushes fail until space is freed (pulls go on)",
    )


def backend_unavailable() -> RegistryError:
    """The blob store (S3) failed or is out of reach: a 503 a client retries after a second."""
    return RegistryError(ErrorCode.UNAVAILABLE, {"reason": "storage backend unavailable"},
                         "the storage backend failed; try again", headers={"Retry-After": "1"})


def _lmdb_errno(error: BaseException) -> int | None:
    """
    The errno of a plain C{lmdb.Error} that is an OS error (py-lmdb has a class for ENOSPC, not for EIO,
    which LMDB also gives for a short write of its pages: a full disk), read back from its text
    (C{"mdb_txn_commit: Input/output error"}), or C{None}.
    """
    if type(error) is not lmdb.Error:
        return None
    text = str(error)
    return next((n for n in (*_OUT_OF_SPACE, *_DISK) if text.endswith(f": {os.strerror(n)}")), None)


def storage_error(error: BaseException) -> RegistryError | None:
    """The client-facing error for a storage failure, or C{None} if C{error} is not one."""
    code = _lmdb_errno(error)
    if code is not None:
        error = OSError(code, str(error))
    if isinstance(error, lmdb.MapFullError):
        return out_of_space("the index is full (raise storage.lmdb_map_size)")
    if isinstance(error, lmdb.DiskError):
        return out_of_space()
    if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
        return out_of_space()
    if isinstance(error, OSError) and error.errno in _DISK or isinstance(error, (lmdb.PanicError, lmdb.CorruptedError)):
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": "storage I/O error"},
                             "the registry cannot write its storage right now; retry later")
    pg = sys.modules.get("izreg.storage.pg")  # loaded only with a shared database (it brings psycopg)
    if pg is not None and isinstance(error, pg.DatabaseTimeout):
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": "database call timed out"},
                             "the registry's database did not answer in time (busy or locked); retry later",
                             headers={"Retry-After": "1"})
    if pg is not None and isinstance(error, pg.DatabaseUnavailable):
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": "database unavailable"},
                             "the registry cannot reach its database right now; retry later",
                             headers={"Retry-After": "1"})
    if isinstance(error, StorageBusy):
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": "storage backend busy"},
                             "the registry's calls to its storage backend are all held up (it answers slowly"
                             " or not at all); retry later", headers={"Retry-After": "1"})
    if isinstance(error, StorageError):
        return backend_unavailable()
    if isinstance(error, lmdb.BadValsizeError):
        # a safety net: every key built from a request is bounded by design (schema.bounded_key)
        return RegistryError(ErrorCode.NAME_INVALID, None, "a name or reference in the request is too long")
    return None
