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
arrives and is written exactly once.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from typing import Callable

from izreg.storage import paths


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


class Uploads:
    """Sessions by id: in memory while in use, in LMDB (via the caller) across restarts."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sessions: dict[str, UploadSession] = {}
        os.makedirs(paths.uploads_dir(root), exist_ok=True)

    def create(self, name: str, now: float, persisted: bool = True, algorithm: str = "sha256") -> UploadSession:
        upload_id = str(uuid.uuid4())
        path = paths.upload_path(self.root, upload_id)
        with open(path, "xb"):
            pass
        session = UploadSession(upload_id, name, path, now, hasher=hashlib.new(algorithm), persisted=persisted)
        self.sessions[upload_id] = session
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

    def forget(self, session: UploadSession) -> None:
        self.sessions.pop(session.id, None)

    def remove(self, session: UploadSession) -> None:
        self.forget(session)
        try:
            os.unlink(session.path)
        except FileNotFoundError:
            pass

    def orphans(self, known: set[str]) -> list[str]:
        """Files under uploads/ with no live session and no LMDB record."""
        return [
            os.path.join(paths.uploads_dir(self.root), name)
            for name in os.listdir(paths.uploads_dir(self.root))
            if name not in known and name not in self.sessions
        ]


#: how much of a body to gather before one write and hash update
WRITE_SIZE = 1024 * 1024


class ChunkWriter:
    """
    Appends one request body to a session, hashing as it goes.

    It is the request's C{content}: Twisted calls C{write} per chunk, then
    C{tell}/C{seek} when the body is complete, and C{close} when the request
    ends. The handler calls L{done} to keep the bytes or L{abort} to drop them.
    """

    def __init__(
        self,
        session: UploadSession,
        limit: int | None = None,
        expected: int | None = None,
        discard: Callable[[UploadSession], None] | None = None,
    ) -> None:
        self.session = session
        self.expected = expected
        self._discard = discard
        self.start = session.offset
        self.written = 0
        self.limit = limit
        self.overflow = False
        self._hasher_before = session.hasher.copy() if session.hasher is not None else None
        session.busy = True
        self._fd = os.open(session.path, os.O_WRONLY)
        os.ftruncate(self._fd, self.start)
        os.lseek(self._fd, self.start, os.SEEK_SET)
        self._finished = False
        self._buffer = bytearray()
        #: the OSError that stopped this body (a full disk), and who to tell (the HTTP layer answers it)
        self.error: OSError | None = None
        self.on_error: Callable[[OSError], None] | None = None

    def write(self, data: bytes) -> None:
        if self._fd is None or self.overflow or self._finished:
            return
        if self.limit is not None and self.written + len(data) > self.limit:
            self.overflow = True
            return
        # Bodies arrive in chunks of a few KiB; one write and one hash update
        # per WRITE_SIZE instead of per chunk costs far less Python time.
        self._buffer += data
        self.written += len(data)
        if len(self._buffer) >= WRITE_SIZE:
            try:
                self._flush()
            except OSError as e:  # a full disk: this body is dropped, the session stays as acknowledged
                self._fail(e)

    def _fail(self, error: OSError, tell: bool = True) -> None:
        self.error = error
        self.abort()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if tell and self.on_error is not None:
            self.on_error(error)

    def _flush(self) -> None:
        if not self._buffer or self._fd is None:
            return
        view = memoryview(self._buffer)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        finally:
            view.release()  # the buffer can be cleared even when the write failed
            del view
        if self.session.hasher is not None:
            self.session.hasher.update(self._buffer)
        self._buffer.clear()

    def tell(self) -> int:
        return self.written

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        if not self._finished:
            self.abort()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
        self._finished = True
        self.session.offset = self.start + self.written
        self.session.busy = keep_busy
        return self.session.offset

    def rollback(self) -> None:
        """Undo L{done} when the bytes could not be made durable: back to the last acknowledged offset."""
        self.session.offset = self.start
        self.session.hasher = self._hasher_before
        try:
            os.truncate(self.session.path, self.start)
        except OSError:
            pass  # the next writer truncates to the acknowledged offset anyway

    def abort(self) -> None:
        """Drop this body's bytes (the request failed or the client went away)."""
        if self._finished:
            return
        self._finished = True
        self._buffer.clear()
        if self._discard is not None:
            self._discard(self.session)  # a one-request session: nothing to keep
            return
        try:
            os.truncate(self.session.path, self.start)
        except FileNotFoundError:
            pass
        self.session.hasher = self._hasher_before
        self.session.busy = False
