# -*- test-case-name: tests.storage.test_blobs -*-
"""
Where things live under the data directory (pure).

::

    <data_dir>/
        index/                      LMDB environment (data.mdb, lock.mdb)
        blobs/<alg>/<hex[:2]>/<hex> content-addressed blob files, immutable
        uploads/<upload id>         bytes of an upload session, appended in order
        bootstrap.txt               first account and key (mode 0600), first start only

A blob file appears only by ``os.replace`` of a complete, fsynced upload
file, so a path under ``blobs/`` is either absent or whole.
"""

from __future__ import annotations

import os

from izreg.core.digest import Digest


def blob_path(root: str, digest: Digest) -> str:
    return os.path.join(root, "blobs", digest.algorithm, digest.hex[:2], digest.hex)


def upload_path(root: str, upload_id: str) -> str:
    return os.path.join(root, "uploads", upload_id)


def uploads_dir(root: str) -> str:
    return os.path.join(root, "uploads")
