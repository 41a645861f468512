# -*- test-case-name: tests.http.test_uploads -*-
"""
Upload sessions, the registry's half that is not manifests: start, find
(live or revived from its index record), append chunks, commit into the
blob store, cancel, expire, drop orphans. Mixed into L{izreg.registry.Registry},
whose collaborators it uses (C{uploads}, C{index}, C{run_write}, C{run_io},
C{now}, C{limits} and the index reads of C{_read}).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.core.ranges import upload_range
from izreg.storage.failures import backend_unavailable
from izreg.storage.interfaces import DigestMismatch, IBodySink, StorageError
from izreg.storage.uploads import UploadSession

log = Logger()


class _MovedOn(Exception):
    """The session's record is no longer the one a chunk started from (another node wrote it)."""


#: with a shared index, seconds between two reads of every account's open upload sessions (the cap's count)
OPEN_UPLOADS_REFRESH = 10.0


class UploadSessions:
    """The upload operations of L{izreg.registry.Registry}."""

    async def start_upload(self, repo: Repository) -> UploadSession:
        await self._check_open_uploads(repo.account)
        now = self.now()
        session = self.uploads.create(repo.name, now)
        session.busy = True  # until its record is written: a list of the records read meanwhile may miss it
        try:
            await self.run_write(self.index.put_upload, session.id, session.record(now))
        except BaseException:
            self.uploads.forget(session)  # no record, no client that knows it: nothing would ever drop it
            raise
        finally:
            session.busy = False
        (await self._open_uploads(repo.account)).add(session.id)
        if not self.reads_inline:
            self._open_recent.add((repo.account, session.id))
        return session

    async def _open_uploads(self, account: str) -> set[str]:
        """
        The ids of an account's upload sessions that may still be open: read
        from the index once, then kept here. With a shared index (several
        nodes) they are read again every L{OPEN_UPLOADS_REFRESH} seconds, so
        the cap counts the sessions every node started.
        """
        opened = getattr(self, "_open", None)
        if opened is None or (not self.reads_inline and self.now() - self._open_read >= OPEN_UPLOADS_REFRESH):
            self._open_read, self._open_recent = self.now(), set()
            idle = self._idle_sessions()
            found = await self._read(self.index.list_uploads)
            self._prune_sessions(idle, found)
            if opened is getattr(self, "_open", None):  # no other refresh finished meanwhile
                fresh: dict[str, set[str]] = {}
                for upload_id, record in found:
                    fresh.setdefault(str(record.get("name", ""))[:32], set()).add(upload_id)
                for owner, upload_id in self._open_recent:  # started here while the list was read
                    fresh.setdefault(owner, set()).add(upload_id)
                self._open = fresh
        return self._open.setdefault(account, set())

    def _idle_sessions(self) -> set[str]:
        """With a shared index, the ids of the cached sessions no request holds now (L{_prune_sessions})."""
        if not getattr(self.uploads, "shared", False):
            return set()
        return {upload_id for upload_id, session in self.uploads.sessions.items() if not session.busy}

    def _prune_sessions(self, idle: set[str], found: list[tuple[str, dict]]) -> None:
        """
        Forget the sessions of C{idle} whose record is not in C{found}, a list
        of the records read after C{idle} was taken: another node ended them
        (its commit, cancel or expiry). A push's requests spread over the
        nodes: the one that answered its POST keeps the session it cached
        there, which nothing else on that node would drop before the hourly
        expiry (a cluster soak's nodes grew by ~1.7 KiB per push).
        """
        if idle:
            known = {upload_id for upload_id, _ in found}
            self.uploads.prune(known | (set(self.uploads.sessions) - idle))

    async def _check_open_uploads(self, account: str) -> None:
        """At most C{limits.max_open_uploads} open sessions per account (ended ones are pruned here)."""
        cap = self.limits.max_open_uploads
        if not cap:
            return
        ids = await self._open_uploads(account)
        if len(ids) >= cap:
            still = [i for i in list(ids) if await self._read(self.index.get_upload, i) is not None]
            ids.intersection_update(still)
        if len(ids) >= cap:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS, {"open_uploads": len(ids), "limit": cap},
                f"this account has {len(ids)} upload sessions open, the most allowed (uploads.max_open_per_account):"
                " finish or cancel some, or wait for them to expire",
                headers={"Retry-After": "60"},
            )

    def pending_upload(self, repo: Repository, digest: Digest) -> UploadSession:
        """A session for one monolithic POST body: never recorded, gone if the request fails."""
        return self.uploads.create(repo.name, self.now(), persisted=False, algorithm=digest.algorithm)

    def monolithic_writer(self, repo: Repository, digest: Digest) -> IBodySink:
        """Where a monolithic POST body goes; if the request fails, its bytes go too."""
        return self.uploads.sink(self.pending_upload(repo, digest), discard=True)

    def chunk_writer(self, session: UploadSession, expected: int | None = None) -> IBodySink:
        """Where a PATCH or PUT body appends to C{session}."""
        return self.uploads.sink(session, expected=expected)

    async def upload(self, repo: Repository, upload_id: str) -> UploadSession:
        if self.reads_inline and upload_id in self.uploads.sessions:
            return self._session(repo, upload_id, None)
        record = await self._read(self.index.get_upload, upload_id)
        return self._session(repo, upload_id, record, checked=True)

    def live_upload(self, repo: Repository, upload_id: str) -> UploadSession | None:
        """
        L{upload} without waiting, for a body's headers: the session, or C{None}
        when finding it needs an index read off this thread (call L{upload}).
        """
        if not self.reads_inline:
            return None
        if upload_id in self.uploads.sessions:
            return self._session(repo, upload_id, None)
        return self._session(repo, upload_id, self.index.get_upload(upload_id))

    def _session(self, repo: Repository, upload_id: str, record: dict | None, checked: bool = False) -> UploadSession:
        live = self.uploads.sessions.get(upload_id)
        if checked and live is not None and not live.busy and (record is None or record.get("offset") != live.offset):
            # a shared index: another node moved the session on (or ended it) since this one held it
            self.uploads.forget(live)
        session = self.uploads.get(upload_id, record)
        if session is None or session.name != repo.name or not session.persisted:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, {"upload": upload_id[:100]})
        return session

    async def chunk_done(self, writer: IBodySink) -> int:
        """Make a PATCH body durable and acknowledge the session's new length."""
        session = writer.session
        writer.done(keep_busy=True)
        try:
            offset = await _storage(self.uploads.acknowledge(writer))
            # with a shared index, only over the record this chunk started from: two nodes appending to
            # one session at once (a client's retry sent to another node) must not both be acknowledged
            expected = None if self.reads_inline else writer.start
            if not await self.run_write(self.index.put_upload, session.id, self.uploads.record(session, self.now()),
                                        expected):
                raise _MovedOn()
        except BaseException as e:
            writer.rollback()  # not acknowledged: the session goes on from where it was (a full disk)
            if isinstance(e, _MovedOn):
                self.uploads.forget(session)  # this node's copy is stale: the next request rebuilds it from the record
                raise await self._moved_on(session) from None
            raise
        finally:
            session.busy = False
        return offset

    async def _moved_on(self, session: UploadSession) -> RegistryError:
        record = await self._read(self.index.get_upload, session.id)
        if record is None:
            return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, {"upload": session.id})
        return RegistryError(ErrorCode.RANGE_INVALID,
                             {"reason": "another request wrote to this upload meanwhile", "offset": record["offset"]},
                             "another request wrote to this upload meanwhile: ask its status (GET) and go on from there",
                             headers={"Range": upload_range(record["offset"])})

    async def commit_upload(self, repo: Repository, session: UploadSession, digest: Digest, writer: IBodySink | None) -> int:
        """Verify the whole upload against C{digest} and move it into the blob store."""
        if writer is not None:
            writer.done(keep_busy=True)
        elif session.busy:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, {"upload": session.id}, "upload is busy with another request")
        else:
            session.busy = True
        try:
            try:
                await _storage(self.uploads.seal(session, digest))
            except DigestMismatch as e:
                session.busy = False
                await self._drop(session)
                raise RegistryError(ErrorCode.DIGEST_INVALID, {"expected": str(digest), "actual": e.actual}) from None
            await self.run_write(self._commit_sync, repo, session, digest)
        except BaseException:
            if not session.persisted:
                # a monolithic POST: nothing to resume; bytes a store out of reach kept are orphans, swept later
                defer.maybeDeferred(self.uploads.remove, session).addErrback(
                    lambda f: log.warn("dropping upload {id} failed: {error}", id=session.id, error=f.getErrorMessage()))
            elif getattr(session, "promoted", False):
                self.uploads.forget(session)  # moved into the store but not indexed (a full index): push again
            elif writer is not None:
                writer.rollback()  # the last chunk is not acknowledged: the session goes on from before it
            raise
        finally:
            session.busy = False
        self.uploads.forget(session)
        return session.offset

    def _commit_sync(self, repo: Repository, session: UploadSession, digest: Digest) -> None:
        # writer thread: the move and the index commit are ordered with every other write
        # the move happens inside the index transaction: a garbage collector, which deletes inside its
        # own write transaction (maybe from another process), never sees the bytes without the record
        def place() -> None:
            self.uploads.promote(session, digest)
            session.promoted = True

        self.index.commit_blob(repo.name, digest, session.offset, self.now(), session.id if session.persisted else None,
                               place=place)

    async def _drop(self, session: UploadSession) -> None:
        await defer.maybeDeferred(self.uploads.remove, session)
        if session.persisted:
            await self.run_write(self.index.delete_upload, session.id)

    async def cancel_upload(self, repo: Repository, upload_id: str) -> None:
        session = await self.upload(repo, upload_id)
        if session.busy:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, {"upload": upload_id}, "upload is busy with another request")
        await self._drop(session)

    async def expire_uploads(self, older_than: float) -> int:
        """Remove sessions not touched since C{older_than} with their bytes; return how many."""
        expired = 0
        records = await self._read(self.index.list_uploads)
        if getattr(self.uploads, "shared", False):
            self.uploads.prune({upload_id for upload_id, _ in records})  # sessions ended on other nodes
        for upload_id, record in records:
            session = self.uploads.sessions.get(upload_id)
            if record["updated"] < older_than and not (session and session.busy):
                if session is not None:
                    self.uploads.forget(session)
                # bytes first (an S3 multipart upload is aborted), then the record:
                # a crash in between leaves a record whose next expiry finishes the job
                await self._run_store(self.uploads.expire, upload_id, record)
                await self.run_write(self.index.delete_upload, upload_id)
                expired += 1
        return expired

    async def drop_orphan_uploads(self) -> int:
        """Drop the bytes of stored uploads that no session owns (left by a crash mid-POST); how many."""
        known = {upload_id for upload_id, _ in await self._read(self.index.list_uploads)}
        orphans = await self._run_store(self.uploads.orphans, known)
        for upload_id in orphans:
            await self._run_store(self.uploads.expire, upload_id, None)
        return len(orphans)

    def _run_store(self, f, *args):
        """
        A blocking call of the upload store in its own pool if it has one (S3's: a bounded wait for a
        thread, then a 503; one call at a time here, so a silent bucket holds one thread, and the next
        round tries again), else in the I/O pool (the file system's).
        """
        return (getattr(self.uploads, "run", None) or self.run_io)(f, *args)


async def _storage(d):
    """Await a storage Deferred; a backend failure is a 503 for the client (logged here)."""
    try:
        return await d
    except StorageError as e:
        log.error("storage backend failed: {error}", error=str(e))
        raise backend_unavailable() from None
