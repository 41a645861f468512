# -*- test-case-name: tests.storage.test_blobs -*-
"""
Content-addressed blob files: the filesystem L{IBlobStore}.

Every method here may block on the disk: the service runs them in a thread,
never on the reactor (except the cheap L{BlobStore.open}).
"""

from __future__ import annotations

import os
import uuid

from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.storage import paths, readers
from izreg.storage.interfaces import IBlobStore

HASH_CHUNK = 1024 * 1024


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: str, data: bytes, tmp: str | None = None) -> None:
    """
    Replace the file at C{path} with C{data}, readable by its owner only (0600 from the start), whole or not
    at all: written to C{tmp} (C{<path>.tmp} by default; a stale one, or a symbolic link someone put there, is
    removed first, never written through), synced, renamed over C{path}, the directory synced. On any error
    (a full disk) C{path} is as it was and C{tmp} is gone.
    """
    tmp = f"{path}.tmp" if tmp is None else tmp
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:  # every byte or an error (os.write may write part: a full disk)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: str, algorithm: str, length: int | None = None):
    """A hashlib object fed with the first C{length} bytes (all by default) of C{path}."""
    import hashlib

    hasher = hashlib.new(algorithm)
    remaining = length
    with open(path, "rb", buffering=0) as f:
        while remaining is None or remaining > 0:
            chunk = f.read(HASH_CHUNK if remaining is None else min(HASH_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return hasher


@implementer(IBlobStore)
class BlobStore:
    """Immutable blob files under C{root}/blobs."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)

    def path(self, digest: Digest) -> str:
        return paths.blob_path(self.root, digest)

    def size(self, digest: Digest) -> int | None:
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def stat(self, digest: Digest) -> tuple[int, float] | None:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime

    def open(self, digest: Digest) -> readers.FileReader | None:
        """An unbuffered reader with C{sendfile} (L{readers.FileReader}), or C{None} if the file is gone."""
        return readers.open_file(self.path(digest))

    def redirect_url(self, digest: Digest, filename: str | None = None) -> None:
        return None

    def hash(self, digest: Digest, algorithm: str) -> str:
        return hash_file(self.path(digest), algorithm).hexdigest()

    def ingest(self, source: str, digest: Digest) -> None:
        """
        Move a complete, already fsynced file into place as C{digest}.

        If the blob exists (identical content, by its address) the source is
        simply removed: blobs are stored once.
        """
        target = self.path(digest)
        parent = os.path.dirname(target)
        if os.path.exists(target):
            os.unlink(source)
            return
        os.makedirs(parent, exist_ok=True)
        os.replace(source, target)
        fsync_dir(parent)

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Write a small blob whose digest the caller has checked (temp, fsync, rename)."""
        target = self.path(digest)
        if os.path.exists(target):
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temp = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.ingest(temp, digest)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def delete(self, digest: Digest) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def digests(self):
        """Every blob on disk (for rebuilds and fsck)."""
        base = os.path.join(self.root, "blobs")
        for algorithm in sorted(os.listdir(base)):
            if algorithm.startswith("."):  # a write probe's file (izreg.storage.capacity) a crash left
                continue
            for fan in sorted(os.listdir(os.path.join(base, algorithm))):
                for name in sorted(os.listdir(os.path.join(base, algorithm, fan))):
                    if not name.endswith(".tmp"):
                        yield Digest(algorithm, name)
