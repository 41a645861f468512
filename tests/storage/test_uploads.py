"""Upload sessions and the ChunkWriter (izreg.storage.uploads) on a real temp dir."""

from __future__ import annotations

import hashlib
import os

import pytest

from izreg.storage import paths
from izreg.storage import uploads as uploads_module
from izreg.storage.uploads import ChunkWriter, Uploads, UploadSession

NAME = "0123456789abcdef0123456789abcdef/app"


@pytest.fixture
def uploads(tmp_path):
    return Uploads(str(tmp_path))


def content(session) -> bytes:
    with open(session.path, "rb") as f:
        return f.read()


def append(session, *chunks, keep_busy=False) -> int:
    writer = ChunkWriter(session)
    for chunk in chunks:
        writer.write(chunk)
    offset = writer.done(keep_busy)
    writer.close()
    return offset


# -- sessions ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("persisted", [True, False])
def test_create(uploads, tmp_path, algorithm, persisted):
    session = uploads.create(NAME, 12.5, persisted=persisted, algorithm=algorithm)
    assert session.path == paths.upload_path(str(tmp_path), session.id)
    assert os.path.getsize(session.path) == 0
    assert (session.name, session.started, session.offset, session.busy, session.persisted) == (NAME, 12.5, 0, False, persisted)
    assert session.hasher.name == algorithm
    assert session.hasher.hexdigest() == hashlib.new(algorithm).hexdigest()
    assert uploads.get(session.id, None) is session


def test_create_gives_distinct_ids(uploads):
    ids = {uploads.create(NAME, 0).id for _ in range(20)}
    assert len(ids) == 20
    assert sorted(os.listdir(paths.uploads_dir(uploads.root))) == sorted(ids)


def test_record(uploads):
    session = uploads.create(NAME, 1.0)
    append(session, b"abc")
    assert session.record(9.0) == {"name": NAME, "offset": 3, "started": 1.0, "updated": 9.0}


def test_live_session_wins_over_record(uploads):
    session = uploads.create(NAME, 0)
    assert uploads.get(session.id, {"name": "other", "offset": 99, "started": 5}) is session


@pytest.mark.parametrize(
    "file_bytes, offset, revived",
    [
        (b"", 0, True),
        (b"abc", 3, True),
        (b"abcdef", 3, True),  # bytes past the acknowledged offset are cut off
        (b"abc", 0, True),
        (b"ab", 3, False),  # acknowledged bytes missing: unusable
        (b"", 1, False),
        (None, 0, False),  # file gone
    ],
)
def test_revive_from_record(tmp_path, file_bytes, offset, revived):
    upload_id = "0f3b1c2e-0000-4000-8000-000000000000"
    path = paths.upload_path(str(tmp_path), upload_id)
    uploads = Uploads(str(tmp_path))
    if file_bytes is not None:
        with open(path, "wb") as f:
            f.write(file_bytes)
    record = {"name": NAME, "offset": offset, "started": 7.0, "updated": 8.0}
    session = uploads.get(upload_id, record)
    if not revived:
        assert session is None
        assert upload_id not in uploads.sessions
        if file_bytes is not None:
            assert open(path, "rb").read() == file_bytes  # never truncated when refusing
        return
    assert (session.id, session.name, session.offset, session.started, session.path) == (upload_id, NAME, offset, 7.0, path)
    assert session.hasher is None  # rebuilt from the file at commit time
    assert not session.busy
    assert content(session) == file_bytes[:offset]
    assert uploads.get(upload_id, None) is session  # now live


def test_unknown_without_record(uploads):
    assert uploads.get("nope", None) is None


@pytest.mark.parametrize("twice", [False, True])
def test_remove(uploads, twice):
    session = uploads.create(NAME, 0)
    uploads.remove(session)
    if twice:
        uploads.remove(session)
    assert not os.path.exists(session.path)
    assert uploads.get(session.id, None) is None


def test_forget_keeps_the_file(uploads):
    session = uploads.create(NAME, 0)
    append(session, b"abc")
    uploads.forget(session)
    assert uploads.get(session.id, None) is None
    revived = uploads.get(session.id, session.record(1))
    assert revived is not session and revived.offset == 3


def test_orphans(uploads):
    live = uploads.create(NAME, 0)
    recorded = uploads.create(NAME, 0)
    orphan = uploads.create(NAME, 0)
    uploads.forget(recorded)
    uploads.forget(orphan)
    stray = os.path.join(paths.uploads_dir(uploads.root), "stray")
    open(stray, "wb").close()
    found = uploads.orphans({recorded.id})
    assert sorted(found) == sorted([orphan.id, "stray"])
    assert live.path not in found
    assert uploads.orphans({recorded.id, orphan.id, "stray"}) == []


# -- ChunkWriter -------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [[], [b""], [b"a"], [b"abc", b"def"], [b"x" * 70000, b"", b"y"]],
    ids=["no-write", "empty-write", "one", "two", "large"],
)
def test_write_and_done(uploads, chunks):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    assert session.busy
    for chunk in chunks:
        writer.write(chunk)
    data = b"".join(chunks)
    assert writer.tell() == len(data)
    assert writer.done() == len(data)
    writer.close()
    assert session.offset == len(data)
    assert not session.busy
    assert content(session) == data
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_chunks_append_across_writers(uploads):
    session = uploads.create(NAME, 0)
    assert append(session, b"abc") == 3
    assert append(session, b"def", b"g") == 7
    assert content(session) == b"abcdefg"
    assert session.hasher.hexdigest() == hashlib.sha256(b"abcdefg").hexdigest()


@pytest.mark.parametrize("keep_busy", [False, True])
def test_done_keep_busy(uploads, keep_busy):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    writer.write(b"x")
    writer.done(keep_busy=keep_busy)
    writer.close()
    assert session.busy is keep_busy
    assert content(session) == b"x"


@pytest.mark.parametrize("explicit_abort", [False, True])
def test_close_without_done_drops_the_chunk(uploads, explicit_abort):
    session = uploads.create(NAME, 0)
    append(session, b"keep")
    writer = ChunkWriter(session)
    writer.write(b"drop me")
    if explicit_abort:
        writer.abort()
    writer.close()
    assert session.offset == 4
    assert content(session) == b"keep"
    assert not session.busy
    assert session.hasher.hexdigest() == hashlib.sha256(b"keep").hexdigest()
    # the session is still usable and the hash continues from the kept bytes
    append(session, b"more")
    assert session.hasher.hexdigest() == hashlib.sha256(b"keepmore").hexdigest()


def test_abort_after_done_keeps_the_bytes(uploads):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    writer.write(b"abc")
    writer.done()
    writer.abort()
    writer.close()
    assert (session.offset, content(session)) == (3, b"abc")
    assert session.hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_close_twice(uploads):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    writer.write(b"abc")
    writer.done()
    writer.close()
    writer.close()
    writer.write(b"ignored after close")
    assert content(session) == b"abc"


def test_writer_cuts_unacknowledged_bytes(uploads):
    session = uploads.create(NAME, 0)
    append(session, b"abc")
    with open(session.path, "ab") as f:
        f.write(b"junk from a cut-short request")
    writer = ChunkWriter(session)
    assert os.path.getsize(session.path) == 3
    writer.write(b"d")
    writer.done()
    writer.close()
    assert content(session) == b"abcd"


def test_revived_session_has_no_hasher(tmp_path):
    first = Uploads(str(tmp_path))
    session = first.create(NAME, 0)
    append(session, b"abc")
    revived = Uploads(str(tmp_path)).get(session.id, session.record(1))
    assert append(revived, b"def") == 6
    assert revived.hasher is None
    assert content(revived) == b"abcdef"
    writer = ChunkWriter(revived)
    writer.write(b"x")
    writer.close()  # abort restores "no hasher"
    assert revived.hasher is None and content(revived) == b"abcdef"


@pytest.mark.parametrize(
    "limit, chunks, overflow, kept",
    [
        (None, [b"a" * 100], False, b"a" * 100),
        (0, [b""], False, b""),
        (0, [b"a"], True, b""),
        (3, [b"abc"], False, b"abc"),
        (3, [b"abcd"], True, b""),
        (3, [b"ab", b"cd"], True, b"ab"),
        (3, [b"ab", b"c"], False, b"abc"),
        (3, [b"ab", b"cd", b"e"], True, b"ab"),  # nothing more is written after an overflow
    ],
)
def test_limit(uploads, limit, chunks, overflow, kept):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session, limit=limit)
    for chunk in chunks:
        writer.write(chunk)
    assert writer.overflow is overflow
    assert writer.tell() == len(kept)
    assert writer.done() == len(kept)
    assert content(session) == kept
    assert session.hasher.hexdigest() == hashlib.sha256(kept).hexdigest()


def test_limit_counts_only_this_body(uploads):
    session = uploads.create(NAME, 0)
    append(session, b"0123456789")
    writer = ChunkWriter(session, limit=2)
    writer.write(b"ab")
    assert not writer.overflow
    assert writer.done() == 12


def test_file_like_surface(uploads):
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    writer.write(b"abc")
    writer.seek(0)
    assert writer.read() == b""
    assert writer.tell() == 3
    writer.write(b"d")  # seek does not move the write position
    writer.done()
    writer.close()
    assert content(session) == b"abcd"


def test_session_defaults():
    s = UploadSession("id", NAME, "/nonexistent", 1.0)
    assert (s.offset, s.busy, s.persisted, s.hasher.name) == (0, False, True, "sha256")


def test_small_chunks_are_gathered_and_all_land(uploads):
    """Many small chunks (docker's streamed PATCH) end up whole, in order, and hashed."""
    from izreg.storage.uploads import WRITE_SIZE

    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    data = bytes(range(256)) * (WRITE_SIZE // 256 * 3 + 7)
    for i in range(0, len(data), 1000):
        writer.write(data[i:i + 1000])
    assert content(session) == data[: len(content(session))]  # flushed in order so far
    assert writer.done() == len(data)
    assert content(session) == data
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_abort_drops_gathered_bytes_too(uploads):
    session = uploads.create(NAME, 0)
    append(session, b"kept")
    writer = ChunkWriter(session)
    writer.write(b"x" * 10)
    writer.close()
    assert content(session) == b"kept"
    assert session.offset == 4


def test_writes_of_any_size_land_whole_and_in_order(uploads):
    """Writes crossing the gathering buffer's end, and one larger than it, are cut and written in order."""
    from izreg.storage.uploads import WRITE_SIZE

    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    pieces = [os.urandom(WRITE_SIZE - 5), os.urandom(11), os.urandom(2 * WRITE_SIZE + 3), b"", os.urandom(WRITE_SIZE)]
    for piece in pieces:
        writer.write(piece)
    data = b"".join(pieces)
    assert writer.done() == len(data)
    writer.close()
    assert content(session) == data
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_write_copies_what_it_is_given(uploads):
    """The chunked decoder hands views of its reads: a writer keeps none of them past the call."""
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session)
    scratch = bytearray(b"a" * 1000)
    writer.write(memoryview(scratch)[:600])
    scratch[:] = b"b" * 1000  # the caller's buffer changes before the bytes are written
    writer.write(memoryview(scratch)[600:])
    assert writer.done() == 1000
    writer.close()
    assert content(session) == b"a" * 600 + b"b" * 400


def test_next_body_reuses_the_buffer_without_stale_bytes(uploads):
    """A body after an aborted one (its buffer reused) gets only its own bytes."""
    first = uploads.create(NAME, 0)
    writer = ChunkWriter(first)
    writer.write(b"x" * 5000)
    writer.close()  # aborted: nothing of it is written
    second = uploads.create(NAME, 0)
    assert append(second, b"y" * 10) == 10
    assert content(first) == b""
    assert content(second) == b"y" * 10
    assert second.hasher.hexdigest() == hashlib.sha256(b"y" * 10).hexdigest()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_body_holds_the_memory_of_what_it_sent_not_a_whole_buffer(uploads, monkeypatch):
    """
    An open body that has sent a byte costs a page, not WRITE_SIZE: 64 bodies
    of one byte each (64 MiB if each held a whole buffer) stay well under 16 MiB.
    """
    monkeypatch.setattr(uploads_module, "_SPARE", [])  # no resident spare buffers from other tests
    writers = [ChunkWriter(uploads.create(NAME, 0)) for _ in range(64)]
    before = _resident_bytes()
    for writer in writers:
        writer.write(b"x")
    grown = _resident_bytes() - before
    for writer in writers:
        assert writer.done() == 1
        writer.close()
    assert grown < 16 * 1024 * 1024, grown
    assert all(content(writer.session) == b"x" for writer in writers)


# -- writes in a worker thread (ChunkWriter's run) ------------------------------------


class Manual:
    """A runner whose jobs run when the test says (in order), as a worker thread would later."""

    def __init__(self):
        self.jobs = []
        self.fail_with = None  # the next job raises this instead of running (a full disk)

    def __call__(self, f, *args, **kwargs):
        from twisted.internet import defer

        d = defer.Deferred()
        self.jobs.append((f, args, kwargs, d))
        return d

    def step(self):
        f, args, kwargs, d = self.jobs.pop(0)
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            d.errback(error)
            return
        try:
            result = f(*args, **kwargs)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def run(self):
        while self.jobs:
            self.step()


class Producer:
    def __init__(self):
        self.paused = False
        self.calls = []

    def pauseProducing(self):
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self):
        self.paused = False
        self.calls.append("resume")


def fired(d):
    results = []
    d.addBoth(results.append)
    return results


MiB = uploads_module.WRITE_SIZE


def test_one_write_in_flight_two_buffers_then_the_connection_pauses(uploads):
    """The reactor fills a buffer while the worker writes the previous one; a second full one pauses reading."""
    run, producer = Manual(), Producer()
    session = uploads.create(NAME, 0)
    writer = ChunkWriter(session, run=run)
    writer.throttle(producer)
    data = os.urandom(3 * MiB + 1000)
    piece = 64 * 1024
    for i in range(0, MiB, piece):
        writer.write(data[i:i + piece])
    assert len(run.jobs) == 1 and not producer.paused  # the first MiB is with the worker, reading goes on
    for i in range(MiB, 2 * MiB, piece):
        writer.write(data[i:i + piece])
    assert len(run.jobs) == 1 and producer.paused  # the second is full too: one write at a time, reading paused
    writer.write(data[2 * MiB:])  # what was already read still comes in
    assert content(session) == b""
    run.step()
    assert content(session) == data[:MiB] and len(run.jobs) == 1 and producer.paused  # the third still waits
    run.step()
    assert content(session) == data[:2 * MiB] and not producer.paused
    assert writer.done(keep_busy=True) == len(data)  # the offset is known before the bytes are written
    assert session.offset == len(data) and session.busy
    drained = fired(writer.drained())
    assert drained == [] and len(run.jobs) == 1
    run.run()
    assert drained == [None]
    assert content(session) == data
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    writer.close()
    assert session.busy  # keep_busy: the caller frees it
    assert producer.calls == ["pause", "pause", "resume"]


@pytest.mark.parametrize("end", ["abort", "close"])
def test_an_aborted_body_is_cut_only_after_the_write_in_flight(uploads, end):
    """A truncate never races a queued write: it runs after it, and the session stays busy until then."""
    run = Manual()
    session = uploads.create(NAME, 0)
    append(session, b"kept")
    before = session.hasher.copy().hexdigest()
    writer = ChunkWriter(session, run=run)
    writer.write(os.urandom(2 * MiB + 10))
    getattr(writer, end)()
    assert session.busy and session.offset == 4  # not free for the next request while a write is in flight
    run.run()  # the late write lands, then the cut
    assert content(session) == b"kept" and not session.busy
    assert session.hasher.hexdigest() == before
    writer.close()
    assert append(session, b"more") == 8 and content(session) == b"keptmore"


def test_close_after_done_waits_for_the_writes_before_closing_the_file(uploads):
    """The descriptor stays open for the queued writes (a closed, reused number would write elsewhere)."""
    run = Manual()
    session = uploads.create(NAME, 0)
    data = os.urandom(MiB + 5)
    writer = ChunkWriter(session, run=run)
    writer.write(data)
    writer.done()
    writer.close()
    assert session.busy  # done() without keep_busy frees the session once the bytes are written
    run.run()
    assert content(session) == data and not session.busy
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_full_disk_in_the_worker_mid_body_is_told_at_once(uploads):
    """ENOSPC from the thread: on_error at once, the body dropped, the session as acknowledged and free."""
    import errno

    run, producer = Manual(), Producer()
    session = uploads.create(NAME, 0)
    append(session, b"kept")
    writer = ChunkWriter(session, run=run)
    writer.throttle(producer)
    told = []
    writer.on_error = told.append
    writer.write(os.urandom(2 * MiB))
    assert producer.paused
    run.fail_with = OSError(errno.ENOSPC, "No space left on device")
    run.step()
    assert [e.errno for e in told] == [errno.ENOSPC]
    assert run.jobs == [] and not producer.paused  # the queued buffer is dropped, never written
    assert content(session) == b"kept" and session.offset == 4 and not session.busy
    assert session.hasher.hexdigest() == hashlib.sha256(b"kept").hexdigest()
    writer.write(b"ignored")
    with pytest.raises(OSError):
        writer.done()
    writer.close()
    assert run.jobs == []


@pytest.mark.parametrize("step", ["acknowledge", "seal"])
def test_a_full_disk_after_done_fails_acknowledge_and_seal(tmp_path, step):
    """The last buffer fails after done(): the store's acknowledge/seal fails with it; a rollback restores the session."""
    import errno

    from izreg.core.digest import Digest

    run = Manual()
    uploads = Uploads(str(tmp_path), run_io=run)
    session = uploads.create(NAME, 0)
    append(session, b"kept")
    run.run()
    writer = uploads.sink(session)
    told = []
    writer.on_error = told.append
    data = os.urandom(MiB + 100)
    writer.write(data)
    writer.done(keep_busy=True)
    result = fired(uploads.acknowledge(writer) if step == "acknowledge"
                   else uploads.seal(session, Digest("sha256", hashlib.sha256(b"kept" + data).hexdigest())))
    run.step()  # the first MiB
    run.fail_with = OSError(errno.ENOSPC, "No space left on device")
    run.step()  # the tail
    assert run.jobs == []  # no fsync after a failed write
    assert told == []  # the handler answers it (the body is over)
    assert len(result) == 1 and result[0].check(OSError) and result[0].value.errno == errno.ENOSPC
    writer.rollback()
    session.busy = False
    assert session.offset == 4 and content(session) == b"kept"
    assert session.hasher.hexdigest() == hashlib.sha256(b"kept").hexdigest()


def test_seal_waits_for_the_writes_in_flight(tmp_path):
    from izreg.core.digest import Digest
    from izreg.storage.interfaces import DigestMismatch

    run = Manual()
    uploads = Uploads(str(tmp_path), run_io=run)
    session = uploads.create(NAME, 0)
    data = os.urandom(3 * MiB)
    writer = uploads.sink(session)
    writer.write(data)
    writer.done(keep_busy=True)
    wrong = fired(uploads.seal(session, Digest("sha256", "0" * 64)))
    right = fired(uploads.seal(session, Digest("sha256", hashlib.sha256(data).hexdigest())))
    assert wrong == [] and right == []
    run.run()
    assert wrong[0].check(DigestMismatch)
    assert right == [None] and content(session) == data


def test_aligned_buffers_go_to_disk_direct_and_the_rest_through_the_page_cache(uploads, monkeypatch):
    """
    From an unaligned offset, the first buffer ends on an aligned one; the full
    buffers after it are written with O_DIRECT, the unaligned ends buffered;
    the file and the hash are the same as plain writes would give.
    """
    import fcntl

    writes = []
    pwrite = os.pwrite

    def recording(fd, data, position):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        writes.append((direct, position, len(data)))
        return pwrite(fd, data, position)

    session = uploads.create(NAME, 0)
    append(session, b"abc")
    monkeypatch.setattr(os, "pwrite", recording)
    data = os.urandom(3 * MiB + 5)
    writer = ChunkWriter(session)
    for i in range(0, len(data), 65536):
        writer.write(data[i:i + 65536])
    assert writer.done() == 3 + len(data)
    writer.close()
    assert content(session) == b"abc" + data
    assert session.hasher.hexdigest() == hashlib.sha256(b"abc" + data).hexdigest()
    first = MiB - 3
    if not any(direct for direct, _, _ in writes):
        pytest.skip("this file system takes no O_DIRECT writes")
    assert writes == [(False, 3, first), (True, MiB, MiB), (True, 2 * MiB, MiB), (False, 3 * MiB, len(data) - first - 2 * MiB)]


def test_direct_writes_off_writes_everything_through_the_page_cache(tmp_path, monkeypatch):
    """C{[storage] direct_writes = false}: no descriptor with O_DIRECT; same file, same hash."""
    import fcntl

    flags = []
    pwrite = os.pwrite

    def recording(fd, data, position):
        flags.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return pwrite(fd, data, position)

    uploads = Uploads(str(tmp_path), direct=False)
    session = uploads.create(NAME, 0)
    monkeypatch.setattr(os, "pwrite", recording)
    data = os.urandom(3 * MiB)
    writer = uploads.sink(session)
    writer.write(data)
    assert writer.done() == len(data)
    writer.close()
    assert content(session) == data
    assert session.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert flags and not any(flags)

