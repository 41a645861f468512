"""
The storage contract (izreg.storage.interfaces), written once and run
against every implementation: the filesystem, the in-memory fake, and S3
(a real moto server, marker ``s3``).

A "restart" is a new store object over the same durable state (the same
directory, bucket, or dict of stored bytes), reviving sessions from the
records the registry would have kept in LMDB.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from izreg.core.digest import Digest
from izreg.storage.interfaces import DigestMismatch, IBlobReader, IBlobStore, IBodySink, IUploadStore, StorageError

NAME = "0123456789abcdef0123456789abcdef/app"
MiB = 1024 * 1024
#: S3's smallest part: uploads longer than this exercise multipart in the S3 store
PART = 5 * MiB


def run_in_thread(f, *args, **kwargs):
    return deferToThread(f, *args, **kwargs)


class Backend:
    """Opens stores over one durable state; C{reopen()} is a restart."""

    def __init__(self, kind, tmp_path, request):
        self.kind = kind
        if kind == "filesystem":
            self.root = str(tmp_path / "data")
        elif kind == "memory":
            self.stored = {}
            from izreg.storage.memory import MemoryBlobs

            self.memory_blobs = MemoryBlobs()
        else:
            self.moto = request.getfixturevalue("moto_server")
            self.bucket = request.getfixturevalue("s3_bucket")
        self.reopen()

    def reopen(self):
        if self.kind == "filesystem":
            from izreg.storage.blobs import BlobStore
            from izreg.storage.uploads import Uploads

            self.blobs = BlobStore(self.root)
            self.uploads = Uploads(self.root, self.blobs, run_in_thread)
        elif self.kind == "memory":
            from izreg.storage.memory import MemoryUploads

            self.blobs = self.memory_blobs
            self.uploads = MemoryUploads(self.blobs)
            self.uploads.stored = self.stored
        else:
            from izreg.service.config import Config
            from izreg.storage.s3 import S3Blobs, S3Uploads, make_client

            config = Config(storage_backend="s3", s3_bucket=self.bucket, s3_endpoint_url=self.moto.url,
                            s3_prefix="reg/", s3_threads=4)
            # copied to its content address in parts of PART above PART (a multipart copy, as above 128 MiB)
            self.blobs = S3Blobs(make_client(config), self.bucket, "reg/", run_in_thread, redirect_ttl=60,
                                 copy_part=PART)
            self.uploads = S3Uploads(self.blobs, part_size=PART)
        return self


@pytest.fixture(params=["filesystem", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, tmp_path):
    return Backend(request.param, tmp_path, request)


def blocking(f, *args, **kwargs):
    return deferToThread(f, *args, **kwargs)


async def read_blob(blobs, digest, offset=0, length=None) -> bytes:
    reader = blobs.open(digest)
    assert reader is not None
    verifyObject(IBlobReader, reader)
    reader.seek(offset)
    out = bytearray()
    try:
        while length is None or len(out) < length:
            want = 256 * 1024 if length is None else min(256 * 1024, length - len(out))
            chunk = reader.read(want)
            if isinstance(chunk, defer.Deferred):
                chunk = await chunk
            if not chunk:
                break
            out += chunk
    finally:
        reader.close()
    return bytes(out)


async def append(uploads, session, *chunks, ack=True) -> int:
    sink = uploads.sink(session)
    verifyObject(IBodySink, sink)
    for chunk in chunks:
        sink.write(chunk)
    sink.done(keep_busy=True)
    try:
        if ack:
            return await uploads.acknowledge(sink)
        return session.offset
    finally:
        session.busy = False


async def commit(backend, session, digest) -> None:
    await backend.uploads.seal(session, digest)
    await blocking(backend.uploads.promote, session, digest)
    backend.uploads.forget(session)


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ per position (a misplaced part would show)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


# -- blobs ---------------------------------------------------------------------------------


def test_provides_the_interfaces(backend):
    verifyObject(IBlobStore, backend.blobs)
    verifyObject(IUploadStore, backend.uploads)


@pytest_twisted.ensureDeferred
async def test_small_blob_round_trip(backend):
    data = b"hello, blob"
    digest = Digest.of(data)
    assert await blocking(backend.blobs.stat, digest) is None
    await blocking(backend.blobs.put_bytes, digest, data)
    await blocking(backend.blobs.put_bytes, digest, data)  # twice is fine
    size, mtime = await blocking(backend.blobs.stat, digest)
    assert size == len(data) and mtime > 0
    assert await read_blob(backend.blobs, digest) == data
    assert await read_blob(backend.blobs, digest, 7, 4) == b"blob"
    assert await blocking(backend.blobs.hash, digest, "sha512") == hashlib.sha512(data).hexdigest()
    assert list(await blocking(lambda: list(backend.blobs.digests()))) == [digest]
    await blocking(backend.blobs.delete, digest)
    await blocking(backend.blobs.delete, digest)  # absent is fine
    assert await blocking(backend.blobs.stat, digest) is None
    assert list(await blocking(lambda: list(backend.blobs.digests()))) == []


@pytest_twisted.ensureDeferred
async def test_a_read_in_a_worker_thread_returns_bytes(backend):
    """Code that already runs in a thread (the browse API reading image configs) may read directly."""
    data = pattern(3000)
    digest = Digest.of(data)
    await blocking(backend.blobs.put_bytes, digest, data)

    def read():
        reader = backend.blobs.open(digest)
        try:
            reader.seek(100)
            return reader.read(50)
        finally:
            reader.close()

    assert await blocking(read) == data[100:150]


@pytest_twisted.ensureDeferred
async def test_begin_of_a_blob_whose_bytes_are_gone_says_not_found(backend):
    """
    A reader that waits on the network opens its object before the answer's head (C{begin}): an object
    deleted under the index (a collector's race, a bucket emptied by hand) is L{FileNotFoundError}, which
    the blob route answers 404 BLOB_UNKNOWN and logs; only a store out of reach is L{StorageError} (503).
    """
    data = pattern(3000, 5)
    digest = Digest.of(data)
    await blocking(backend.blobs.put_bytes, digest, data)
    reader = backend.blobs.open(digest)
    if getattr(reader, "begin", None) is None:
        reader.close()
        pytest.skip("the reader has no begin(): it opens its file in open()")
    try:
        await blocking(backend.blobs.delete, digest)
        reader.seek(10)
        with pytest.raises(FileNotFoundError):
            await reader.begin()
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_empty_blob(backend):
    digest = Digest.of(b"")
    session = backend.uploads.create(NAME, 1.0, persisted=False)
    await commit(backend, session, digest)
    assert await blocking(backend.blobs.stat, digest) is not None
    assert await read_blob(backend.blobs, digest) == b""


# -- uploads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, PART + 123, 2 * PART], ids=["small", "two-parts", "exact-parts"])
@pytest_twisted.ensureDeferred
async def test_upload_commit_and_ranges(backend, size):
    data = pattern(size)
    digest = Digest.of(data)
    session = backend.uploads.create(NAME, 1.0)
    assert session.offset == 0
    pieces = [data[i:i + 300_001] for i in range(0, size, 300_001)]
    assert await append(backend.uploads, session, *pieces) == size
    assert await blocking(backend.blobs.stat, digest) is None  # invisible until committed
    await commit(backend, session, digest)
    assert (await blocking(backend.blobs.stat, digest))[0] == size
    assert await read_blob(backend.blobs, digest) == data
    assert await read_blob(backend.blobs, digest, size - 10, 10) == data[-10:]
    assert await read_blob(backend.blobs, digest, size // 2, 5) == data[size // 2:size // 2 + 5]
    assert await blocking(backend.uploads.orphans, set()) == []  # nothing of the session is left


@pytest.mark.s3
@pytest_twisted.ensureDeferred
async def test_s3_a_blob_larger_than_a_copy_part_is_copied_in_parts(tmp_path, request):
    # one CopyObject of up to 5 GiB sent nothing back until done: on a slow store, past read_timeout
    backend = Backend("s3", tmp_path, request)
    data = pattern(2 * PART + 123, seed=7)
    digest = Digest.of(data)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, data)
    await commit(backend, session, digest)
    client = backend.moto.client()
    head = client.head_object(Bucket=backend.bucket, Key=backend.blobs.keys.blob(digest))
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three part copies
    assert await read_blob(backend.blobs, digest) == data
    assert client.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []) == []


@pytest_twisted.ensureDeferred
async def test_wrong_digest_is_refused_and_nothing_is_visible(backend):
    data = pattern(PART + 10)
    wrong = Digest.of(b"something else")
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, data)
    with pytest.raises(DigestMismatch) as caught:
        await backend.uploads.seal(session, wrong)
    assert caught.value.actual == str(Digest.of(data))
    await defer.maybeDeferred(backend.uploads.remove, session)
    assert await blocking(backend.blobs.stat, wrong) is None
    assert await blocking(backend.blobs.stat, Digest.of(data)) is None
    assert await blocking(lambda: list(backend.blobs.digests())) == []
    assert await blocking(backend.uploads.orphans, set()) == []


@pytest_twisted.ensureDeferred
async def test_aborted_body_leaves_the_session_as_acknowledged(backend):
    first, lost, second = pattern(PART - 7, 1), pattern(PART + 3, 2), pattern(2 * MiB, 3)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, first)
    sink = backend.uploads.sink(session)
    sink.write(lost)
    sink.close()  # the client went away: never done()
    await wait_idle(session)
    assert session.offset == len(first)
    assert await append(backend.uploads, session, second) == len(first) + len(second)
    await commit(backend, session, Digest.of(first + second))
    assert await read_blob(backend.blobs, Digest.of(first + second)) == first + second


async def wait_idle(session):
    """An aborted sink may finish work in flight before the session is free again (S3 parts)."""
    for _ in range(600):
        if not session.busy:
            return
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
    raise AssertionError("the session stayed busy")


@pytest.mark.parametrize("sizes", [(1000, 2000), (PART + 5, 3 * MiB), (3 * MiB, 3 * MiB, PART)],
                         ids=["small", "part-then-tail", "tails-across-a-part"])
@pytest_twisted.ensureDeferred
async def test_session_survives_a_restart(backend, sizes):
    chunks = [pattern(n, i) for i, n in enumerate(sizes)]
    session = backend.uploads.create(NAME, 1.0)
    upload_id = session.id
    await append(backend.uploads, session, chunks[0])
    record = backend.uploads.record(session, 2.0)
    backend.reopen()  # restart: only the record and the durable bytes remain
    revived = backend.uploads.get(upload_id, record)
    assert revived is not None and revived.offset == len(chunks[0]) and revived.name == NAME
    for chunk in chunks[1:]:
        await append(backend.uploads, revived, chunk)
        record = backend.uploads.record(revived, 3.0)
        backend.reopen()
        revived = backend.uploads.get(upload_id, record)
    data = b"".join(chunks)
    assert revived.offset == len(data)
    await commit(backend, revived, Digest.of(data))
    assert await read_blob(backend.blobs, Digest.of(data)) == data


@pytest.mark.parametrize("size", [1000, PART + 5], ids=["small", "parts"])
@pytest_twisted.ensureDeferred
async def test_wrong_digest_after_a_restart(backend, size):
    """No running hash after a restart: the store rehashes what it holds before anything is visible."""
    data = pattern(size)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, data)
    record = backend.uploads.record(session, 2.0)
    revived = backend.reopen().uploads.get(session.id, record)
    with pytest.raises(DigestMismatch) as caught:
        await backend.uploads.seal(revived, Digest.of(b"not it"))
    assert caught.value.actual == str(Digest.of(data))
    await defer.maybeDeferred(backend.uploads.remove, revived)
    assert await blocking(lambda: list(backend.blobs.digests())) == []
    assert await blocking(backend.uploads.orphans, set()) == []


@pytest_twisted.ensureDeferred
async def test_bytes_past_the_record_are_cut_off_after_a_restart(backend):
    acked, unacked = pattern(PART + 99, 1), pattern(PART + 1, 2)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, acked)
    record = backend.uploads.record(session, 2.0)
    await append(backend.uploads, session, unacked)  # durable, but the record was never updated
    backend.reopen()
    revived = backend.uploads.get(session.id, record)
    assert revived.offset == len(acked)
    await commit(backend, revived, Digest.of(acked))
    assert await read_blob(backend.blobs, Digest.of(acked)) == acked


@pytest_twisted.ensureDeferred
async def test_expire_and_orphans(backend):
    recorded = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, recorded, pattern(PART + 1))
    record = backend.uploads.record(recorded, 1.0)
    orphan = backend.uploads.create(NAME, 1.0, persisted=False)
    await append(backend.uploads, orphan, pattern(PART + 2))
    backend.reopen()
    assert await blocking(backend.uploads.orphans, {recorded.id}) == [orphan.id]
    assert sorted(await blocking(backend.uploads.orphans, set())) == sorted([recorded.id, orphan.id])
    await blocking(backend.uploads.expire, orphan.id, None)
    await blocking(backend.uploads.expire, recorded.id, record)
    await blocking(backend.uploads.expire, recorded.id, record)  # twice is fine
    assert await blocking(backend.uploads.orphans, set()) == []
    if backend.kind == "s3":  # and no multipart upload is left to bill for
        listed = await blocking(backend.moto.client().list_multipart_uploads, Bucket=backend.bucket)
        assert listed.get("Uploads", []) == []


@pytest_twisted.ensureDeferred
async def test_remove_drops_a_live_session(backend):
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, pattern(PART + 1))
    await defer.maybeDeferred(backend.uploads.remove, session)
    assert session.id not in backend.uploads.sessions
    assert await blocking(backend.uploads.orphans, set()) == []


@pytest_twisted.ensureDeferred
async def test_failed_monolithic_body_drops_its_session(backend):
    session = backend.uploads.create(NAME, 1.0, persisted=False)
    sink = backend.uploads.sink(session, discard=True)
    sink.write(pattern(PART + 5))
    sink.close()
    await wait_gone(backend, session)


@pytest.mark.parametrize("size", [1000, PART + 10], ids=["small", "two-parts"])
@pytest_twisted.ensureDeferred
async def test_a_blob_collected_between_seal_and_promote_is_never_recorded_without_bytes(backend, size):
    """
    A push of a blob whose bytes were already there (an old unreferenced blob, an orphan) while a
    collector deletes them (another node's, under the blob's lock, before the push's commit takes
    it): S3's seal found the object and wrote nothing, and the commit recorded a blob with no bytes.
    Promote (under the same lock) either puts the bytes in place or fails.
    """
    data = pattern(size, 9)
    digest = Digest.of(data)
    await blocking(backend.blobs.put_bytes, digest, data)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, data)
    await backend.uploads.seal(session, digest)
    await blocking(backend.blobs.delete, digest)  # the collector's delete
    try:
        await blocking(backend.uploads.promote, session, digest)
    except StorageError:
        return  # the commit fails (a 503): the client pushes again
    finally:
        backend.uploads.forget(session)
    assert await read_blob(backend.blobs, digest) == data


async def wait_gone(backend, session):
    for _ in range(600):
        if session.id not in backend.uploads.sessions and not await blocking(backend.uploads.orphans, set()):
            return
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
    raise AssertionError("the discarded session's bytes are still there")


def test_filesystem_reader_offers_sendfile(tmp_path):
    from izreg.storage.blobs import BlobStore

    store = BlobStore(str(tmp_path))
    data = b"0123456789"
    store.put_bytes(Digest.of(data), data)
    reader = store.open(Digest.of(data))
    r, w = os.pipe()
    try:
        assert reader.sendfile(w, 3, 4) == 4
        assert os.read(r, 10) == b"3456"
    finally:
        reader.close()
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("sizes", [(1000, 2000), (1000, PART + 5)], ids=["tail", "part"])
@pytest_twisted.ensureDeferred
async def test_a_chunk_rolled_back_after_its_acknowledge_is_sent_again_whole(backend, sizes):
    """
    The store acknowledged a chunk but the index did not record it (a 503: no database thread free,
    the database did not answer): the registry rolls the sink back (UploadSessions.chunk_done), and the
    client sends the chunk again from the offset the record still says. The blob is the bytes sent,
    once: nothing of the refused chunk stays in the session.
    """
    first, second = pattern(sizes[0], 1), pattern(sizes[1], 2)
    session = backend.uploads.create(NAME, 1.0)
    await append(backend.uploads, session, first)
    record = backend.uploads.record(session, 1.0)  # what the index holds
    sink = backend.uploads.sink(session)
    sink.write(second)
    sink.done(keep_busy=True)
    await backend.uploads.acknowledge(sink)
    sink.rollback()  # the index write failed
    session.busy = False
    await wait_idle(session)
    session = backend.uploads.get(session.id, record)  # the next request's session (UploadSessions._session)
    assert session.offset == len(first)
    assert await append(backend.uploads, session, second) == len(first) + len(second)
    await commit(backend, session, Digest.of(first + second))
    assert await read_blob(backend.blobs, Digest.of(first + second)) == first + second
