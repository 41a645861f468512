# -*- test-case-name: tests.storage.test_gc -*-
"""
Garbage collection, online: what no manifest references goes, after a grace period.

A sweep has three parts, each a read-only scan for candidates, then short
write transactions of up to L{BATCH} candidates each, that check every
candidate again and delete it (one commit, one fsync per batch: one per
candidate fell behind a busy registry's deletes, ~27 a second):

1. blobs: a blob record with no ``blobrefs`` entry (no manifest of any
   repository names it) whose ``touched`` time (upload, mount, a HEAD or GET
   while unreferenced) is older than the grace period. Inside the write
   transaction: still unreferenced, still untouched, then the record and
   every link to it go; after that commit, in a second transaction, the
   bytes of each blob that still has no record are deleted
   (``IBlobStore.delete``). A crash between the two leaves files that no
   record names (part 2 below deletes them), never a record without bytes.
2. files that no index entry names (a crash between a file's move and its
   record; a file left after a record was rebuilt) older than the grace
   period: inside the write transaction, still no record, then deleted.
3. links: a repository's link to a blob its manifests no longer name, older
   than the grace period (so a repository whose images are all deleted
   drops out of ``_catalog``).

With ``untagged_after``, manifests without a tag pushed longer ago than that,
which no index holds and which are not a referrer, are deleted first (the
same in-use protection as a DELETE; recorded in the audit log).

Why it is safe with concurrent pushes, mounts and deletes: a blob's bytes
and its record only change inside LMDB write transactions (the commit of an
upload puts the bytes in place inside its transaction, see
L{izreg.storage.lmdbindex.Index.commit_blob}), and LMDB allows one writer at
a time across processes, so the re-check and the delete see the same state
every push sees. A manifest PUT checks that its blobs exist inside its own
transaction: it either comes first (the blob is referenced, the sweep keeps
it) or after (the blob is gone and the PUT says MANIFEST_BLOB_UNKNOWN). The
grace period covers the time between a blob's upload (or a client's HEAD
that found it) and its manifest. On PostgreSQL (L{izreg.storage.pgindex})
the same holds across nodes by the index's blob locks: a commit and the
collector's re-check and delete exclude each other, and a manifest naming
the blob holds it shared. The scans and checked writes are methods of the
index (L{izreg.storage.interfaces.IMetadataIndex}), so this works on both. The sweep itself is serialized by an
advisory lock file (``gc.lock``), or with the index on PostgreSQL by an
advisory lock in the database (L{PgSweepLock}), so the server's timers and
``izreg gc`` never run two sweeps at once, on one node or several.

Every method here blocks (LMDB writes, blob store calls): the server runs
them on its writer thread (the write steps) and I/O pool (the scans).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from izreg.core.digest import Digest
from izreg.storage.runners import inline, run_inline, settled

LOCK_NAME = "gc.lock"
#: the advisory lock key of garbage-collection sweeps on PostgreSQL (``izgc`` in ASCII)
SWEEP_LOCK = 0x697A6763
#: seconds each wait for the sweep lock (``izreg gc`` behind another sweep) lasts on the server
#: (its lock_timeout) before it is asked again: the client bounds each by this + query_timeout
SWEEP_LOCK_WAIT = 10.0
#: candidates checked and deleted per write transaction: a bounded batch keeps the
#: transaction (and the writer thread, which pushes share) short. On the project's shared
#: test machine (LMDB and blob files on ext4, 2,000 blobs): one per transaction 370-1,400/s,
#: 64 per transaction ~3,600/s, 256 ~3,000/s; a file's unlink took 0.2-0.7 ms there, so a
#: batch of 64 holds the writer for some 15-50 ms
BATCH = 64


def batches(items: list, size: int = BATCH) -> Iterator[list]:
    """C{items} in consecutive slices of at most C{size}."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class SweepResult:
    files: int = 0  # blob files deleted (blobs and orphan files)
    bytes: int = 0
    links: int = 0  # stale links removed
    manifests: int = 0  # untagged manifests expired
    kept: int = 0  # candidates that a re-check kept (touched or referenced meanwhile)
    batches: int = 0  # write transactions (each a batch of candidates)
    audit: int = 0  # audit records pruned (past [audit] keep_days or max_entries)
    held: int = 0  # unreferenced blobs the grace period keeps (counted by ``izreg gc`` only)
    held_bytes: int = 0
    deleted: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "links": self.links, "manifests": self.manifests,
                "kept": self.kept, "batches": self.batches, "audit": self.audit}


class SweepLock:
    """An advisory lock (flock) on C{<data_dir>/gc.lock}: one sweep at a time, across processes."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PgSweepLock:
    """
    The sweep lock of several nodes over one PostgreSQL database: a session
    advisory lock (one sweep at a time across every node and ``izreg gc``),
    held for the sweep's length on a connection of its own, outside the
    pool: the sweep's queries and the requests served meanwhile keep every
    pooled connection. A node that dies mid-sweep loses the connection, and
    PostgreSQL the lock. Blocking: the server takes and releases it in a thread.
    Each of its calls is bounded like a pooled one (L{izreg.storage.pg.Database.bounded},
    C{query_timeout}): a frozen server is L{izreg.storage.pg.DatabaseNoAnswer}, not a sweep
    (and its thread) held forever.
    """

    def __init__(self, db) -> None:
        self.db = db
        self._conn = None

    def acquire(self, wait: bool = False) -> bool:
        import psycopg

        from izreg.storage.pg import DatabaseUnavailable, _describe

        if self._conn is not None:
            raise RuntimeError("this sweep lock is already held")
        try:
            # keepalives: a dead link is noticed, and the lock is not held for a node that is gone
            conn = psycopg.connect(self.db.dsn, autocommit=True, application_name="izreg-gc",
                                   **self.db.keepalives)
        except psycopg.Error as e:
            raise DatabaseUnavailable(f"the database is unavailable: {_describe(e)}") from None
        try:
            got = self._lock(conn, wait)
        except BaseException as e:
            conn.close()
            if isinstance(e, psycopg.Error):
                raise DatabaseUnavailable(f"the database is unavailable: {_describe(e)}") from None
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _lock(self, conn, wait: bool) -> bool:
        """
        Take the lock on C{conn}, each call under the watchdog (a frozen server held the sweep, and
        its thread, forever): waiting (C{wait}) in turns of L{SWEEP_LOCK_WAIT} s.
        """
        from psycopg import errors as pgerrors

        from izreg.storage.pg import _ms

        if not wait:
            with self.db.bounded(conn):
                return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK,)).fetchone()[0])
        with self.db.bounded(conn):
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(SWEEP_LOCK_WAIT),))
        while True:
            try:
                with self.db.bounded(conn, (SWEEP_LOCK_WAIT + self.db.query_timeout) if self.db.query_timeout else 0):
                    conn.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK,))
                return True
            except pgerrors.LockNotAvailable:
                continue  # the other sweep goes on: wait another turn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        import psycopg

        from izreg.storage.pg import DatabaseNoAnswer

        try:
            # unlock first, and wait for it: closing alone returns before the server
            # process has ended and dropped the lock, and another node trying at once
            # (the next sweep) would find it still held
            with self.db.bounded(conn):
                conn.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK,))
        except (psycopg.Error, DatabaseNoAnswer):
            pass  # the link is gone (or cut): so is the session, and PostgreSQL drops its locks
        finally:
            conn.close()


class Collector:
    """
    @param index: the L{izreg.storage.interfaces.IMetadataIndex} (LMDB or PostgreSQL).
    @param blobs: the L{izreg.storage.interfaces.IBlobStore} (C{delete}, C{digests}, C{stat}).
    @param grace: seconds an unreferenced blob, file or link is kept.
    @param batch: candidates checked and deleted per write transaction.
    """

    def __init__(self, index, blobs, grace: float, untagged_after: float = 0, batch: int = BATCH) -> None:
        self.index = index
        self.blobs = blobs
        self.grace = grace
        self.untagged_after = untagged_after
        self.batch = batch

    # -- scans (read-only) --------------------------------------------------------

    def blob_candidates(self, now: float) -> list[tuple[str, int]]:
        """Unreferenced blob records untouched since before the grace period: (digest, size)."""
        return self.index.gc_blob_candidates(now - self.grace)

    def file_candidates(self, now: float) -> Iterator[tuple[Digest, int]]:
        """Stored blobs with no record, older than the grace period: (digest, size)."""
        cutoff = now - self.grace
        for digest in self.blobs.digests():
            if self.index.blob_record(digest) is not None:
                continue
            found = self.blobs.stat(digest)
            if found is not None and found[1] < cutoff:
                yield digest, found[0]

    def link_candidates(self, now: float) -> list[tuple[str, str]]:
        """(repository, blob) links the repository's manifests do not name, older than the grace period."""
        return self.index.gc_link_candidates(now - self.grace)

    def untagged_candidates(self, now: float) -> list[tuple[str, str]]:
        """(repository, digest) of manifests to expire under C{untagged_after} (0: none)."""
        if not self.untagged_after:
            return []
        return self.index.gc_untagged_candidates(now - self.untagged_after)

    # -- write steps (one short transaction per batch; the server runs them on its writer thread) --

    def collect_blobs(self, digests: list[str], now: float) -> list[int | None]:
        """
        Delete the blobs still unreferenced and untouched; per digest the bytes
        freed, or C{None} if kept. Two transactions: the records go first
        (committed), then the bytes of those still without a record (a blob
        pushed again in between keeps its bytes). A crash between the two
        leaves files no record names, which the next sweep's file part
        deletes; never a record whose bytes are gone.
        """
        freed = self.index.collect_blobs(digests, now - self.grace)
        gone = [Digest.parse(d) for d, size in zip(digests, freed) if size is not None]
        if gone:
            self.index.without_records(gone, self.blobs.delete)
        return freed

    def collect_files(self, digests: list[Digest], now: float) -> list[int | None]:
        """Delete stored blobs that no record names, if they still have none and are old enough."""
        def delete(digest: Digest) -> int | None:
            found = self.blobs.stat(digest)
            if found is None or found[1] >= now - self.grace:
                return None
            self.blobs.delete(digest)
            return found[0]
        return self.index.without_records(digests, delete)

    def collect_links(self, links: list[tuple[str, str]], now: float) -> list[bool]:
        return self.index.collect_links(links, now - self.grace)

    # -- a whole sweep -------------------------------------------------------------------

    def sweep(self, now: Callable[[], float], dry_run: bool = False, progress=None,
              expire: Callable[[str, str], bool] | None = None) -> SweepResult:
        """
        One sweep, blocking, in this thread (``izreg gc``). C{progress(total)}
        returns a callable advanced by one per candidate (a progress bar; called
        once per part, with that part's candidates); C{expire(name, digest)}
        deletes an untagged manifest (with in-use protection and an audit
        record) and says whether it did.
        """
        return run_inline(self.run(now, dry_run=dry_run, progress=progress, count_held=True,
                                   expire=expire if expire is not None else (lambda name, digest: False)))

    async def run(self, now: Callable[[], float], *, run_read: Callable[..., Any] = inline,
                  run_write: Callable[..., Any] = inline, expire: Callable[[str, str], Any],
                  dry_run: bool = False, progress=None, count_held: bool = False) -> SweepResult:
        """
        One sweep, each step run by a runner (L{izreg.storage.runners}): the
        scans by C{run_read}, the write steps by C{run_write} (the server: its
        I/O pool and writer thread; C{izreg gc}: inline, see L{sweep}), untagged
        manifests expired by C{expire(name, digest)} (a bool, or a Deferred of
        one). Each part is scanned just before its batches are collected: the
        links of the blobs just collected went with them, and are no candidates.
        With C{count_held}, one more scan counts the unreferenced blobs the grace
        period keeps (L{SweepResult.held}: each goes at a sweep within C{grace}).
        """
        result = SweepResult()
        for name, digest in await settled(run_read(self.untagged_candidates, now())):
            if not dry_run:
                result.manifests += bool(await settled(expire(name, digest)))
        for kind, scan, collect in self.parts():
            candidates = await settled(run_read(scan, now()))
            step = progress(len(candidates)) if progress else (lambda: None)
            for batch in batches(candidates, self.batch):
                if dry_run:
                    outcome = [True] * len(batch) if kind == "links" else [size for _, size in batch]
                else:
                    outcome = await settled(run_write(collect, self.keys(kind, batch), now()))
                    result.batches += 1
                self.tally(result, kind, batch, outcome)
                for _ in batch:
                    step()
        if count_held:
            self.count_held(result, await settled(run_read(self.index.gc_blob_candidates, now())))
        return result

    @staticmethod
    def count_held(result: SweepResult, unreferenced: list[tuple[str, int]]) -> None:
        """Count in C{result} the C{unreferenced} blobs (all of them, grace or not) that this sweep did not free."""
        freed = set(result.deleted)
        for digest, size in unreferenced:
            if digest not in freed:
                result.held += 1
                result.held_bytes += size

    def parts(self) -> list[tuple[str, Callable, Callable]]:
        """The sweep's parts, in order: (kind, scan(now) -> candidates, collect(keys, now) -> outcomes)."""
        return [("blobs", self.blob_candidates, self.collect_blobs),
                ("files", lambda now: list(self.file_candidates(now)), self.collect_files),
                ("links", self.link_candidates, self.collect_links)]

    @staticmethod
    def keys(kind: str, batch: list) -> list:
        """What C{collect} takes for a batch of candidates: digests, or (name, blob) links."""
        return list(batch) if kind == "links" else [digest for digest, _ in batch]

    @classmethod
    def tally(cls, result: SweepResult, kind: str, batch: list, outcome: list) -> None:
        """Count a batch's outcome (what L{collect_blobs}, L{collect_files} or L{collect_links} returned)."""
        if kind == "links":
            result.links += sum(bool(dropped) for dropped in outcome)
            return
        for (digest, _), freed in zip(batch, outcome):
            cls._count(result, str(digest), freed)

    @staticmethod
    def _count(result: SweepResult, digest: str, freed: int | None) -> None:
        if freed is None:
            result.kept += 1
        else:
            result.files += 1
            result.bytes += freed
            result.deleted.append(digest)

