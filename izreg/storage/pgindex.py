# -*- test-case-name: tests.storage.test_index,tests.storage.test_pgindex -*-
"""
The metadata index on PostgreSQL: the twin of L{izreg.storage.lmdbindex.Index}
(same methods, results and exceptions; L{IMetadataIndex}), shared by several
nodes. The schema is ``migrations/0002_index.sql``.

Each public method is one L{Database.run} transaction (READ COMMITTED; a
read of several statements runs REPEATABLE READ, so it sees one snapshot).
Synchronous: the server calls it through its runners on a thread pool,
never on the reactor; the ``izreg`` command calls it directly.

Concurrency, where LMDB has one writer at a time: every write takes
transaction-scoped advisory locks, always in the same order (first the
blobs it relies on, then the repositories it changes, each set sorted), so
writes never deadlock on them:

- a repository lock serializes the writes of one repository (two nodes
  pushing the same tag: one waits for the other, the last one wins; a
  repository dropped when empty never loses a link added meanwhile);
- a blob lock, exclusive for what puts bytes in place or deletes them
  (commit, garbage collection, fsck) and shared for what relies on them
  (a manifest naming the blob, a mount, a touch): a manifest either commits
  before the collector's check (the blob is referenced: kept) or after its
  delete (MANIFEST_BLOB_UNKNOWN), as on LMDB.

A mount's source link is read ``FOR SHARE``, so an unlink in the source
repository waits for the mount or comes before it. Repository counters are
computed by queries over the manifests, their blobs and tags: exact under
any concurrency, with nothing to keep in step.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import Precondition, check
from izreg.storage.interfaces import IMetadataIndex
from izreg.storage.pg import Database
from izreg.storage.refs import REFERENCING_SHOWN, blob_referenced
from izreg.storage.refs import manifest_children as _children
from izreg.storage.schema import MAX_KEY


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _lock_key(kind: str, name: str) -> int:
    """A signed 64-bit advisory lock key for a repository (C{r}) or a blob (C{b})."""
    return int.from_bytes(hashlib.sha256(f"{kind}\x00{name}".encode()).digest()[:8], "big", signed=True)


def _lock(cur, blobs: list[str] = (), repos: list[str] = (), shared_blobs: bool = False) -> None:
    """Take the advisory locks of a write: blobs, then repositories, each in key order (no deadlock)."""
    if blobs:
        fn = "pg_advisory_xact_lock_shared" if shared_blobs else "pg_advisory_xact_lock"
        keys = sorted({_lock_key("b", b) for b in blobs})
        cur.execute(f"SELECT {fn}(k) FROM unnest(%s::bigint[]) AS k", (keys,))
    if repos:
        keys = sorted({_lock_key("r", r) for r in repos})
        cur.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (keys,))


def _snapshot(cur) -> None:
    """A read of several statements sees one snapshot."""
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def _upper(start: str) -> str | None:
    """The smallest string after every string that starts with C{start} (None: no bound)."""
    while start:
        last = ord(start[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xDFFF:
            return start[:-1] + chr(last + 1)
        start = start[:-1]
    return None


def _record(size, created, touched) -> dict:
    record = {"size": size, "created": created}
    if touched is not None:
        record["touched"] = touched
    return record


def _touched(record_touched, created) -> float:
    return record_touched or created or 0


#: a repository's counters (see L{izreg.storage.refs}), computed: %(names)s is an array of names
_STATS = """
SELECT r.name, r.created, r.pushed,
  (SELECT count(*) FROM manifests m WHERE m.repo = r.name),
  (SELECT coalesce(sum(length(m.data)), 0) FROM manifests m WHERE m.repo = r.name),
  (SELECT count(*) FROM tags t WHERE t.repo = r.name),
  (SELECT coalesce(sum(b.size), 0) FROM
     (SELECT DISTINCT ON (mb.blob) mb.size FROM manifest_blobs mb WHERE mb.repo = r.name ORDER BY mb.blob) b),
  (SELECT coalesce(sum(b.size), 0) FROM
     (SELECT DISTINCT ON (mb.blob) mb.size FROM manifest_blobs mb WHERE mb.repo = r.name
        AND NOT EXISTS (SELECT 1 FROM manifest_blobs o WHERE o.blob = mb.blob AND o.repo <> r.name
                        AND starts_with(o.repo, left(r.name, 32) || '/'))
        ORDER BY mb.blob) b)
FROM repos r WHERE r.name = ANY(%(names)s) ORDER BY r.name
"""


#: the first manifests (by digest) of a repository that name a blob (a refused blob delete): the index
#: (repo, blob, manifest) of 0005 gives them at once
NAMING = "SELECT manifest FROM manifest_blobs WHERE repo = %s AND blob = %s ORDER BY manifest LIMIT %s"


def _stats_row(row) -> dict:
    _, created, pushed, manifests, manifest_bytes, tags, blob_size, unique_blobs = row
    return {"created": created, "pushed": pushed, "manifests": manifests, "tags": tags,
            "manifest_bytes": int(manifest_bytes), "size": int(manifest_bytes) + int(blob_size),
            "unique": int(manifest_bytes) + int(unique_blobs)}


@implementer(IMetadataIndex)
class PgIndex:
    """The registry's metadata in a PostgreSQL database (schema C{0002_index.sql})."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    # -- repositories -----------------------------------------------------

    @staticmethod
    def _touch_repo(cur, name: str, now: float) -> None:
        cur.execute("INSERT INTO repos (name, created) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, now))

    @staticmethod
    def _drop_repo_if_empty(cur, name: str) -> None:
        cur.execute(
            "DELETE FROM repos WHERE name = %(n)s"
            " AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = %(n)s)"
            " AND NOT EXISTS (SELECT 1 FROM links WHERE repo = %(n)s)"
            " AND NOT EXISTS (SELECT 1 FROM tags WHERE repo = %(n)s)", {"n": name})

    def version(self) -> None:
        """None: no change counter without a query (every node writes), so nothing is cached by it."""
        return None

    def repo_exists(self, name: str) -> bool:
        def f(cur):
            cur.execute("SELECT 1 FROM repos WHERE name = %s", (name,))
            return cur.fetchone() is not None
        return self.db.read(f)

    @staticmethod
    def _list_repos(cur, start: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        where, args = ["name >= %s"], [start]
        upper = _upper(start)
        if upper is not None:
            where.append("name < %s")
            args.append(upper)
        if last:
            where.append("name > %s")
            args.append(last)
        cur.execute(f"SELECT name FROM repos WHERE {' AND '.join(where)} ORDER BY name LIMIT %s", (*args, limit + 1))
        names = [n for (n,) in cur.fetchall()]
        return names[:limit], len(names) > limit

    def list_repos(self, start: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Repository names starting with C{start}, after C{last}; and whether more follow."""
        return self.db.run(self._list_repos, start, last, limit)

    def repo_stats(self, name: str) -> dict | None:
        def f(cur):
            cur.execute(_STATS, {"names": [name]})
            row = cur.fetchone()
            return _stats_row(row) if row is not None else None
        return self.db.read(f)

    def list_repo_stats(self, start: str, last: str | None, limit: int) -> tuple[list[tuple[str, dict]], bool]:
        def f(cur):
            _snapshot(cur)
            names, more = self._list_repos(cur, start, last, limit)
            cur.execute(_STATS, {"names": names})
            return [(row[0], _stats_row(row)) for row in cur.fetchall()], more
        return self.db.run(f)

    # -- blobs and links ---------------------------------------------------

    def blob_size(self, name: str, digest: Digest) -> int | None:
        def f(cur):
            cur.execute("SELECT b.size FROM links l JOIN blobs b ON b.digest = l.digest"
                        " WHERE l.repo = %s AND l.digest = %s", (name, str(digest)))
            row = cur.fetchone()
            return row[0] if row is not None else None
        return self.db.read(f)

    def blob_record(self, digest: Digest) -> dict | None:
        def f(cur):
            cur.execute("SELECT size, created, touched FROM blobs WHERE digest = %s", (str(digest),))
            row = cur.fetchone()
            return _record(*row) if row is not None else None
        return self.db.read(f)

    def _link(self, cur, name: str, digest: str, now: float) -> None:
        cur.execute("INSERT INTO links (repo, digest, linked) VALUES (%s, %s, %s)"
                    " ON CONFLICT (repo, digest) DO UPDATE SET linked = EXCLUDED.linked", (name, digest, float(now)))
        self._touch_repo(cur, name, now)

    @staticmethod
    def _touch_blob(cur, d: str, size: int | None, now: float) -> None:
        cur.execute("INSERT INTO blobs (digest, size, created, touched) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (digest) DO UPDATE SET touched = EXCLUDED.touched", (d, size, now, now))

    def commit_blob(self, name: str, digest: Digest, size: int, now: float, upload_id: str | None, place=None) -> None:
        """
        Record a blob that is now in place, link it, and end its upload session.
        C{place()}, if given, puts the bytes in place inside the transaction
        (under the blob's exclusive lock: a collector never sees the bytes
        without the record); it runs once even if the transaction is retried.
        """
        d = str(digest)
        placed = []

        def f(cur):
            _lock(cur, blobs=[d], repos=[name])
            if place is not None and not placed:
                place()
                placed.append(True)
            self._touch_blob(cur, d, size, now)
            self._link(cur, name, d, now)
            if upload_id is not None:
                cur.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
        self.db.run(f)

    def mount_blob(self, name: str, digest: Digest, sources: list[str], now: float) -> bool:
        d = str(digest)

        def f(cur):
            _lock(cur, blobs=[d], repos=[name], shared_blobs=True)
            cur.execute("SELECT 1 FROM blobs WHERE digest = %s", (d,))
            if cur.fetchone() is None:
                return False
            cur.execute("SELECT 1 FROM links WHERE digest = %s AND repo = ANY(%s) LIMIT 1 FOR SHARE", (d, list(sources)))
            if cur.fetchone() is None:
                return False
            self._touch_blob(cur, d, None, now)
            self._link(cur, name, d, now)
            return True
        return self.db.run(f)

    def unused_blob(self, name: str, digest: Digest) -> bool:
        def f(cur):
            cur.execute("SELECT EXISTS (SELECT 1 FROM links WHERE repo = %(n)s AND digest = %(d)s)"
                        " AND NOT EXISTS (SELECT 1 FROM manifest_blobs WHERE repo = %(n)s AND blob = %(d)s)",
                        {"n": name, "d": str(digest)})
            return cur.fetchone()[0]
        return self.db.run(f)

    def touch_blob(self, name: str, digest: Digest, now: float) -> bool:
        d = str(digest)

        def f(cur):
            _lock(cur, blobs=[d], repos=[name], shared_blobs=True)
            cur.execute("UPDATE links SET linked = %s WHERE repo = %s AND digest = %s"
                        " AND EXISTS (SELECT 1 FROM blobs WHERE digest = %s)", (float(now), name, d, d))
            if cur.rowcount == 0:
                return False
            cur.execute("UPDATE blobs SET touched = %s WHERE digest = %s", (now, d))
            return True
        return self.db.run(f)

    def blob_referenced(self, digest: Digest) -> bool:
        def f(cur):
            cur.execute("SELECT EXISTS (SELECT 1 FROM manifest_blobs WHERE blob = %s)", (str(digest),))
            return cur.fetchone()[0]
        return self.db.run(f)

    def repos_linking(self, digest: Digest, within: str = "", limit: int | None = None) -> list[str]:
        # the names from C{within} up to the first string past its prefix (byte order, COLLATE "C"): a range of the index
        query, args = "SELECT repo FROM links WHERE digest = %s", [str(digest)]
        if within:
            query += " AND repo >= %s AND repo < %s"
            args += [within, within[:-1] + chr(ord(within[-1]) + 1)]

        def f(cur):
            cur.execute(query + " ORDER BY repo LIMIT %s", (*args, limit))
            return [r for (r,) in cur.fetchall()]
        return self.db.run(f)

    def unlink_blob(self, name: str, digest: Digest) -> bool:
        def f(cur):
            _lock(cur, repos=[name])  # a manifest put takes it too: none lands between the check and the delete
            d = str(digest)
            cur.execute(NAMING, (name, d, REFERENCING_SHOWN))
            naming = [m for (m,) in cur.fetchall()]
            cur.execute("DELETE FROM links WHERE repo = %s AND digest = %s", (name, d))
            if cur.rowcount == 0:
                return False
            if naming:
                raise blob_referenced(d, naming)  # the transaction rolls back: the link stays
            self._drop_repo_if_empty(cur, name)
            return True
        return self.db.run(f)

    # -- upload sessions -----------------------------------------------------

    def put_upload(self, upload_id: str, record: dict, expected_offset: int | None = None) -> bool:
        def f(cur):
            if expected_offset is None:
                cur.execute("INSERT INTO uploads (id, record) VALUES (%s, %s)"
                            " ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record", (upload_id, _dump(record)))
                return True
            # one statement: a concurrent writer's UPDATE of the row waits for this one, then sees its offset
            cur.execute("UPDATE uploads SET record = %s WHERE id = %s AND (record::jsonb ->> 'offset')::bigint = %s",
                        (_dump(record), upload_id, expected_offset))
            return cur.rowcount == 1
        return self.db.run(f)

    def get_upload(self, upload_id: str) -> dict | None:
        if len(upload_id.encode()) > MAX_KEY or "\x00" in upload_id:
            return None  # an id from a URL: no session has one this long, or a NUL (PostgreSQL text cannot)
        def f(cur):
            cur.execute("SELECT record FROM uploads WHERE id = %s", (upload_id,))
            row = cur.fetchone()
            return json.loads(row[0]) if row is not None else None
        return self.db.read(f)

    def delete_upload(self, upload_id: str) -> bool:
        def f(cur):
            cur.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
            return cur.rowcount > 0
        return self.db.run(f)

    def list_uploads(self) -> list[tuple[str, dict]]:
        def f(cur):
            cur.execute("SELECT id, record FROM uploads ORDER BY id")
            return [(i, json.loads(r)) for i, r in cur.fetchall()]
        return self.db.run(f)

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
        Store a manifest, its tag and its referrers entry in one transaction, with
        the check that everything it references is in the repository, and first
        C{expect} on what the tag (or digest) names: under the repository's lock, so
        a concurrent writer of the tag has committed or not begun (READ COMMITTED:
        the statement after the lock sees its commit).
        """
        d = str(digest)
        wanted = sorted({b for b, _ in blobs})

        def f(cur):
            _lock(cur, blobs=wanted, repos=[name], shared_blobs=True)
            if expect is not None:
                if tag is not None:
                    cur.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s", (name, tag))
                else:
                    cur.execute("SELECT digest FROM manifests WHERE repo = %s AND digest = %s", (name, d))
                row = cur.fetchone()
                check(expect, row[0] if row is not None else None)
            found: dict[str, int | None] = {}
            if wanted:
                cur.execute("SELECT b.digest, b.size FROM blobs b JOIN links l ON l.digest = b.digest AND l.repo = %s"
                            " WHERE b.digest = ANY(%s)", (name, wanted))
                found = dict(cur.fetchall())
            missing = []
            for blob, size in blobs:
                if blob not in found:
                    missing.append({"digest": blob})
                elif found[blob] != size:
                    raise RegistryError(
                        ErrorCode.MANIFEST_INVALID,
                        {"reason": "descriptor size does not match the blob", "digest": blob, "size": size},
                    )
            if children:
                cur.execute("SELECT digest FROM manifests WHERE repo = %s AND digest = ANY(%s)", (name, list(children)))
                present = {c for (c,) in cur.fetchall()}
                missing += [{"digest": c, "kind": "manifest"} for c in children if c not in present]
            if missing:
                raise RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, {"missing": missing[:20]})
            self._touch_repo(cur, name, now)
            cur.execute("SELECT 1 FROM manifests WHERE repo = %s AND digest = %s", (name, d))
            if cur.fetchone() is None:
                stored = {**meta, "blobs": sorted(dict(blobs).items()), "children": sorted(set(children))}
                cur.execute("INSERT INTO manifests (repo, digest, meta, data, created, subject)"
                            " VALUES (%s, %s, %s, %s, %s, %s)",
                            (name, d, _dump(stored), data, meta.get("created"), meta.get("subject") or None))
                if blobs:
                    cur.executemany("INSERT INTO manifest_blobs (repo, manifest, blob, size) VALUES (%s, %s, %s, %s)",
                                    [(name, d, b, s) for b, s in dict(blobs).items()])
                if children:
                    cur.executemany("INSERT INTO manifest_children (repo, manifest, child) VALUES (%s, %s, %s)",
                                    [(name, d, c) for c in sorted(set(children))])
            cur.execute("UPDATE repos SET pushed = GREATEST(pushed, %s) WHERE name = %s", (now, name))
            if tag is not None:
                cur.execute("INSERT INTO tags (repo, tag, digest) VALUES (%s, %s, %s)"
                            " ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest", (name, tag, d))
            if referrer is not None:
                subject, descriptor = referrer
                cur.execute("INSERT INTO referrers (repo, subject, digest, descriptor) VALUES (%s, %s, %s, %s)"
                            " ON CONFLICT (repo, subject, digest) DO UPDATE SET descriptor = EXCLUDED.descriptor",
                            (name, subject, d, _dump(descriptor)))
        self.db.run(f)

    def get_manifest(self, name: str, digest: Digest) -> tuple[dict, bytes] | None:
        def f(cur):
            cur.execute("SELECT meta, data FROM manifests WHERE repo = %s AND digest = %s", (name, str(digest)))
            row = cur.fetchone()
            return (json.loads(row[0]), bytes(row[1])) if row is not None else None
        return self.db.read(f)

    def list_manifests(self, name: str, last: str | None, limit: int) -> tuple[list[tuple[str, dict, bytes, list[str]]], bool]:
        """(digest, meta, bytes, tags) of the repository's manifests by digest, after C{last}; and whether more follow."""
        def f(cur):
            cur.execute(
                "SELECT m.digest, m.meta, m.data,"
                " ARRAY(SELECT t.tag FROM tags t WHERE t.repo = m.repo AND t.digest = m.digest ORDER BY t.tag)"
                " FROM manifests m WHERE m.repo = %s AND m.digest > %s ORDER BY m.digest LIMIT %s",
                (name, last or "", limit + 1))
            rows = cur.fetchall()
            out = [(d, json.loads(meta), bytes(data), list(tags)) for d, meta, data, tags in rows[:limit]]
            return out, len(rows) > limit
        return self.db.run(f)

    @staticmethod
    def _tags_of(cur, name: str, digest: str) -> list[str]:
        cur.execute("SELECT tag FROM tags WHERE repo = %s AND digest = %s ORDER BY tag", (name, digest))
        return [t for (t,) in cur.fetchall()]

    def tags_of(self, name: str, digest: Digest) -> list[str]:
        return self.db.run(self._tags_of, name, str(digest))

    def resolve_tag(self, name: str, tag: str) -> Digest | None:
        def f(cur):
            cur.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s", (name, tag))
            row = cur.fetchone()
            return Digest(*row[0].split(":", 1)) if row is not None else None
        return self.db.read(f)

    def list_tags(self, name: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        def f(cur):
            cur.execute("SELECT tag FROM tags WHERE repo = %s AND tag > %s ORDER BY tag LIMIT %s",
                        (name, last or "", limit + 1))
            tags = [t for (t,) in cur.fetchall()]
            return tags[:limit], len(tags) > limit
        return self.db.read(f)

    def delete_tag(self, name: str, tag: str, expect: Precondition | None = None) -> bool:
        def f(cur):
            _lock(cur, repos=[name])
            if expect is not None:
                cur.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s", (name, tag))
                row = cur.fetchone()
                if row is not None:
                    check(expect, row[0])
            cur.execute("DELETE FROM tags WHERE repo = %s AND tag = %s", (name, tag))
            if cur.rowcount == 0:
                return False
            self._drop_repo_if_empty(cur, name)
            return True
        return self.db.run(f)

    def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Delete a manifest, every tag that points at it, and its referrers entry."""
        return self.delete_tree(name, digest, cascade=False) is not None

    @staticmethod
    def _manifest(cur, name: str, d: str) -> tuple[dict, bytes] | None:
        cur.execute("SELECT meta, data FROM manifests WHERE repo = %s AND digest = %s", (name, d))
        row = cur.fetchone()
        return (json.loads(row[0]), bytes(row[1])) if row is not None else None

    def children_of(self, name: str, digest: Digest) -> list[str]:
        def f(cur):
            found = self._manifest(cur, name, str(digest))
            return _children(*found) if found is not None else []
        return self.db.run(f)

    def deletion(self, name: str, digest: Digest) -> list[str]:
        def f(cur):
            _snapshot(cur)
            return self._doomed(cur, name, str(digest))
        return self.db.run(f)

    def _doomed(self, cur, name: str, d: str) -> list[str]:
        if self._manifest(cur, name, d) is None:
            return []
        doomed = [d]
        queue = [d]
        while queue:
            found = self._manifest(cur, name, queue.pop())
            for child in _children(*found) if found is not None else []:
                if child in doomed or self._manifest(cur, name, child) is None:
                    continue
                if self._tags_of(cur, name, child):
                    continue  # tagged: kept
                cur.execute("SELECT manifest FROM manifest_children WHERE repo = %s AND child = %s", (name, child))
                if not {p for (p,) in cur.fetchall()} <= set(doomed):
                    continue  # another index still holds it: kept
                doomed.append(child)
                queue.append(child)
        return doomed

    def delete_tree(self, name: str, digest: Digest, cascade: bool = True) -> dict | None:
        """See L{izreg.storage.lmdbindex.Index.delete_tree}."""
        d = str(digest)

        def f(cur):
            _lock(cur, repos=[name])
            doomed = self._doomed(cur, name, d) if cascade else [d]
            cur.execute("SELECT 1 FROM manifests WHERE repo = %s AND digest = %s", (name, d))
            if cur.fetchone() is None:
                return None
            tags = []
            for m in doomed:
                cur.execute("DELETE FROM manifests WHERE repo = %s AND digest = %s RETURNING subject", (name, m))
                row = cur.fetchone()
                cur.execute("DELETE FROM tags WHERE repo = %s AND digest = %s RETURNING tag", (name, m))
                tags += sorted(t for (t,) in cur.fetchall())
                if row is not None and row[0]:
                    cur.execute("DELETE FROM referrers WHERE repo = %s AND subject = %s AND digest = %s",
                                (name, row[0], m))
            self._drop_repo_if_empty(cur, name)
            return {"deleted": doomed, "tags": tags}
        return self.db.run(f)

    def purge_repo(self, name: str) -> int:
        """Delete a repository with everything in it (manifests, tags, referrers, links); return its manifest count."""
        def f(cur):
            _lock(cur, repos=[name])
            cur.execute("DELETE FROM manifests WHERE repo = %s", (name,))
            manifests = cur.rowcount
            for table in ("tags", "referrers", "links"):
                cur.execute(f"DELETE FROM {table} WHERE repo = %s", (name,))
            cur.execute("DELETE FROM repos WHERE name = %s", (name,))
            return manifests
        return self.db.run(f)

    def referrers(self, name: str, subject: Digest) -> list[dict]:
        def f(cur):
            cur.execute("SELECT descriptor FROM referrers WHERE repo = %s AND subject = %s ORDER BY digest",
                        (name, str(subject)))
            return [json.loads(v) for (v,) in cur.fetchall()]
        return self.db.run(f)

    # -- whole-index reads: browse, metrics ---------------------------------------

    def account_blobs(self, account: str) -> set[str]:
        def f(cur):
            cur.execute("SELECT DISTINCT blob FROM manifest_blobs WHERE starts_with(repo, %s)", (f"{account}/",))
            return {b for (b,) in cur.fetchall()}
        return self.db.run(f)

    def totals(self) -> dict:
        def f(cur):
            _snapshot(cur)
            self.db.allow_long(cur)  # a scan of every record
            cur.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs")
            blobs, blob_bytes = cur.fetchone()
            cur.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM manifests")
            manifests, manifest_bytes = cur.fetchone()
            cur.execute("SELECT count(*) FROM uploads")
            return {"blobs": blobs, "blob_bytes": int(blob_bytes), "manifests": manifests,
                    "manifest_bytes": int(manifest_bytes), "uploads": cur.fetchone()[0]}
        return self.db.run(f)

    # -- garbage collection ---------------------------------------------------------

    def gc_blob_candidates(self, cutoff: float) -> list[tuple[str, int]]:
        def f(cur):
            self.db.allow_long(cur)  # a scan of every record: longer than a request's timeout
            cur.execute("SELECT digest, coalesce(size, 0) FROM blobs b"
                        " WHERE coalesce(nullif(touched, 0), nullif(created, 0), 0) < %s"
                        " AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest) ORDER BY digest",
                        (cutoff,))
            return [(d, int(s)) for d, s in cur.fetchall()]
        return self.db.run(f)

    def gc_link_candidates(self, cutoff: float) -> list[tuple[str, str]]:
        def f(cur):
            self.db.allow_long(cur)  # a scan of every record: longer than a request's timeout
            cur.execute("SELECT repo, digest FROM links l WHERE linked < %s AND NOT EXISTS"
                        " (SELECT 1 FROM manifest_blobs mb WHERE mb.repo = l.repo AND mb.blob = l.digest)"
                        " ORDER BY repo, digest", (cutoff,))
            return [(r, d) for r, d in cur.fetchall()]
        return self.db.run(f)

    def gc_untagged_candidates(self, cutoff: float) -> list[tuple[str, str]]:
        def f(cur):
            self.db.allow_long(cur)  # a scan of every record: longer than a request's timeout
            cur.execute("SELECT repo, digest FROM manifests m WHERE coalesce(created, 0) < %s AND subject IS NULL"
                        " AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = m.repo AND t.digest = m.digest)"
                        " AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.repo = m.repo AND c.child = m.digest)"
                        " ORDER BY repo, digest", (cutoff,))
            return [(r, d) for r, d in cur.fetchall()]
        return self.db.run(f)

    def collect_blobs(self, digests: list[str], cutoff: float) -> list[int | None]:
        """
        One transaction: the blobs' exclusive locks (no commit, mount or
        manifest naming them meanwhile), the re-check, then the rows of the
        doomed blobs. Their bytes are the caller's to delete after the commit
        (L{without_records}, under the same locks): a crash in between leaves
        bytes no row names (collected by the next sweep), never a row without
        its bytes.
        """
        def f(cur):
            _lock(cur, blobs=digests)
            cur.execute("SELECT digest, size, created, touched FROM blobs WHERE digest = ANY(%s) FOR UPDATE",
                        (list(digests),))
            rows = {d: (size, _touched(touched, created)) for d, size, created, touched in cur.fetchall()}
            cur.execute("SELECT DISTINCT blob FROM manifest_blobs WHERE blob = ANY(%s)", (list(rows),))
            used = {b for (b,) in cur.fetchall()}
            doomed = [d for d in digests if d in rows and d not in used and rows[d][1] < cutoff]
            if not doomed:
                return [None] * len(digests)
            cur.execute("SELECT DISTINCT repo FROM links WHERE digest = ANY(%s)", (doomed,))
            repos = sorted(r for (r,) in cur.fetchall())
            _lock(cur, repos=repos)
            cur.execute("DELETE FROM links WHERE digest = ANY(%s)", (sorted(doomed),))
            cur.execute("DELETE FROM blobs WHERE digest = ANY(%s)", (sorted(doomed),))
            for name in repos:
                self._drop_repo_if_empty(cur, name)
            gone = set(doomed)
            return [(rows[d][0] or 0) if d in gone else None for d in digests]
        return self.db.run(f)

    def without_records(self, digests: list[Digest], f: Callable[[Digest], Any]) -> list:
        """One transaction: C{f(digest)} for each digest without a record (none can be committed meanwhile), else C{None}."""
        def g(cur):
            _lock(cur, blobs=[str(d) for d in digests])
            cur.execute("SELECT digest FROM blobs WHERE digest = ANY(%s)", ([str(d) for d in digests],))
            recorded = {d for (d,) in cur.fetchall()}
            return [None if str(d) in recorded else f(d) for d in digests]
        return self.db.run(g)

    def collect_links(self, links: list[tuple[str, str]], cutoff: float) -> list[bool]:
        def f(cur):
            repos = sorted({name for name, _ in links})
            _lock(cur, repos=repos)
            cur.execute("DELETE FROM links l USING unnest(%(n)s::text[], %(b)s::text[]) AS c(repo, digest)"
                        " WHERE l.repo = c.repo AND l.digest = c.digest AND l.linked < %(c)s AND NOT EXISTS"
                        " (SELECT 1 FROM manifest_blobs mb WHERE mb.repo = l.repo AND mb.blob = l.digest)"
                        " RETURNING l.repo, l.digest",
                        {"n": [n for n, _ in links], "b": [b for _, b in links], "c": cutoff})
            dropped = {(r, d) for r, d in cur.fetchall()}
            for name in sorted({r for r, _ in dropped}):
                self._drop_repo_if_empty(cur, name)
            return [(name, blob) in dropped for name, blob in links]
        return self.db.run(f)

    # -- fsck -------------------------------------------------------------------------

    def blob_records(self) -> list[tuple[str, dict]]:
        def f(cur):
            cur.execute("SELECT digest, size, created, touched FROM blobs ORDER BY digest")
            return [(d, _record(s, c, t)) for d, s, c, t in cur.fetchall()]
        return self.db.run(f)

    def set_blob_size(self, digest: Digest, size: int) -> None:
        def f(cur):
            _lock(cur, blobs=[str(digest)])
            cur.execute("UPDATE blobs SET size = %s WHERE digest = %s", (size, str(digest)))
        self.db.run(f)

    def index_blob(self, digest: Digest, size: int, now: float) -> None:
        def f(cur):
            _lock(cur, blobs=[str(digest)])
            cur.execute("INSERT INTO blobs (digest, size, created, touched) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size, created = EXCLUDED.created,"
                        " touched = EXCLUDED.touched", (str(digest), size, now, now))
        self.db.run(f)

    def forget_blob(self, digest: Digest) -> None:
        def f(cur):
            _lock(cur, blobs=[str(digest)])
            cur.execute("DELETE FROM blobs WHERE digest = %s", (str(digest),))
            cur.execute("DELETE FROM links WHERE digest = %s", (str(digest),))
        self.db.run(f)

    def manifest_references(self) -> list[tuple[str, str, list[tuple[str, bool, bool]], list[str]]]:
        def f(cur):
            _snapshot(cur)
            self.db.allow_long(cur)  # a scan of every record
            cur.execute(
                "SELECT m.repo, m.digest,"
                " ARRAY(SELECT ARRAY[mb.blob,"
                "   (EXISTS (SELECT 1 FROM links l WHERE l.repo = m.repo AND l.digest = mb.blob))::text,"
                "   (EXISTS (SELECT 1 FROM blobs b WHERE b.digest = mb.blob))::text]"
                "   FROM manifest_blobs mb WHERE mb.repo = m.repo AND mb.manifest = m.digest ORDER BY mb.blob),"
                " ARRAY(SELECT c.child FROM manifest_children c WHERE c.repo = m.repo AND c.manifest = m.digest"
                "   AND NOT EXISTS (SELECT 1 FROM manifests o WHERE o.repo = m.repo AND o.digest = c.child)"
                "   ORDER BY c.child)"
                " FROM manifests m ORDER BY m.repo, m.digest")
            return [(r, d, [(b, linked == "true", recorded == "true") for b, linked, recorded in blobs], list(missing))
                    for r, d, blobs, missing in cur.fetchall()]
        return self.db.run(f)

    def recount(self, repair: bool = False) -> list[str]:
        """Nothing derived is stored here (counters are computed): never out of step."""
        return []
