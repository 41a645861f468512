# -*- test-case-name: tests.storage.test_contract -*-
"""
In-memory blob and upload stores: the fake the route tests run on (no
disk, no port), held to the same contract as the filesystem and S3 stores.
Nothing survives the process: L{MemoryUploads.get} revives a session from
its record only while the same store object lives (as a restart would
with the bytes kept).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field

from twisted.internet import defer
from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.storage.interfaces import DigestMismatch, IBlobReader, IBlobStore, IBodySink, IUploadStore
from izreg.storage.sink import SinkBase
from izreg.storage.uploads import UploadSession


@implementer(IBlobReader)
class MemoryReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._position = data, 0

    def seek(self, offset: int) -> None:
        self._position = offset

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._position + size
        chunk = self._data[self._position:end]
        self._position += len(chunk)
        return chunk

    def close(self) -> None:
        pass


@implementer(IBlobStore)
class MemoryBlobs:
    def __init__(self) -> None:
        self.blobs: dict[Digest, tuple[bytes, float]] = {}

    def open(self, digest: Digest) -> MemoryReader | None:
        found = self.blobs.get(digest)
        return MemoryReader(found[0]) if found else None

    def redirect_url(self, digest: Digest, filename: str | None = None) -> None:
        return None

    def stat(self, digest: Digest) -> tuple[int, float] | None:
        found = self.blobs.get(digest)
        return (len(found[0]), found[1]) if found else None

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        self.blobs.setdefault(digest, (bytes(data), time.time()))

    def delete(self, digest: Digest) -> None:
        self.blobs.pop(digest, None)

    def digests(self):
        return iter(sorted(self.blobs, key=str))

    def hash(self, digest: Digest, algorithm: str) -> str:
        return hashlib.new(algorithm, self.blobs[digest][0]).hexdigest()


@dataclass
class MemorySession(UploadSession):
    data: bytearray = field(default_factory=bytearray)


@implementer(IBodySink)
class MemoryWriter(SinkBase):
    def __init__(self, store: "MemoryUploads", session: MemorySession, limit, expected, discard: bool) -> None:
        super().__init__(session, limit, expected)
        self.store, self.discard = store, discard
        del session.data[self.start:]

    def write(self, data: bytes) -> None:
        if not self._accept(data):
            return
        self.session.data += data
        if self.session.hasher is not None:
            self.session.hasher.update(data)

    def done(self, keep_busy: bool = False) -> int:
        return self._keep(keep_busy)

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.discard:
            self.store.remove(self.session)
            return
        del self.session.data[self.start:]
        self._restore()


@implementer(IUploadStore)
class MemoryUploads:
    def __init__(self, blobs: MemoryBlobs) -> None:
        self.blobs = blobs
        self.sessions: dict[str, MemorySession] = {}
        self.stored: dict[str, bytearray] = {}  # the "durable" bytes of every session, live or not

    def create(self, name: str, now: float, persisted: bool = True, algorithm: str = "sha256") -> MemorySession:
        session = MemorySession(str(uuid.uuid4()), name, "", now, hasher=hashlib.new(algorithm), persisted=persisted)
        self.sessions[session.id] = session
        self.stored[session.id] = session.data
        return session

    def get(self, upload_id: str, record: dict | None) -> MemorySession | None:
        session = self.sessions.get(upload_id)
        if session is not None:
            return session
        data = self.stored.get(upload_id)
        if record is None or data is None or len(data) < record["offset"]:
            return None
        del data[record["offset"]:]
        session = MemorySession(upload_id, record["name"], "", record["started"], record["offset"], hasher=None, data=data)
        self.sessions[upload_id] = session
        return session

    def sink(self, session: MemorySession, limit=None, expected=None, discard: bool = False) -> MemoryWriter:
        return MemoryWriter(self, session, limit, expected, discard)

    def record(self, session: MemorySession, now: float) -> dict:
        return session.record(now)

    def acknowledge(self, sink: MemoryWriter):
        return defer.succeed(sink.session.offset)

    def seal(self, session: MemorySession, digest: Digest):
        hasher = session.hasher
        if hasher is None or hasher.name != digest.algorithm:
            hasher = hashlib.new(digest.algorithm, session.data[:session.offset])
        if hasher.hexdigest() != digest.hex:
            return defer.fail(DigestMismatch(f"{digest.algorithm}:{hasher.hexdigest()}"))
        return defer.succeed(None)

    def promote(self, session: MemorySession, digest: Digest) -> None:
        self.blobs.put_bytes(digest, bytes(session.data[:session.offset]))
        self.stored.pop(session.id, None)

    def remove(self, session: MemorySession) -> None:
        self.forget(session)
        self.expire(session.id, None)

    def forget(self, session: MemorySession) -> None:
        self.sessions.pop(session.id, None)

    def expire(self, upload_id: str, record: dict | None) -> None:
        self.stored.pop(upload_id, None)

    def orphans(self, known: set[str]) -> list[str]:
        return [upload_id for upload_id in self.stored if upload_id not in known and upload_id not in self.sessions]
