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

import errno
import hashlib
import mmap
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure
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
    writer: object | None = None  # the body sink whose writes may still be in flight (L{ChunkWriter.drained})

    def record(self, now: float) -> dict:
        return {"name": self.name, "offset": self.offset, "started": self.started, "updated": now}


def run_inline(f, *args, **kwargs) -> defer.Deferred:
    """A runner for tests and tools without threads: call now, wrap the result."""
    return defer.maybeDeferred(f, *args, **kwargs)


@implementer(IUploadStore)
class Uploads:
    """Sessions by id: in memory while in use, in LMDB (via the caller) across restarts."""

    def __init__(self, root: str, blobs=None, run_io=run_inline, direct: bool = True) -> None:
        self.root = root
        self.direct = direct  # full aligned buffers written with O_DIRECT (L{ChunkWriter})
        self.blobs = blobs  # where promote() moves a verified upload
        self.run_io = run_io  # body writes and hashing (ChunkWriter), fsync and whole-file hashing go through it
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
        return ChunkWriter(session, limit, expected, self.remove if discard else None, self.run_io, self.direct)

    def record(self, session: UploadSession, now: float) -> dict:
        return session.record(now)

    @defer.inlineCallbacks
    def acknowledge(self, sink: "ChunkWriter"):
        yield sink.drained()  # the body's last buffers may still be in a worker thread
        yield self.run_io(fsync_file, sink.session.path)
        return sink.session.offset

    @defer.inlineCallbacks
    def seal(self, session: UploadSession, digest):
        if session.writer is not None:
            yield session.writer.drained()  # every byte written and hashed before the hash is read
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


#: O_DIRECT's alignment (file offset, length, memory): a page, a multiple of any disk's logical block
ALIGN = 4096


def _write_all(fd: int, view: memoryview, position: int) -> None:
    """Write all of C{view} at C{position} (short writes resumed)."""
    while view:
        n = os.pwrite(fd, view, position)
        view, position = view[n:], position + n


def _open_direct(path: str) -> int | None:
    """A second descriptor on C{path} that bypasses the page cache, or C{None} where the file system refuses it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except (OSError, AttributeError):
        return None


def _write_and_hash(fd: int, direct: int | None, position: int, buffer: mmap.mmap, length: int, hasher) -> None:
    """
    A worker thread's part of a body: write the first C{length} bytes of
    C{buffer} at C{position}, then feed them to C{hasher}. Both release the
    GIL for a buffer this large, so the reactor reads the next MiB meanwhile.

    An aligned buffer goes through C{direct} (O_DIRECT): from the buffer to
    the disk, with no copy into the page cache, which on this kind of VM is
    the dearest part of a write (new page-cache pages are faulted in from the
    host: 3-10x the CPU, docs/benchmark.md), and the fsync before the 201
    finds the bytes already written. The rest (a body's unaligned first and
    last pieces) goes through C{fd}. Durability still comes from that fsync.
    """
    with memoryview(buffer) as whole, whole[:length] as view:
        done = 0
        if direct is not None and position % ALIGN == 0 and length % ALIGN == 0:
            try:
                done = os.pwrite(direct, view, position)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: the file system takes no direct write after all
                    raise
        with view[done:] as rest:
            _write_all(fd, rest, position + done)
        if hasher is not None:
            hasher.update(view)


@implementer(IBodySink)
class ChunkWriter(SinkBase):
    """
    Appends one request body to a session, hashing as it goes.

    It is the request's C{content}: Twisted calls C{write} per chunk, then
    C{tell}/C{seek} when the body is complete, and C{close} when the request
    ends. The handler calls L{done} to keep the bytes or L{abort} to drop them,
    and the store waits for L{drained} before it fsyncs or checks the digest.

    The chunks are copied into a buffer of L{WRITE_SIZE} bytes: C{write} never
    keeps the caller's object, so the chunked decoder can hand it views of its
    reads. A full buffer is written and hashed by C{run} (a worker thread in
    the server: L{Uploads.run_io}) while the reactor fills the next one, one
    write in flight per body so the file grows in order. When a second buffer
    is full before the first is written, the connection is paused (L{throttle})
    until it is: a body holds two buffers, plus what was already read.

    Everything that touches the file after the body (truncating an aborted or
    failed body, closing the descriptor, freeing the session for the next
    request) waits until no write is in flight: a late write never lands after
    a truncate, nor on a reused descriptor.
    """

    def __init__(
        self,
        session: UploadSession,
        limit: int | None = None,
        expected: int | None = None,
        discard: Callable[[UploadSession], None] | None = None,
        run: Callable[..., defer.Deferred] = run_inline,
        direct: bool = True,
    ) -> None:
        super().__init__(session, limit, expected)
        self._discard = discard
        self._run = run
        self._fd = os.open(session.path, os.O_WRONLY)
        os.ftruncate(self._fd, self.start)
        self._direct = _open_direct(session.path) if direct else None
        self._shipped = self.start  # where the next buffer goes in the file
        # the first buffer ends on an aligned offset, so the next ones can be written direct
        self._capacity = WRITE_SIZE - self.start % ALIGN
        self._buffer: mmap.mmap | None = None  # taken at the first write
        self._buffered = 0
        self._queue: deque[tuple[mmap.mmap, int]] = deque()  # full buffers waiting for the one in flight
        self._writing = False  # a buffer is being written and hashed (invariant: a queue implies it)
        self._idle: list[Callable[[], None]] = []  # run, in order, once nothing is in flight
        self._producer = None
        self._paused = False
        session.writer = self

    # -- the request's content ----------------------------------------------------------

    def throttle(self, producer) -> None:
        self._producer = producer

    def write(self, data) -> None:
        """Append C{data} (bytes-like; copied, not kept)."""
        if self._fd is None or not self._accept(data):
            return
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = _take_buffer()
        n, used = len(data), self._buffered
        if used + n < self._capacity:
            buffer[used:used + n] = data  # same length: a copy in place
            self._buffered = used + n
            return
        with memoryview(data) as view:
            pos = 0
            while pos < n and self._buffer is not None:
                take = min(n - pos, self._capacity - self._buffered)
                self._buffer[self._buffered:self._buffered + take] = view[pos:pos + take]
                self._buffered += take
                pos += take
                if self._buffered == self._capacity:
                    self._ship()
                    if pos < n and self._fd is not None:
                        self._buffer = _take_buffer()

    def _ship(self, last: bool = False) -> None:
        """The gathering buffer is full (or the body is over): queue it for the worker."""
        buffer, length = self._buffer, self._buffered
        self._buffer, self._buffered, self._capacity = None, 0, WRITE_SIZE
        self._queue.append((buffer, length))
        self._pump()
        if self._queue and not last:
            self._pause()  # one buffer in flight, another full: stop reading until the first is written

    def _pump(self) -> None:
        """Start the next write, unless one is in flight (one at a time: the file grows in order)."""
        if self._writing or not self._queue:
            return
        buffer, length = self._queue.popleft()
        self._writing = True
        position, self._shipped = self._shipped, self._shipped + length
        d = self._run(_write_and_hash, self._fd, self._direct, position, buffer, length, self.session.hasher)
        d.addBoth(self._written, buffer)

    def _written(self, result, buffer: mmap.mmap) -> None:
        self._writing = False
        _give_back(buffer)
        if isinstance(result, Failure):
            self._stop(result.value)
        else:
            self._pump()
        if not self._queue:
            self._resume()
        if not self._writing:
            idle, self._idle = self._idle, []
            for f in idle:
                f()

    def _stop(self, error: BaseException) -> None:
        """A write failed (a full disk): nothing more is written; the body is dropped or its caller told."""
        if not isinstance(error, OSError):
            error = OSError(errno.EIO, f"writing an upload failed: {error!r}")
        for queued, _ in self._queue:
            _give_back(queued)
        self._queue.clear()
        if self._finished:  # after done(): L{drained} fails, the caller rolls back (or the idle job below)
            self.error = self.error or error
            return
        self._fail(error)  # mid-body: answered at once (507), the session stays as acknowledged

    def _when_idle(self, f: Callable[[], None]) -> None:
        if self._writing:
            self._idle.append(f)
        else:
            f()

    def drained(self) -> defer.Deferred:
        """Fires once every byte given so far is written and hashed; fails with the error that stopped it."""
        d = defer.Deferred()

        def fire() -> None:
            if self.error is not None:
                d.errback(self.error)
            else:
                d.callback(None)

        self._when_idle(fire)
        return d

    def _pause(self) -> None:
        if self._producer is not None and not self._finished:
            self._paused = True
            self._producer.pauseProducing()  # again if someone resumed it meanwhile: cheap

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._producer.resumeProducing()

    # -- the end of the body ------------------------------------------------------------

    def _fail(self, error: OSError, tell: bool = True) -> None:
        self._when_idle(self._close_fd)
        super()._fail(error, tell)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        if self.session.writer is self:
            self.session.writer = None

    def rollback(self) -> None:
        super().rollback()
        self._when_idle(self._cut)

    def _cut(self) -> None:
        try:
            os.truncate(self.session.path, self.start)
        except OSError:
            pass  # the next writer truncates to the acknowledged offset anyway

    def _let_go(self) -> None:
        """The body is over: its gathering buffer goes back to the spares (or to the allocator)."""
        buffer, self._buffer, self._buffered = self._buffer, None, 0
        if buffer is not None:
            _give_back(buffer)

    def close(self) -> None:
        super().close()
        self._let_go()
        self._when_idle(self._close_fd)

    def done(self, keep_busy: bool = False) -> int:
        """
        Keep the bytes; return the session's new offset. Call this before any
        asynchronous work on the session, so a client that goes away then
        cannot truncate what is being committed. The last bytes may still be
        on their way to the file: L{Uploads.acknowledge} and L{Uploads.seal}
        wait for them (L{drained}). The session stays busy until they are
        written (with C{keep_busy}, until the caller frees it).
        """
        if self.error is not None:
            raise self.error
        if self._buffered and self._fd is not None:
            self._ship(last=True)
        self._let_go()
        offset = self._keep(True)
        if not keep_busy:
            self._when_idle(self._settle)
        return offset

    def _settle(self) -> None:
        """After C{done(keep_busy=False)}, once written: the session is free (rolled back if a write failed)."""
        if self.error is not None:
            self.rollback()
        self.session.busy = False

    def abort(self) -> None:
        """Drop this body's bytes (the request failed or the client went away)."""
        if self._finished:
            return
        self._finished = True
        for queued, _ in self._queue:
            _give_back(queued)
        self._queue.clear()
        self._let_go()
        self._resume()
        self._when_idle(self._drop)  # a write in flight finishes before the file is cut

    def _drop(self) -> None:
        if self._discard is not None:
            self._discard(self.session)  # a one-request session: nothing to keep
            return
        try:
            os.truncate(self.session.path, self.start)
        except FileNotFoundError:
            pass
        self._restore()


def _take_buffer() -> mmap.mmap:
    return _SPARE.pop() if _SPARE else _new_buffer()


def _give_back(buffer: mmap.mmap) -> None:
    if len(_SPARE) < _SPARE_MAX:
        _SPARE.append(buffer)
