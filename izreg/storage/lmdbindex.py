# -*- test-case-name: tests.storage.test_index -*-
"""
The LMDB metadata index: repositories, tags, manifests, blob links, upload
sessions and referrers.

One sync method is one transaction, and no transaction outlives its method.
Reads are cheap (memory-mapped) and may run on the reactor thread; writes
commit with an fsync, so the service runs them on its writer thread.
Checks that must be atomic with a write (a manifest's blobs exist, a mount's
source is linked) happen inside the write transaction.
"""

from __future__ import annotations

import itertools
from typing import Callable, TypeVar

import lmdb
from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import Precondition, check
from izreg.storage import schema
from izreg.storage.interfaces import IMetadataIndex
from izreg.storage.lmdbstore import LmdbStore, dump, load
from izreg.storage.refs import (
    COUNTERS, REFERENCING_SHOWN, Refs, blob_referenced, manifest_blobs, manifest_children, repo_key, split_manifest,
)
from izreg.storage.refs import scan as _scan
from izreg.storage.schema import key, prefix

#: a refused blob delete looks for the manifests that name the blob in at most this many manifests of the
#: repository, and this many bytes of them (L{Index._naming})
NAMING_WALK = 1000
NAMING_WALK_BYTES = 16 * 1024 * 1024


_children = manifest_children

T = TypeVar("T")

#: entries per read transaction in the collector's scans (L{Index._scan_in_chunks}): LMDB reuses a page
#: freed by a write only once no reader holds a snapshot older than that write, so a scan of a busy
#: index in one read transaction (seconds, on a thread that shares the GIL with the reactor) made every
#: write meanwhile take new pages, and the file grew in steps to its high-water mark
SCAN_CHUNK = 64


@implementer(IMetadataIndex)
class Index(LmdbStore):
    """The registry's metadata over an open LMDB environment."""

    def __init__(self, env: lmdb.Environment) -> None:
        super().__init__(env, *schema.ALL)
        self._db = self._handles
        self.refs = Refs(self._db)

    def close(self) -> None:
        self.env.close()

    def version(self) -> int:
        """The id of the last committed write transaction: a read transaction's snapshot (any process's writes)."""
        with self.reading() as txn:
            return txn.id()

    # -- repositories -----------------------------------------------------

    def _touch_repo(self, txn, name: str, now: float) -> None:
        k = name.encode()
        if txn.get(k, db=self._db[schema.REPOS]) is None:
            txn.put(k, dump({"created": now}), db=self._db[schema.REPOS])

    def _drop_repo_if_empty(self, txn, name: str) -> None:
        for db in (schema.MANIFESTS, schema.LINKS, schema.TAGS):
            if next(_scan(txn, self._db[db], prefix(name)), None) is not None:
                return
        txn.delete(name.encode(), db=self._db[schema.REPOS])

    def repo_exists(self, name: str) -> bool:
        with self.reading() as txn:
            return txn.get(name.encode(), db=self._db[schema.REPOS]) is not None

    def list_repos(self, start: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Repository names starting with C{start}, after C{last}; and whether more follow."""
        with self.reading() as txn:
            names = []
            for k, _ in _scan(txn, self._db[schema.REPOS], start.encode(), last.encode() if last else None):
                if len(names) == limit:
                    return names, True
                names.append(k.decode())
            return names, False

    def repo_stats(self, name: str) -> dict | None:
        """The repository's counters (see L{izreg.storage.refs}), or C{None}."""
        with self.reading() as txn:
            return self.refs.stats(txn, name)

    def list_repo_stats(self, start: str, last: str | None, limit: int) -> tuple[list[tuple[str, dict]], bool]:
        """Like L{list_repos}, with each repository's counters."""
        with self.reading() as txn:
            out = []
            for k, _ in _scan(txn, self._db[schema.REPOS], start.encode(), last.encode() if last else None):
                if len(out) == limit:
                    return out, True
                out.append((k.decode(), self.refs.stats(txn, k.decode())))
            return out, False

    # -- blobs and links ---------------------------------------------------

    def blob_size(self, name: str, digest: Digest) -> int | None:
        """The size of a blob the repository may read, or C{None}."""
        with self.reading() as txn:
            if txn.get(key(name, str(digest)), db=self._db[schema.LINKS]) is None:
                return None
            record = txn.get(str(digest).encode(), db=self._db[schema.BLOBS])
            return load(record)["size"] if record is not None else None

    def blob_record(self, digest: Digest) -> dict | None:
        with self.reading() as txn:
            record = txn.get(str(digest).encode(), db=self._db[schema.BLOBS])
            return load(record) if record is not None else None

    def _link(self, txn, name: str, digest: str, now: float) -> None:
        # the value is the link's time: garbage collection drops a link the repository's
        # manifests do not use once it is older than the grace period
        txn.put(key(name, digest), repr(float(now)).encode(), db=self._db[schema.LINKS])
        txn.put(key(digest, name), b"", db=self._db[schema.BLOBLINKS])
        self._touch_repo(txn, name, now)

    def commit_blob(self, name: str, digest: Digest, size: int, now: float, upload_id: str | None, place=None) -> None:
        """
        Record a blob that is now in place, link it, and end its upload session.
        C{place()}, if given, puts the bytes in place inside the write
        transaction: a garbage collector (which deletes inside its own write
        transaction, maybe from another process) never sees a blob between
        file and record.
        """
        with self.writing() as txn:
            d = str(digest)
            if place is not None:
                place()
            self._touch_blob(txn, d, size, now)
            self._link(txn, name, d, now)
            if upload_id is not None:
                txn.delete(upload_id.encode(), db=self._db[schema.UPLOADS])

    def mount_blob(self, name: str, digest: Digest, sources: list[str], now: float) -> bool:
        """Link C{digest} into C{name} if one of the repositories C{sources} has it linked."""
        d = str(digest)
        with self.writing() as txn:
            if txn.get(d.encode(), db=self._db[schema.BLOBS]) is None:
                return False
            # one read per source (not a scan of every repository linking the blob)
            if not any(txn.get(key(repo, d), db=self._db[schema.LINKS]) is not None for repo in sources):
                return False
            self._touch_blob(txn, d, None, now)
            self._link(txn, name, d, now)
            return True

    def _touch_blob(self, txn, d: str, size: int | None, now: float) -> None:
        """Create the blob's record or refresh its C{touched} time (which holds off garbage collection)."""
        raw = txn.get(d.encode(), db=self._db[schema.BLOBS])
        record = load(raw) if raw is not None else {"size": size, "created": now}
        record["touched"] = now
        txn.put(d.encode(), dump(record), db=self._db[schema.BLOBS])

    def unused_blob(self, name: str, digest: Digest) -> bool:
        """Whether the repository has the blob linked but none of its manifests names it (one read)."""
        k = key(name, str(digest))
        with self.reading() as txn:
            return txn.get(k, db=self._db[schema.LINKS]) is not None and \
                txn.get(k, db=self._db[schema.REPOBLOBS]) is None

    def touch_blob(self, name: str, digest: Digest, now: float) -> bool:
        """
        Hold a blob (and the repository's link to it) off garbage collection
        for a grace period, as if just uploaded; C{False} if it is gone.
        """
        d = str(digest)
        with self.writing() as txn:
            if txn.get(d.encode(), db=self._db[schema.BLOBS]) is None or \
                    txn.get(key(name, d), db=self._db[schema.LINKS]) is None:
                return False
            self._touch_blob(txn, d, None, now)
            txn.put(key(name, d), repr(float(now)).encode(), db=self._db[schema.LINKS])
            return True

    def blob_referenced(self, digest: Digest) -> bool:
        """Whether any manifest of any repository names the blob."""
        with self.reading() as txn:
            return self.refs.blob_referenced(txn, str(digest))

    def repos_linking(self, digest: Digest, within: str = "", limit: int | None = None) -> list[str]:
        d = str(digest)
        with self.reading() as txn:
            found = _scan(txn, self._db[schema.BLOBLINKS], prefix(d) + within.encode())
            return [k.split(schema.SEP, 1)[1].decode() for k, _ in itertools.islice(found, limit)]

    def unlink_blob(self, name: str, digest: Digest) -> bool:
        d = str(digest)
        with self.writing() as txn:
            if txn.get(key(name, d), db=self._db[schema.LINKS]) is None:
                return False
            if txn.get(key(name, d), db=self._db[schema.REPOBLOBS]) is not None:
                raise blob_referenced(d, self._naming(txn, name, d))
            txn.delete(key(name, d), db=self._db[schema.LINKS])
            txn.delete(key(d, name), db=self._db[schema.BLOBLINKS])
            self._drop_repo_if_empty(txn, name)
            return True

    def _naming(self, txn, name: str, d: str) -> list[str]:
        """
        The first manifests of the repository (by digest) that name blob C{d}, only for a refusal: a walk
        in the one writer (every account's pushes wait for it), so it stops after L{NAMING_WALK} manifests
        or L{NAMING_WALK_BYTES} of them (a repository of 200 manifests of 4 MiB naming 20,000 blobs each
        held the writer 6-8 s per refused delete), and parses only a manifest whose record has C{d}.
        """
        start, needle = prefix(name), d.encode()
        found, budget = [], NAMING_WALK_BYTES
        for k, v in itertools.islice(_scan(txn, self._db[schema.MANIFESTS], start), NAMING_WALK):
            if needle in v and d in manifest_blobs(*split_manifest(v)):  # a record that names it has its digest
                found.append(k[len(start):].decode())
                if len(found) == REFERENCING_SHOWN:
                    break
            budget -= len(v)
            if budget <= 0:
                break
        return found

    # -- upload sessions -----------------------------------------------------

    def put_upload(self, upload_id: str, record: dict, expected_offset: int | None = None) -> bool:
        with self.writing() as txn:
            if expected_offset is not None:
                raw = txn.get(upload_id.encode(), db=self._db[schema.UPLOADS])
                if raw is None or load(raw).get("offset") != expected_offset:
                    return False
            txn.put(upload_id.encode(), dump(record), db=self._db[schema.UPLOADS])
        return True

    def get_upload(self, upload_id: str) -> dict | None:
        if len(upload_id.encode()) > schema.MAX_KEY:
            return None  # an id from a URL: no session has one this long
        with self.reading() as txn:
            raw = txn.get(upload_id.encode(), db=self._db[schema.UPLOADS])
            return load(raw) if raw is not None else None

    def delete_upload(self, upload_id: str) -> bool:
        with self.writing() as txn:
            return txn.delete(upload_id.encode(), db=self._db[schema.UPLOADS])

    def list_uploads(self) -> list[tuple[str, dict]]:
        with self.reading() as txn:
            return [(k.decode(), load(v)) for k, v in txn.cursor(db=self._db[schema.UPLOADS])]

    # -- manifests, tags and referrers ----------------------------------------

    def put_manifest(
        self,
        name: str,
        digest: Digest,
        meta: dict,
        data: bytes,
        blobs: list[tuple[str, int]],
        children: list[str],
        tag: str | None,
        referrer: tuple[str, dict] | None,
        now: float,
        expect: Precondition | None = None,
    ) -> None:
        """
        Store a manifest atomically with the check that everything it references is
        in the repository: C{blobs} as (digest, size) links, C{children} as manifests;
        and with C{expect} on what the tag (or digest) names, checked first.
        """
        d = str(digest)
        with self.writing() as txn:
            if expect is not None:
                if tag is not None:
                    current = txn.get(key(name, tag), db=self._db[schema.TAGS])
                    check(expect, current.decode() if current is not None else None)
                else:
                    check(expect, d if txn.get(key(name, d), db=self._db[schema.MANIFESTS]) is not None else None)
            missing = []
            for blob, size in blobs:
                record = txn.get(blob.encode(), db=self._db[schema.BLOBS])
                if txn.get(key(name, blob), db=self._db[schema.LINKS]) is None or record is None:
                    missing.append({"digest": blob})
                elif load(record)["size"] != size:
                    raise RegistryError(
                        ErrorCode.MANIFEST_INVALID,
                        {"reason": "descriptor size does not match the blob", "digest": blob, "size": size},
                    )
            for child in children:
                if txn.get(key(name, child), db=self._db[schema.MANIFESTS]) is None:
                    missing.append({"digest": child, "kind": "manifest"})
            if missing:
                raise RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, {"missing": missing[:20]})
            self._touch_repo(txn, name, now)
            existing = txn.get(key(name, d), db=self._db[schema.MANIFESTS])
            if existing is None:
                meta = {**meta, "blobs": sorted(dict(blobs).items()), "children": sorted(set(children))}
                txn.put(key(name, d), dump(meta) + schema.SEP + data, db=self._db[schema.MANIFESTS])
                self.refs.add_manifest(txn, name, meta, data, now)
            else:
                self.refs.pushed(txn, name, now)
            if tag is not None:
                previous = txn.get(key(name, tag), db=self._db[schema.TAGS])
                txn.put(key(name, tag), d.encode(), db=self._db[schema.TAGS])
                self.refs.set_tag(txn, name, tag, d, previous.decode() if previous is not None else None)
            if referrer is not None:
                subject, descriptor = referrer
                txn.put(schema.bounded_key(name, subject, d), dump(descriptor), db=self._db[schema.REFERRERS])

    def get_manifest(self, name: str, digest: Digest) -> tuple[dict, bytes] | None:
        with self.reading() as txn:
            raw = txn.get(key(name, str(digest)), db=self._db[schema.MANIFESTS])
            if raw is None:
                return None
            meta, data = bytes(raw).split(schema.SEP, 1)
            return load(meta), data

    def list_manifests(self, name: str, last: str | None, limit: int) -> tuple[list[tuple[str, dict, bytes, list[str]]], bool]:
        """(digest, meta, bytes, tags) of the repository's manifests by digest, after C{last}; and whether more follow."""
        start = prefix(name)
        with self.reading() as txn:
            out = []
            for k, v in _scan(txn, self._db[schema.MANIFESTS], start, key(name, last) if last else None):
                if len(out) == limit:
                    return out, True
                digest = k[len(start):].decode()
                meta, data = split_manifest(v)
                out.append((digest, meta, data, self.refs.tags_of(txn, name, digest)))
            return out, False

    def tags_of(self, name: str, digest: Digest) -> list[str]:
        with self.reading() as txn:
            return self.refs.tags_of(txn, name, str(digest))

    def resolve_tag(self, name: str, tag: str) -> Digest | None:
        with self.reading() as txn:
            raw = txn.get(key(name, tag), db=self._db[schema.TAGS])
            return Digest(*raw.decode().split(":", 1)) if raw is not None else None

    def list_tags(self, name: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        start = prefix(name)
        with self.reading() as txn:
            tags = []
            after = key(name, last) if last else None
            for k, _ in _scan(txn, self._db[schema.TAGS], start, after):
                if len(tags) == limit:
                    return tags, True
                tags.append(k[len(start):].decode())
            return tags, False

    def delete_tag(self, name: str, tag: str, expect: Precondition | None = None) -> bool:
        with self.writing() as txn:
            if expect is not None:
                current = txn.get(key(name, tag), db=self._db[schema.TAGS])
                if current is not None:
                    check(expect, current.decode())
            digest = txn.pop(key(name, tag), db=self._db[schema.TAGS])
            if digest is None:
                return False
            self.refs.remove_tag(txn, name, tag, digest.decode())
            self._drop_repo_if_empty(txn, name)
            return True

    def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Delete a manifest, every tag that points at it, and its referrers entry."""
        return self.delete_tree(name, digest, cascade=False) is not None

    def children_of(self, name: str, digest: Digest) -> list[str]:
        """The child manifests an index names (none for an image or an unknown digest)."""
        with self.reading() as txn:
            raw = txn.get(key(name, str(digest)), db=self._db[schema.MANIFESTS])
            return _children(*split_manifest(raw)) if raw is not None else []

    def deletion(self, name: str, digest: Digest) -> list[str]:
        """What L{delete_tree} would remove now: the manifest, then the children it takes along."""
        with self.reading() as txn:
            return self._doomed(txn, name, str(digest))

    def _doomed(self, txn, name: str, d: str) -> list[str]:
        if txn.get(key(name, d), db=self._db[schema.MANIFESTS]) is None:
            return []
        doomed = [d]
        parents: dict[str, set[str]] | None = None
        queue = [d]
        while queue:
            meta, data = split_manifest(txn.get(key(name, queue.pop()), db=self._db[schema.MANIFESTS]))
            for child in _children(meta, data):
                if child in doomed or txn.get(key(name, child), db=self._db[schema.MANIFESTS]) is None:
                    continue
                if self.refs.tags_of(txn, name, child):
                    continue  # tagged: kept
                if parents is None:
                    parents = self._parents(txn, name)
                if not parents.get(child, set()) <= set(doomed):
                    continue  # another index still holds it: kept
                doomed.append(child)
                queue.append(child)
        return doomed

    def _parents(self, txn, name: str) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {}
        start = prefix(name)
        for k, v in _scan(txn, self._db[schema.MANIFESTS], start):
            for child in _children(*split_manifest(v)):
                parents.setdefault(child, set()).add(k[len(start):].decode())
        return parents

    def delete_tree(self, name: str, digest: Digest, cascade: bool = True) -> dict | None:
        """
        Delete a manifest, every tag on it and its referrers entry; with
        C{cascade}, also the child manifests of an index that no tag and no
        other index of the repository holds (recursively). Referrers of a
        deleted manifest stay (a referrer may exist before or without its
        subject). Returns C{{"deleted": [digests], "tags": [tags]}}, or C{None}.
        """
        d = str(digest)
        with self.writing() as txn:
            doomed = self._doomed(txn, name, d) if cascade else [d]
            if txn.get(key(name, d), db=self._db[schema.MANIFESTS]) is None:
                return None
            tags = []
            for m in doomed:
                meta, data = split_manifest(txn.pop(key(name, m), db=self._db[schema.MANIFESTS]))
                self.refs.remove_manifest(txn, name, meta, data)
                for tag in self.refs.tags_of(txn, name, m):
                    txn.delete(key(name, tag), db=self._db[schema.TAGS])
                    self.refs.remove_tag(txn, name, tag, m)
                    tags.append(tag)
                if meta.get("subject"):
                    txn.delete(schema.bounded_key(name, meta["subject"], m), db=self._db[schema.REFERRERS])
            self._drop_repo_if_empty(txn, name)
            return {"deleted": doomed, "tags": tags}

    def purge_repo(self, name: str) -> int:
        """Delete a repository with everything in it (manifests, tags, referrers, links); return its manifest count."""
        start = prefix(name)
        with self.writing() as txn:
            manifests = 0
            for k, v in list(_scan(txn, self._db[schema.MANIFESTS], start)):
                self.refs.remove_manifest(txn, name, *split_manifest(v))
                txn.delete(k, db=self._db[schema.MANIFESTS])
                manifests += 1
            for db in (schema.TAGS, schema.REFERRERS):
                for k, _ in list(_scan(txn, self._db[db], start)):
                    txn.delete(k, db=self._db[db])
            for k, _ in list(_scan(txn, self._db[schema.TAGSOF], prefix(repo_key(name)))):
                txn.delete(k, db=self._db[schema.TAGSOF])
            for k, _ in list(_scan(txn, self._db[schema.LINKS], start)):
                txn.delete(k, db=self._db[schema.LINKS])
                txn.delete(key(k[len(start):], name), db=self._db[schema.BLOBLINKS])
            txn.delete(name.encode(), db=self._db[schema.REPOS])
            return manifests

    def referrers(self, name: str, subject: Digest) -> list[dict]:
        with self.reading() as txn:
            return [load(v) for _, v in _scan(txn, self._db[schema.REFERRERS], prefix(name, str(subject)))]

    # -- whole-index reads: browse, metrics ---------------------------------------

    def account_blobs(self, account: str) -> set[str]:
        """The blobs the manifests of the account's repositories name."""
        with self.reading() as txn:
            return {blob for _, blob in self.refs.repo_blobs(txn, f"{account}/")}

    def totals(self) -> dict:
        """Counts and bytes of blobs, manifests and upload sessions (the metrics' gauges)."""
        totals = {"blobs": 0, "blob_bytes": 0, "manifests": 0, "manifest_bytes": 0, "uploads": 0}

        def blob(txn, k: bytes, value: bytes) -> None:
            totals["blobs"] += 1
            totals["blob_bytes"] += load(value).get("size") or 0

        def manifest(txn, k: bytes, value: bytes) -> None:
            totals["manifests"] += 1
            totals["manifest_bytes"] += len(value) - value.index(schema.SEP) - 1

        # a scrape every few seconds must not hold one snapshot across a large index (see SCAN_CHUNK)
        self._scan_in_chunks(schema.BLOBS, blob)
        self._scan_in_chunks(schema.MANIFESTS, manifest)
        with self.reading() as txn:
            totals["uploads"] = txn.stat(self._db[schema.UPLOADS])["entries"]
        return totals

    # -- garbage collection (izreg.storage.gc) -------------------------------------------

    def gc_blob_candidates(self, cutoff: float) -> list[tuple[str, int]]:
        """Blob records no manifest names, untouched since before C{cutoff}: (digest, size)."""
        def pick(txn, k: bytes, v: bytes) -> tuple[str, int] | None:
            record = load(v)
            if _touched(record) < cutoff and not self.refs.blob_referenced(txn, k.decode()):
                return k.decode(), record.get("size") or 0
            return None
        return self._scan_in_chunks(schema.BLOBS, pick)

    def gc_link_candidates(self, cutoff: float) -> list[tuple[str, str]]:
        """(repository, blob) links older than C{cutoff} that the repository's manifests do not name."""
        def pick(txn, k: bytes, v: bytes) -> tuple[str, str] | None:
            if _link_time(v) < cutoff and txn.get(k, db=self._db[schema.REPOBLOBS]) is None:
                name, blob = k.decode().split("\x00", 1)
                return name, blob
            return None
        return self._scan_in_chunks(schema.LINKS, pick)

    def _scan_in_chunks(self, db: bytes, pick: Callable[[lmdb.Transaction, bytes, bytes], T | None],
                        chunk: int = SCAN_CHUNK) -> list[T]:
        """
        C{pick(txn, key, value)} of every entry of C{db} in key order, what is
        not C{None}, in read transactions of at most C{chunk} entries each (each
        chunk resumes after the last key of the one before). The collector's
        candidates are checked again in its write transactions, so the scan
        needs no single snapshot; one read transaction over the whole database
        would keep every page the writers free meanwhile from reuse.
        """
        out: list[T] = []
        after: bytes | None = None
        while True:
            with self.reading() as txn:
                cursor = txn.cursor(db=self._db[db])
                if not (cursor.set_range(after) if after is not None else cursor.first()):
                    return out
                seen = 0
                for k, v in cursor:
                    if k == after:
                        continue
                    found = pick(txn, k, v)
                    if found is not None:
                        out.append(found)
                    seen += 1
                    if seen >= chunk:
                        after = k
                        break
                else:
                    return out

    def gc_untagged_candidates(self, cutoff: float) -> list[tuple[str, str]]:
        """(repository, digest) of manifests created before C{cutoff}, untagged, no referrer, held by no index."""
        out = []
        with self.reading() as txn:
            held: dict[str, set[str]] = {}
            for k, v in txn.cursor(db=self._db[schema.MANIFESTS]):
                name, digest = k.decode().split("\x00", 1)
                meta, _ = split_manifest(v)
                held.setdefault(name, set()).update(meta.get("children") or [])
                if (meta.get("created") or 0) < cutoff and not meta.get("subject") \
                        and not self.refs.tags_of(txn, name, digest):
                    out.append((name, digest))
        return [(name, digest) for name, digest in out if digest not in held.get(name, set())]

    def collect_blobs(self, digests: list[str], cutoff: float) -> list[int | None]:
        """
        In one write transaction, each blob still unreferenced and untouched
        since C{cutoff} loses its record and links; the size of each, or
        C{None} where kept. Its bytes are the caller's to delete after the
        commit (L{without_records}): a crash in between leaves a file without
        a record (collected by the next sweep), never a record without bytes.
        """
        out: list[int | None] = []
        with self.writing() as txn:
            for digest in digests:
                raw = txn.get(digest.encode(), db=self._db[schema.BLOBS])
                record = load(raw) if raw is not None else None
                if record is None or _touched(record) >= cutoff or self.refs.blob_referenced(txn, digest):
                    out.append(None)
                    continue
                txn.delete(digest.encode(), db=self._db[schema.BLOBS])
                for k, _ in list(_scan(txn, self._db[schema.BLOBLINKS], prefix(digest))):
                    name = k.split(schema.SEP, 1)[1].decode()
                    txn.delete(k, db=self._db[schema.BLOBLINKS])
                    txn.delete(key(name, digest), db=self._db[schema.LINKS])
                    self._drop_repo_if_empty(txn, name)
                out.append(record.get("size") or 0)
        return out

    def without_records(self, digests: list[Digest], f) -> list:
        """
        In one write transaction (no record can be committed meanwhile):
        C{f(digest)} for each digest without a record, C{None} for the others.
        """
        with self.writing() as txn:
            return [None if txn.get(str(d).encode(), db=self._db[schema.BLOBS]) is not None else f(d)
                    for d in digests]

    def collect_links(self, links: list[tuple[str, str]], cutoff: float) -> list[bool]:
        """In one write transaction, drop each link still older than C{cutoff} and unused by its repository's manifests."""
        out = []
        with self.writing() as txn:
            for name, blob in links:
                k = key(name, blob)
                raw = txn.get(k, db=self._db[schema.LINKS])
                if raw is None or _link_time(raw) >= cutoff or txn.get(k, db=self._db[schema.REPOBLOBS]):
                    out.append(False)
                    continue
                txn.delete(k, db=self._db[schema.LINKS])
                txn.delete(key(blob, name), db=self._db[schema.BLOBLINKS])
                self._drop_repo_if_empty(txn, name)
                out.append(True)
        return out

    # -- fsck (izreg.storage.fsck) ----------------------------------------------------------

    def blob_records(self) -> list[tuple[str, dict]]:
        """(digest, record) of every blob record, by digest."""
        with self.reading() as txn:
            return [(k.decode(), load(v)) for k, v in txn.cursor(db=self._db[schema.BLOBS])]

    def set_blob_size(self, digest: Digest, size: int) -> None:
        with self.writing() as txn:
            raw = txn.get(str(digest).encode(), db=self._db[schema.BLOBS])
            if raw is not None:
                txn.put(str(digest).encode(), dump({**load(raw), "size": size}), db=self._db[schema.BLOBS])

    def index_blob(self, digest: Digest, size: int, now: float) -> None:
        """Record a blob that is in place (linked nowhere)."""
        with self.writing() as txn:
            txn.put(str(digest).encode(), dump({"size": size, "created": now, "touched": now}),
                    db=self._db[schema.BLOBS])

    def forget_blob(self, digest: Digest) -> None:
        """Drop a blob's record and every link to it (its bytes are lost)."""
        d = str(digest)
        with self.writing() as txn:
            txn.delete(d.encode(), db=self._db[schema.BLOBS])
            for k, _ in list(_scan(txn, self._db[schema.BLOBLINKS], prefix(d))):
                name = k.split(schema.SEP, 1)[1].decode()
                txn.delete(k, db=self._db[schema.BLOBLINKS])
                txn.delete(key(name, d), db=self._db[schema.LINKS])

    def manifest_references(self) -> list[tuple[str, str, list[tuple[str, bool, bool]], list[str]]]:
        """
        Every manifest as (repository, digest, [(blob, linked, recorded)] by blob,
        [child manifests not in the repository]).
        """
        out = []
        with self.reading() as txn:
            for k, v in txn.cursor(db=self._db[schema.MANIFESTS]):
                name, digest = k.decode().split("\x00", 1)
                meta, data = split_manifest(v)
                blobs = [(blob, txn.get(key(name, blob), db=self._db[schema.LINKS]) is not None,
                          txn.get(blob.encode(), db=self._db[schema.BLOBS]) is not None)
                         for blob in sorted(manifest_blobs(meta, data))]
                missing = [child for child in manifest_children(meta, data)
                           if txn.get(key(name, child), db=self._db[schema.MANIFESTS]) is None]
                out.append((name, digest, blobs, missing))
        return out

    def recount(self, repair: bool = False) -> list[str]:
        """
        Recount the derived reference data (izreg.storage.refs) from the manifests
        and tags; the names of what was out of step (kept rebuilt only with C{repair}).
        """
        txn = self.writing()
        try:
            before = {db: [(k, _strip(db, v)) for k, v in txn.cursor(db=self._db[db])] for db in _DERIVED}
            self.refs.rebuild(txn)
            after = {db: [(k, _strip(db, v)) for k, v in txn.cursor(db=self._db[db])] for db in _DERIVED}
            wrong = [db.decode() for db in _DERIVED if before[db] != after[db]]
            if wrong and repair:
                txn.commit()
                txn = None
            return wrong
        finally:
            if txn is not None:
                txn.abort()


_DERIVED = (schema.REPOS, schema.REPOBLOBS, schema.BLOBREFS, schema.TAGSOF)


def _strip(db: bytes, value: bytes) -> object:
    """A repository record without C{pushed} (a recount knows manifest times only)."""
    if db != schema.REPOS:
        return bytes(value)
    record = {**{f: 0 for f in COUNTERS}, **load(value)}
    record.pop("pushed", None)
    return record


def _touched(record: dict) -> float:
    return record.get("touched") or record.get("created") or 0


def _link_time(value: bytes) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0
