# -*- test-case-name: tests.http.test_manifests -*-
"""
The registry's domain operations over the pure core and the storage layer.

Every index read goes through the injected C{run_read} (LMDB: inline, the
default, as its reads are memory-mapped and quick; PostgreSQL: a thread
pool, never the reactor). Anything else that may block (fsync, hashing a
whole file, a write transaction) goes through the injected runners:
C{run_write} (LMDB: one writer thread, so blob moves and index commits are
serialised) and C{run_io} (a small pool for fsync and hashing). Time comes
from the injected C{now}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from twisted.logger import Logger

from izreg.auth.runners import inline, settled
from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import EMPTY_JSON, EMPTY_JSON_DIGEST, Manifest, parse_manifest
from izreg.core.names import Reference, Repository
from izreg.core.preconditions import Precondition, check
from izreg.inuse import InUse
from izreg.storage.audit import AuditLog
from izreg.storage.interfaces import IBlobStore, IMetadataIndex, IUploadStore
from izreg.uploading import UploadSessions

Runner = Callable[..., Awaitable[Any]]
#: who asks for a change, for the audit log: (actor, client address), e.g. ("key:<key id>", "10.0.0.1")
Actor = tuple[str, str | None] | None

#: parse and hash manifests larger than this off the reactor thread
INLINE_MANIFEST = 64 * 1024

#: blobs whose last hold this process remembers (L{Registry.hold_blob}); ~150 bytes each
HELD_REMEMBERED = 4096


@dataclass(frozen=True)
class BlobContent:
    """A readable blob: an L{IBlobReader}, a URL to send the client to, or (a manifest read through /blobs/) bytes."""

    digest: Digest
    size: int
    file: Any = None
    data: bytes | None = None
    redirect: str | None = None


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    data: bytes


@dataclass(frozen=True)
class Limits:
    """The configured limits (L{izreg.service.config.Config} holds their defaults)."""

    max_manifest_size: int
    delete_enabled: bool
    #: open upload sessions per account (0: no cap); past it, 429
    max_open_uploads: int


class Registry(UploadSessions):
    log = Logger()

    def __init__(
        self,
        index: IMetadataIndex,
        blobs: IBlobStore,
        uploads: IUploadStore,
        now: Callable[[], float],
        run_write: Runner,
        run_io: Runner,
        limits: Limits,
        audit: AuditLog | None = None,
        in_use: InUse | None = None,
        run_read: Runner | None = None,
        on_change: Callable[[dict, dict], None] | None = None,
        hold_refresh: float = 0.0,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.uploads = uploads
        self.now = now
        self.run_write = run_write
        #: index reads (L{izreg.auth.runners}: a value, or a Deferred of it); None: inline (LMDB), so a
        #: session can be found at headers time (L{live_upload})
        self.run_read = run_read or inline
        self.reads_inline = run_read is None or run_read is inline
        self.run_io = run_io
        self.limits = limits
        self.audit = audit
        self.in_use = in_use  # None: deletes are not checked against device pulls
        #: C{on_change(audit entry, facts)} on the writer thread after a push or delete (webhooks)
        self.on_change = on_change
        #: seconds in which another look at a blob no manifest names does not hold it again (L{hold_blob})
        self.hold_refresh = hold_refresh
        #: (repository, digest) -> when this process last held it; the oldest dropped past HELD_REMEMBERED
        self._held: dict[tuple[str, str], float] = {}

    def _read(self, f: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """An index read through C{run_read}, awaited."""
        return settled(self.run_read(f, *args))

    # -- blobs ----------------------------------------------------------------

    async def mount(self, repo: Repository, digest: Digest, source: Repository | None) -> int | None:
        """
        Link a blob from another repository of the same account; the size, or
        C{None} when it cannot be mounted. Without C{source}, any repository of
        the account that has the blob will do. Never across accounts.
        """
        if source is not None:
            if source.account != repo.account:
                return None
            sources = [source.name]
        else:
            # one of the account's repositories that link it (a seek: not every repository that links it)
            sources = await self._read(self.index.repos_linking, digest, f"{repo.account}/", 1)
        if not sources:
            return None
        if not await self.run_write(self.index.mount_blob, repo.name, digest, sources, self.now()):
            return None
        return await self._read(self.index.blob_size, repo.name, digest)

    async def get_blob(self, repo: Repository, digest: Digest, redirect: bool = False) -> BlobContent:
        """The blob's bytes; with C{redirect}, a URL instead when the store offers one."""
        size = await self._read(self.index.blob_size, repo.name, digest)
        if size is not None:
            if redirect:
                url = self.blobs.redirect_url(digest)
                if url is not None:
                    return BlobContent(digest, size, redirect=url)
            f = self.blobs.open(digest)
            if f is not None:
                return BlobContent(digest, size, file=f)
            self.log.error("blob {digest} is indexed but its file is missing", digest=str(digest))
        manifest = await self._read(self.index.get_manifest, repo.name, digest)
        if manifest is not None:
            return BlobContent(digest, len(manifest[1]), data=manifest[1])
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, {"digest": str(digest)})

    async def hold_blob(self, repo: Repository, digest: Digest) -> None:
        """
        A client looks at a blob no manifest of the repository uses yet (it
        will push a manifest naming it): keep it from garbage collection for
        a grace period, as if it had just been uploaded. One read otherwise.
        A hold is a write transaction (an fsync): once this process has held a
        blob, looks at it in the next C{hold_refresh} seconds write nothing
        (docker checks its layers with a HEAD each, again on every retry; a
        client pulling a bare blob again and again), so the blob stays held
        for the grace less C{hold_refresh} after any look.
        """
        held = (repo.name, str(digest))
        now = self.now()
        since = self._held.get(held)
        if since is not None and 0 <= now - since < self.hold_refresh:
            return  # held a moment ago: for the grace less hold_refresh at least (get_blob still checks the link)
        if not await self._read(self.index.unused_blob, repo.name, digest):
            return
        if not await self.run_write(self.index.touch_blob, repo.name, digest, now):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, {"digest": str(digest)})
        if self.hold_refresh > 0:
            self._held.pop(held, None)
            self._held[held] = now
            if len(self._held) > HELD_REMEMBERED:
                del self._held[next(iter(self._held))]

    async def delete_blob(self, repo: Repository, digest: Digest, who: Actor = None) -> None:
        self.check_delete()
        entry = _audit_entry("delete-blob", repo, f"{repo}@{digest}", who)
        if not await self.run_write(self._audited, entry, self.index.unlink_blob, repo.name, digest):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, {"digest": str(digest)})

    def _audited(self, entry: dict, operation: Callable[..., Any], *args: Any, facts: dict | None = None) -> Any:
        # writer thread: the change, then its audit record (only if something changed),
        # then its webhook events (C{on_change}, izreg.service.webhooks)
        done = operation(*args)
        if done and self.audit is not None:
            if isinstance(done, dict):
                entry = {**entry, "detail": {**(entry["detail"] or {}), **done}}
            self.audit.record(now=self.now(), **entry)
        if done and self.on_change is not None and facts is not None:
            try:
                self.on_change(entry, facts)
            except Exception:
                self.log.failure("queueing webhook events failed")
        return done

    def check_delete(self) -> None:
        """405 UNSUPPORTED when deletes are disabled (C{[limits] delete_enabled})."""
        if not self.limits.delete_enabled:
            raise RegistryError(ErrorCode.UNSUPPORTED, {"reason": "deletes are disabled on this registry"})

    # -- manifests -------------------------------------------------------------

    async def put_manifest(self, repo: Repository, reference: Reference, data: bytes, content_type: str | None,
                           who: Actor = None, expect: Precondition | None = None) -> tuple[Digest, Manifest]:
        """
        Store a manifest (and move its tag). C{expect}: what the reference must
        name now, checked in the write transaction that stores it (412, nothing
        written); an audit record only for what was stored.
        """
        if len(data) > self.limits.max_manifest_size:
            raise RegistryError(ErrorCode.TOO_LARGE, {"size": len(data), "limit": self.limits.max_manifest_size}, "manifest too large")
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        if len(data) > INLINE_MANIFEST:
            manifest, digest = await self.run_io(_parse_and_hash, data, content_type, algorithm)
        else:
            manifest, digest = _parse_and_hash(data, content_type, algorithm)
        if isinstance(reference, Digest) and digest != reference:
            raise RegistryError(ErrorCode.DIGEST_INVALID, {"expected": str(reference), "actual": str(digest)})
        tag = None if isinstance(reference, Digest) else reference
        config = manifest.config
        if config is not None and config.digest == EMPTY_JSON_DIGEST and config.size == len(EMPTY_JSON):
            if expect is not None:  # a refused PUT links nothing, not even the empty config (checked again below)
                check(expect, await self._current(repo, tag, digest))
            await self._ensure_empty_config(repo)
        subject = manifest.subject
        meta = {
            "mediaType": manifest.media_type,
            "size": len(data),
            "subject": str(subject.digest) if subject else None,
            "created": self.now(),
        }
        referrer = (str(subject.digest), manifest.referrer_descriptor(digest, len(data)).to_json()) if subject else None
        target = f"{repo}:{tag}" if tag is not None else f"{repo}@{digest}"
        entry = _audit_entry("push-tag" if tag is not None else "push-manifest", repo, target, who,
                             {"digest": str(digest)} if tag is not None else None)
        facts = {"repository": repo.name, "digest": str(digest), "tag": tag, "media_type": manifest.media_type}
        await self.run_write(
            self._audited,
            entry,
            self._put_manifest_sync,
            repo.name,
            digest,
            meta,
            data,
            [(str(d.digest), d.size) for d in manifest.required_blobs()],
            [str(d.digest) for d in manifest.children],
            tag,
            referrer,
            self.now(),
            expect,
            facts=facts,
        )
        return digest, manifest

    async def _current(self, repo: Repository, tag: str | None, digest: Digest) -> str | None:
        """What a write's precondition is checked against: the tag's digest, or the digest if the repository has it."""
        if tag is not None:
            found = await self._read(self.index.resolve_tag, repo.name, tag)
            return str(found) if found is not None else None
        return str(digest) if await self._read(self.index.get_manifest, repo.name, digest) is not None else None

    def _put_manifest_sync(self, *args: Any) -> bool:
        self.index.put_manifest(*args)
        return True

    async def _ensure_empty_config(self, repo: Repository) -> None:
        """The OCI empty config ``{}`` is always available, pushed or not."""
        if await self._read(self.index.blob_size, repo.name, EMPTY_JSON_DIGEST) is None:
            await self.run_write(self._store_small_sync, repo, EMPTY_JSON_DIGEST, EMPTY_JSON)

    def _store_small_sync(self, repo: Repository, digest: Digest, data: bytes) -> None:
        self.index.commit_blob(repo.name, digest, len(data), self.now(), None,
                               place=lambda: self.blobs.put_bytes(digest, data))

    async def resolve(self, repo: Repository, reference: Reference) -> Digest:
        if isinstance(reference, Digest):
            return reference
        digest = await self._read(self.index.resolve_tag, repo.name, reference)
        if digest is None:
            raise await self._unknown_manifest(repo, reference)
        return digest

    async def _unknown_manifest(self, repo: Repository, reference: Reference) -> RegistryError:
        if not await self._read(self.index.repo_exists, repo.name):
            return RegistryError(ErrorCode.NAME_UNKNOWN, {"name": repo.name})
        return RegistryError(ErrorCode.MANIFEST_UNKNOWN, {"reference": str(reference)})

    async def get_manifest(self, repo: Repository, reference: Reference,
                           accepted: frozenset[str] = frozenset()) -> StoredManifest:
        if isinstance(reference, Digest):
            digest, found = reference, await self._read(self.index.get_manifest, repo.name, reference)
        else:  # both reads in one runner call: one thread hop, not two, on PostgreSQL (each is its own store call)
            digest, found = await self._read(self._manifest_by_tag, repo.name, reference)
        if found is None:
            raise await self._unknown_manifest(repo, reference)
        meta, data = found
        media_type = meta["mediaType"]
        if not isinstance(reference, Digest) and media_type in mt.INDEX_TYPES and not mt.acceptable(media_type, accepted):
            child = await self._default_platform_child(repo, data, accepted)
            if child is not None:
                return child
        return StoredManifest(digest, media_type, data)

    def _manifest_by_tag(self, name: str, tag: str) -> tuple[Digest | None, tuple[dict, bytes] | None]:
        digest = self.index.resolve_tag(name, tag)
        return digest, (None if digest is None else self.index.get_manifest(name, digest))

    async def _default_platform_child(self, repo: Repository, data: bytes,
                                      accepted: frozenset[str]) -> StoredManifest | None:
        """For a client that cannot read an index: its linux/amd64 manifest, as distribution does."""
        # an index of up to max_manifest_size (4 MiB): parsed in a thread when large
        document = json.loads(data) if len(data) <= INLINE_MANIFEST else await self.run_io(json.loads, data)
        for entry in document.get("manifests", []):
            platform = entry.get("platform") or {}
            if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                try:
                    return await self.get_manifest(repo, Digest.parse(entry.get("digest", "")), accepted)
                except RegistryError:
                    return None
        return None

    async def delete_manifest(self, repo: Repository, reference: Reference, who: Actor = None, force: bool = False,
                              expect: Precondition | None = None) -> None:
        """
        By digest: the manifest, its tags, and the children of an index that
        nothing else holds. By tag: only the tag. Refused (409) when devices
        pulled what it removes (for a tag: the manifest it is the last tag of)
        within the in-use window, unless C{force}. C{expect}: what the reference
        must name (412 before the 409; for a tag checked again in the delete's
        transaction); a reference that names nothing stays a 404.
        """
        self.check_delete()
        if isinstance(reference, Digest):
            target, action = f"{repo}@{reference}", "delete-manifest"
            doomed = await self._read(self.index.deletion, repo.name, reference)
            if not doomed:
                raise await self._unknown_manifest(repo, reference)
            check(expect, str(reference))
            protected = set(doomed) | set(await self._read(self.index.children_of, repo.name, reference))
            operation, args = self.index.delete_tree, (repo.name, reference)
            facts = {"repository": repo.name, "digest": str(reference), "tag": None}
        else:
            target, action = f"{repo}:{reference}", "delete-tag"
            digest = await self.resolve(repo, reference)
            check(expect, str(digest))
            last_tag = await self._read(self.index.tags_of, repo.name, digest) == [reference]
            protected = {str(digest), *await self._read(self.index.children_of, repo.name, digest)} if last_tag else set()
            operation, args = self.index.delete_tag, (repo.name, reference, expect)
            facts = {"repository": repo.name, "digest": None, "tag": reference}
        detail = None
        if self.in_use is not None and protected:  # the pull records: a store read, like the index's
            if force:
                count, last = await self._read(self.in_use.pulled, repo.name, sorted(protected))
                if count:
                    detail = {"forced": True, "devices": count, "last_pulled": last}
            else:
                await self._read(self.in_use.refuse, repo.name, target, sorted(protected))
        entry = _audit_entry(action, repo, target, who, detail)
        if not await self.run_write(self._audited, entry, operation, *args, facts=facts):
            raise await self._unknown_manifest(repo, reference)

    # -- listings ----------------------------------------------------------------

    async def repo_exists(self, repo: Repository) -> bool:
        return await self._read(self.index.repo_exists, repo.name)

    def index_version(self) -> object | None:
        """L{IMetadataIndex.version}: answers at once, so it is asked here, on the caller's thread."""
        return self.index.version()

    async def tags(self, repo: Repository, limit: int, last: str | None) -> tuple[list[str], bool]:
        if not await self._read(self.index.repo_exists, repo.name):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, {"name": repo.name})
        return await self._read(self.index.list_tags, repo.name, last, limit)

    async def catalog(self, account: str | None, limit: int, last: str | None) -> tuple[list[str], bool]:
        return await self._read(self.index.list_repos, f"{account}/" if account else "", last, limit)

    async def referrers(self, repo: Repository, subject: Digest, artifact_type: str | None) -> list[dict]:
        found = await self._read(self.index.referrers, repo.name, subject)
        if artifact_type is not None:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return found


def _audit_entry(action: str, repo: Repository, target: str, who: Actor, detail: Any = None) -> dict:
    actor, address = who or ("anonymous", None)
    return {"action": action, "account": repo.account, "actor": actor, "target": target,
            "address": address, "detail": detail}


def _parse_and_hash(data: bytes, content_type: str | None, algorithm: str) -> tuple[Manifest, Digest]:
    return parse_manifest(data, content_type), Digest.of(data, algorithm)
