# -*- test-case-name: tests.storage.test_uploads -*-
"""
Resumable upload sessions on disk.

A session is a file under ``uploads/`` that grows by appends, with a hash
fed as the bytes arrive. Its acknowledged length lives in LMDB; bytes past it
(from a request cut short, or a crash) are cut off when the session is next
used. The running hash is kept in memory only: after a restart it is rebuilt
from the file, in a thread, when the upload is committed.

L{ChunkWriter} is the file-like object Twisted writes a request body into
(see L{izreg.http.bodies}), so an upload body reaches its final file as it
arrives and is written exactly once. L{Uploads} is the filesystem
L{IUploadStore}: a PATCH is durable once its file is fsynced; a commit
verifies the hash, fsyncs, and renames the file into the blob store.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import uuid
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from izreg.storage import paths
from izreg.storage.blobs import fsync_file, hash_file
from izreg.storage.interfaces import DigestMismatch, IBodySink, IUploadStore
from izreg.storage.sink import SinkBase


@dataclass
class UploadSession:
    id: str
    name: str
    path: str
    started: float
    offset: int = 0
    hasher: object | None = field(default_factory=lambda: hashlib.sha256())
    busy: bool = False
    persisted: bool = True

    def record(self, now: float) -> dict:
        return {"name": self.name, "offset": self.offset, "started": self.started, "updated": now}


def run_inline(f, *args, **kwargs) -> defer.Deferred:
    """A runner for tests and tools without threads: call now, wrap the result."""
    return defer.maybeDeferred(f, *args, **kwargs)


@implementer(IUploadStore)
class Uploads:
    """Sessions by id: in memory while in use, in LMDB (via the caller) across restarts."""

    def __init__(self, root: str, blobs=None, run_io=run_inline) -> None:
        self.root = root
        self.blobs = blobs  # where promote() moves a verified upload
        self.run_io = run_io  # fsync and whole-file hashing go through it
        self.sessions: dict[str, UploadSession] = {}
        os.makedirs(paths.uploads_dir(root), exist_ok=True)

    def create(self, name: str, now: float, persisted: bool = True, algorithm: str = "sha256") -> UploadSession:
        upload_id = str(uuid.uuid4())
        path = paths.upload_path(self.root, upload_id)
        session = UploadSession(upload_id, name, path, now, hasher=hashlib.new(algorithm), persisted=persisted)
        # live before its file exists: the start-up orphan sweep (a thread) never takes a new file for an orphan
        self.sessions[upload_id] = session
        try:
            with open(path, "xb"):
                pass
        except BaseException:
            del self.sessions[upload_id]
            raise
        return session

    def get(self, upload_id: str, record: dict | None) -> UploadSession | None:
        """The live session, or one revived from its LMDB C{record} (after a restart)."""
        session = self.sessions.get(upload_id)
        if session is not None:
            return session
        if record is None:
            return None
        path = paths.upload_path(self.root, upload_id)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None
        offset = record["offset"]
        if size < offset:
            return None  # acknowledged bytes are missing: the session is unusable
        if size > offset:
            os.truncate(path, offset)
        session = UploadSession(upload_id, record["name"], path, record["started"], offset, hasher=None)
        self.sessions[upload_id] = session
        return session

    def sink(self, session: UploadSession, limit: int | None = None, expected: int | None = None,
             discard: bool = False) -> "ChunkWriter":
        return ChunkWriter(session, limit, expected, self.remove if discard else None)

    def record(self, session: UploadSession, now: float) -> dict:
        return session.record(now)

    @defer.inlineCallbacks
    def acknowledge(self, sink: "ChunkWriter"):
        yield self.run_io(fsync_file, sink.session.path)
        return sink.session.offset

    @defer.inlineCallbacks
    def seal(self, session: UploadSession, digest):
        hasher = session.hasher
        if hasher is None or hasher.name != digest.algorithm:
            hasher = yield self.run_io(hash_file, session.path, digest.algorithm, session.offset)
        if hasher.hexdigest() != digest.hex:
            raise DigestMismatch(f"{digest.algorithm}:{hasher.hexdigest()}")
        yield self.run_io(fsync_file, session.path)

    def promote(self, session: UploadSession, digest) -> None:
        self.blobs.ingest(session.path, digest)

    def forget(self, session: UploadSession) -> None:
        self.sessions.pop(session.id, None)

    def remove(self, session: UploadSession) -> None:
        self.forget(session)
        self.expire(session.id, None)

    def expire(self, upload_id: str, record: dict | None) -> None:
        try:
            os.unlink(paths.upload_path(self.root, upload_id))
        except FileNotFoundError:
            pass

    def orphans(self, known: set[str]) -> list[str]:
        """Ids of files under uploads/ with no live session and no LMDB record."""
        return [name for name in os.listdir(paths.uploads_dir(self.root))
                if name not in known and name not in self.sessions]


#: how much of a body to gather before one write and hash update
WRITE_SIZE = 1024 * 1024

#: idle gathering buffers kept for the next bodies (each WRITE_SIZE): a new
#: one's pages are faulted in as it fills, a reused one's are there already
_SPARE: list[mmap.mmap] = []
_SPARE_MAX = 8


def _new_buffer() -> mmap.mmap:
    """
    A gathering buffer of L{WRITE_SIZE} bytes whose memory is taken a page at a
    time as bytes arrive (an anonymous mapping): a body that has sent one byte
    holds a page, not a MiB (a C{bytearray} is zeroed whole at once, so a
    thousand bodies of a byte each held a GiB).
    """
    return mmap.mmap(-1, WRITE_SIZE)


def _write_all(fd: int, view: memoryview) -> None:
    """Write all of C{view} (short writes resumed)."""
    while view:
        view = view[os.write(fd, view):]


@implementer(IBodySink)
class ChunkWriter(SinkBase):
    """
    Appends one request body to a session, hashing as it goes.

    It is the request's C{content}: Twisted calls C{write} per chunk, then
    C{tell}/C{seek} when the body is complete, and C{close} when the request
    ends. The handler calls L{done} to keep the bytes or L{abort} to drop them.

    The chunks are copied into one buffer of L{WRITE_SIZE} bytes (the same
    buffer for the whole body, then the next body's), written and hashed
    with one call each when it is full: C{write} never keeps the caller's
    object, so the chunked decoder can hand it views of its reads. Keeping
    the chunks themselves until the write (a list per MiB) held every read
    and chunk for a while: the allocator returned their memory to the
    kernel at each write and faulted it in again for the next reads.
    """

    def __init__(
        self,
        session: UploadSession,
        limit: int | None = None,
        expected: int | None = None,
        discard: Callable[[UploadSession], None] | None = None,
    ) -> None:
        super().__init__(session, limit, expected)
        self._discard = discard
        self._fd = os.open(session.path, os.O_WRONLY)
        os.ftruncate(self._fd, self.start)
        os.lseek(self._fd, self.start, os.SEEK_SET)
        self._buffer: mmap.mmap | None = None  # taken at the first write
        self._buffered = 0

    def write(self, data) -> None:
        """Append C{data} (bytes-like; copied, not kept)."""
        if self._fd is None or not self._accept(data):
            return
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = _SPARE.pop() if _SPARE else _new_buffer()
        n, used = len(data), self._buffered
        if used + n < WRITE_SIZE:
            buffer[used:used + n] = data  # same length: a copy in place
            self._buffered = used + n
            return
        view, pos = memoryview(data), 0
        try:
            while pos < n:
                take = min(n - pos, WRITE_SIZE - self._buffered)
                buffer[self._buffered:self._buffered + take] = view[pos:pos + take]
                self._buffered += take
                pos += take
                if self._buffered == WRITE_SIZE:
                    self._flush()
        except OSError as e:  # a full disk: this body is dropped, the session stays as acknowledged
            self._fail(e)
        finally:
            view.release()

    def _fail(self, error: OSError, tell: bool = True) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super()._fail(error, tell)

    def rollback(self) -> None:
        super().rollback()
        try:
            os.truncate(self.session.path, self.start)
        except OSError:
            pass  # the next writer truncates to the acknowledged offset anyway

    def _flush(self) -> None:
        if not self._buffered or self._fd is None:
            return
        with memoryview(self._buffer) as whole, whole[:self._buffered] as view:
            self._buffered = 0
            _write_all(self._fd, view)
            hasher = self.session.hasher
            if hasher is not None:
                hasher.update(view)

    def _let_go(self) -> None:
        """The body is over: its buffer goes back to the spares (or to the allocator)."""
        buffer, self._buffer, self._buffered = self._buffer, None, 0
        if buffer is not None and len(_SPARE) < _SPARE_MAX:
            _SPARE.append(buffer)

    def close(self) -> None:
        super().close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._let_go()

    def done(self, keep_busy: bool = False) -> int:
        """
        Keep the bytes; return the session's new offset. Call this before any
        asynchronous work on the session, so a client that goes away then
        cannot truncate what is being committed.
        """
        if self.error is not None:
            raise self.error
        try:
            self._flush()
        except OSError as e:
            self._fail(e, tell=False)  # the caller answers it
            raise
        self._let_go()
        return self._keep(keep_busy)

    def abort(self) -> None:
        """Drop this body's bytes (the request failed or the client went away)."""
        if self._finished:
            return
        self._finished = True
        self._let_go()
        if self._discard is not None:
            self._discard(self.session)  # a one-request session: nothing to keep
            return
        try:
            os.truncate(self.session.path, self.start)
        except FileNotFoundError:
            pass
        self._restore()
