# -*- test-case-name: tests.test_ops_cli -*-
"""
``izreg backup DIR`` and ``izreg restore DIR``: a consistent copy of a data
directory, taken while the server runs.

1. The index, by LMDB's own copy (C{Environment.copy(compact=True)}): one
   read transaction, so it is a snapshot of one moment, whatever writes go on.
2. Then every blob that snapshot names (its ``blobs`` database), copied
   from the blob files and checked against its digest on the way. A blob is
   on disk before the index names it (see docs/design.rst), so every blob of
   the snapshot is there; blobs pushed later are not needed by it.
3. ``webhook.key`` (it decrypts the webhook secrets in the index) and
   ``token.key`` (issued tokens stay valid): keep the backup as private as
   the data dir; and ``izreg-backup.json`` last, which
   marks the backup complete.

Upload sessions are not backed up: their records are dropped on restore
(clients start those uploads again). Restore goes into an empty data
directory only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import lmdb

from izreg.core.digest import Digest
from izreg.storage import schema
from izreg.storage.blobs import BlobStore, fsync_dir
from izreg.storage.lmdbenv import handle, index_path, open_dbs, open_env
from izreg.storage.webhooks import KEY_FILE

#: secrets kept beside the index: the webhook secrets' key, and the token signing key
#: (izreg.auth.tokenkey.KEY_FILE; named here, as storage sits below auth)
PRIVATE_FILES = (KEY_FILE, "token.key")
MARKER = "izreg-backup.json"
FORMAT = 1
CHUNK = 1024 * 1024


class BackupError(Exception):
    """One line for the user."""


@dataclass(frozen=True)
class Summary:
    blobs: int
    bytes: int
    index_bytes: int


def _empty_dir(path: str, what: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise BackupError(f"{what} {path} must be an empty directory or not exist")
    os.makedirs(path, mode=0o700, exist_ok=True)


def _snapshot_blobs(index_dir: str) -> list[tuple[Digest, int]]:
    env = lmdb.open(index_dir, readonly=True, lock=False, max_dbs=schema.MAX_DBS, subdir=True)
    try:
        open_dbs(env, (schema.BLOBS,), write=False)
        with env.begin() as txn:
            db = handle(env, schema.BLOBS)
            return [(Digest.parse(k.decode()), json.loads(v)["size"]) for k, v in txn.cursor(db=db)]
    finally:
        env.close()


def _copy_blob(source: BlobStore, target: BlobStore, digest: Digest, size: int) -> None:
    """Copy one blob file, hashing it; a missing or changed blob is an error."""
    f = source.open(digest)
    if f is None:
        raise BackupError(f"blob {digest} is named by the index but its file is gone (deleted by a GC meanwhile?); "
                          "take the backup again")
    final = target.path(digest)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    temp = f"{final}.{uuid.uuid4().hex}.tmp"  # skipped by BlobStore.digests()
    hasher = hashlib.new(digest.algorithm)
    copied = 0
    try:
        with f, open(temp, "wb") as out:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                copied += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if hasher.hexdigest() != digest.hex or copied != size:
            raise BackupError(f"blob {digest} does not match its digest or size ({copied} bytes): "
                              "the data dir is damaged; run izreg fsck")
        target.ingest(temp, digest)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _copy_blobs(source_root: str, target_root: str, blobs: list[tuple[Digest, int]],
                progress: Callable[[int, int], None] | None) -> int:
    source, target = BlobStore(source_root), BlobStore(target_root)
    total = 0
    for n, (digest, size) in enumerate(blobs, 1):
        _copy_blob(source, target, digest, size)
        total += size
        if progress is not None:
            progress(n, len(blobs))
    return total


def _copy_private(source: str, target: str) -> None:
    if os.path.exists(source):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(source, "rb") as f, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())


def backup(data_dir: str, target: str, map_size: int, now: Callable[[], float] = time.time,
           progress: Callable[[int, int], None] | None = None, index_only: bool = False) -> Summary:
    """
    Copy C{data_dir} (a server may be running on it) into the empty directory
    C{target}; C{map_size} is the server's C{storage.lmdb_map_size}.
    C{index_only}: the blobs live elsewhere (``[storage] backend = "s3"``:
    back the bucket up with its own tools, e.g. versioning).
    """
    if not os.path.isdir(index_path(data_dir)):
        raise BackupError(f"no izreg data in {data_dir!r}")
    _empty_dir(target, "the backup directory")
    os.makedirs(index_path(target), mode=0o700)
    env = open_env(data_dir, map_size)
    try:
        env.copy(index_path(target), compact=True)
    finally:
        env.close()
    blobs = [] if index_only else _snapshot_blobs(index_path(target))
    total = _copy_blobs(data_dir, target, blobs, progress)
    for name in PRIVATE_FILES:
        _copy_private(os.path.join(data_dir, name), os.path.join(target, name))
    index_bytes = os.path.getsize(os.path.join(index_path(target), "data.mdb"))
    summary = Summary(len(blobs), total, index_bytes)
    marker = {"format": FORMAT, "created": now(), "schema_version": schema.SCHEMA_VERSION,
              "blobs": summary.blobs, "bytes": summary.bytes, "index_only": index_only}
    with open(os.path.join(target, MARKER), "w", encoding="utf-8") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(target)
    return summary


def restore(source: str, data_dir: str, map_size: int, progress: Callable[[int, int], None] | None = None) -> Summary:
    """Put the backup C{source} into the empty (or new) data directory C{data_dir}."""
    try:
        with open(os.path.join(source, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        raise BackupError(f"{source} is not a complete izreg backup (no readable {MARKER})") from None
    if marker.get("format") != FORMAT:
        raise BackupError(f"{source} has backup format {marker.get('format')!r}; this izreg reads {FORMAT}")
    _empty_dir(data_dir, "the data directory to restore into")
    os.makedirs(index_path(data_dir), mode=0o700)
    data_file = os.path.join(index_path(data_dir), "data.mdb")
    _copy_private(os.path.join(index_path(source), "data.mdb"), data_file)
    blobs = [] if marker.get("index_only") else _snapshot_blobs(index_path(data_dir))
    total = _copy_blobs(source, data_dir, blobs, progress)
    for name in PRIVATE_FILES:
        _copy_private(os.path.join(source, name), os.path.join(data_dir, name))
    env = open_env(data_dir, map_size)  # checks (and upgrades) the schema
    try:
        with env.begin(write=True) as txn:
            txn.drop(handle(env, schema.UPLOADS), delete=False)  # sessions have no bytes here
    finally:
        env.close()
    return Summary(len(blobs), total, os.path.getsize(data_file))
