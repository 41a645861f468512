# -*- test-case-name: tests.storage.test_refs -*-
"""
What references what, kept in the same write transaction as the manifest
and tag changes that cause it, so it is never out of step with them:

- ``repoblobs`` ``name NUL blob`` -> how many manifests of the repository
  name the blob (config and layers; foreign layers are not stored);
- ``blobrefs`` ``blob NUL name`` -> the reverse: a blob with no entry here is
  referenced by no manifest anywhere (a garbage-collection candidate);
- ``tagsof`` ``repokey NUL digest NUL tag``: the tags of a manifest without
  scanning the repository's tags;
- the counters in each ``repos`` record: ``manifests``, ``tags``, ``size``
  (manifest bytes plus every blob the repository references, each once),
  ``unique`` (of those, the bytes no other repository of the account
  references), ``manifest_bytes`` and ``pushed`` (last manifest put).

L{rebuild} recomputes all of it from the manifests and tags (the schema
upgrade and ``izreg fsck --repair`` use it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Iterator

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import parse_manifest
from izreg.core.mediatypes import INDEX_TYPES
from izreg.storage import schema
from izreg.storage.schema import key, prefix

COUNTERS = ("manifests", "tags", "size", "unique", "manifest_bytes")


def repo_key(name: str) -> str:
    """C{name}, or for a long one ``<account>/#<sha256>``: keeps ``tagsof`` keys under LMDB's 511 bytes."""
    return name if len(name) <= 200 else f"{name[:32]}/#{hashlib.sha256(name.encode()).hexdigest()}"


def scan(txn, db, start: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Items whose key starts with C{start}, in key order, strictly after C{after} if given."""
    cursor = txn.cursor(db=db)
    first = after + b"\x00" if after is not None else start
    # C{after} comes from a client (?last=): past LMDB's key limit, seek to its
    # first 511 bytes and skip what is not after it, rather than fail
    if not cursor.set_range(max(first, start)[:schema.MAX_KEY]):
        return
    for k, v in cursor:
        if not k.startswith(start):
            return
        if after is not None and k <= after:
            continue
        yield k, v


def manifest_blobs(meta: dict, data: bytes) -> dict[str, int]:
    """The distinct stored blobs (digest -> size) a stored manifest names (its meta says; else parse it)."""
    if "blobs" in meta:
        return {d: size for d, size in meta["blobs"]}
    try:
        manifest = parse_manifest(data, meta.get("mediaType"))
    except RegistryError:
        return {}
    return {str(d.digest): d.size for d in manifest.required_blobs()}


def manifest_children(meta: dict, data: bytes) -> list[str]:
    """The child manifests of a stored manifest (its meta says; older records: parse an index)."""
    if "children" in meta:
        return meta["children"]
    if meta.get("mediaType") not in INDEX_TYPES:
        return []
    try:
        return [str(c.digest) for c in parse_manifest(data, meta["mediaType"]).children]
    except RegistryError:
        return []


#: how many of the manifests that name a blob a refused blob delete shows
REFERENCING_SHOWN = 5


def blob_referenced(blob: str, manifests: list[str]) -> RegistryError:
    """The refusal of a blob delete: C{manifests} (sorted, at most L{REFERENCING_SHOWN}) of the repository name it."""
    return RegistryError(ErrorCode.BLOB_REFERENCED, {"digest": blob, "manifests": manifests[:REFERENCING_SHOWN]})


def split_manifest(raw: bytes) -> tuple[dict, bytes]:
    meta, data = bytes(raw).split(schema.SEP, 1)
    return json.loads(meta), data


class Refs:
    """The derived reference data over the named databases C{db} (see L{izreg.storage.lmdbenv.dbs})."""

    def __init__(self, db: dict) -> None:
        self._db = db

    # -- repository counters ----------------------------------------------------

    def stats(self, txn, name: str) -> dict | None:
        raw = txn.get(name.encode(), db=self._db[schema.REPOS])
        if raw is None:
            return None
        record = json.loads(raw)
        for field in COUNTERS:
            record.setdefault(field, 0)
        record.setdefault("pushed", None)
        return record

    def _bump(self, txn, name: str, now: float | None = None, pushed: float | None = None, **deltas: int) -> None:
        record = self.stats(txn, name) or {"created": now, **{f: 0 for f in COUNTERS}, "pushed": None}
        for field, delta in deltas.items():
            record[field] += delta
        if pushed is not None and (record["pushed"] is None or pushed > record["pushed"]):
            record["pushed"] = pushed
        txn.put(name.encode(), json.dumps(record, separators=(",", ":"), sort_keys=True).encode(),
                db=self._db[schema.REPOS])

    # -- blobs --------------------------------------------------------------------

    def blob_referenced(self, txn, blob: str) -> bool:
        return next(scan(txn, self._db[schema.BLOBREFS], prefix(blob)), None) is not None

    def referencing(self, txn, blob: str, account: str = "", limit: int | None = None) -> list[str]:
        """Repositories (of C{account}, or all) whose manifests name C{blob}; the first C{limit} of them if given."""
        start = key(blob, f"{account}/" if account else "")
        found = (k.split(schema.SEP, 1)[1].decode() for k, _ in scan(txn, self._db[schema.BLOBREFS], start))
        return list(itertools.islice(found, limit))

    def repo_blobs(self, txn, start: str) -> Iterator[tuple[str, str]]:
        """(repository, blob) for every repository whose name starts with C{start}."""
        for k, _ in scan(txn, self._db[schema.REPOBLOBS], start.encode()):
            name, blob = k.decode().split("\x00", 1)
            yield name, blob

    def _ref(self, txn, name: str, blob: str, size: int, delta: int, now: float | None) -> None:
        k = key(name, blob)
        db = self._db[schema.REPOBLOBS]
        raw = txn.get(k, db=db)
        before = int(raw) if raw is not None else 0
        after = max(0, before + delta)
        if after:
            txn.put(k, str(after).encode(), db=db)
        else:
            txn.delete(k, db=db)
        if (before == 0) == (after == 0):
            return
        # whether none, one or more other repositories of the account name the
        # blob is all that matters: three entries (C{name} may be one of them),
        # never all of them (a base layer shared by 10,000 repositories)
        others = [r for r in self.referencing(txn, blob, name[:32], limit=3) if r != name]
        sign = 1 if after else -1
        if after:
            txn.put(key(blob, name), b"", db=self._db[schema.BLOBREFS])
        else:
            txn.delete(key(blob, name), db=self._db[schema.BLOBREFS])
        self._bump(txn, name, now, size=sign * size, unique=sign * size if not others else 0)
        if len(others) == 1:  # the blob stops (or starts again) being unique to the other one
            self._bump(txn, others[0], unique=-sign * size)

    # -- manifests ----------------------------------------------------------------

    def add_manifest(self, txn, name: str, meta: dict, data: bytes, now: float | None) -> None:
        """A manifest was stored in C{name} (it was not there before)."""
        for blob, size in manifest_blobs(meta, data).items():
            self._ref(txn, name, blob, size, 1, now)
        n = len(data)
        self._bump(txn, name, now, pushed=now, manifests=1, size=n, unique=n, manifest_bytes=n)

    def remove_manifest(self, txn, name: str, meta: dict, data: bytes) -> None:
        """A manifest was removed from C{name}."""
        for blob, size in manifest_blobs(meta, data).items():
            self._ref(txn, name, blob, size, -1, None)
        n = len(data)
        self._bump(txn, name, manifests=-1, size=-n, unique=-n, manifest_bytes=-n)

    def pushed(self, txn, name: str, now: float) -> None:
        self._bump(txn, name, now, pushed=now)

    # -- tags -----------------------------------------------------------------------

    def set_tag(self, txn, name: str, tag: str, digest: str, previous: str | None) -> None:
        if previous == digest:
            return
        db = self._db[schema.TAGSOF]
        if previous is None:
            self._bump(txn, name, tags=1)
        else:
            txn.delete(key(repo_key(name), previous, tag), db=db)
        txn.put(key(repo_key(name), digest, tag), b"", db=db)

    def remove_tag(self, txn, name: str, tag: str, digest: str) -> None:
        txn.delete(key(repo_key(name), digest, tag), db=self._db[schema.TAGSOF])
        self._bump(txn, name, tags=-1)

    def tags_of(self, txn, name: str, digest: str) -> list[str]:
        start = prefix(repo_key(name), digest)
        return [k[len(start):].decode() for k, _ in scan(txn, self._db[schema.TAGSOF], start)]

    # -- rebuild --------------------------------------------------------------------

    def rebuild(self, txn) -> None:
        """Recompute everything above from the manifests and tags."""
        for db in (schema.REPOBLOBS, schema.BLOBREFS, schema.TAGSOF):
            txn.drop(self._db[db], delete=False)
        repos = self._db[schema.REPOS]
        for k, v in list(scan(txn, repos, b"")):
            record = json.loads(v)
            record.update({f: 0 for f in COUNTERS}, pushed=None)
            txn.put(k, json.dumps(record, separators=(",", ":"), sort_keys=True).encode(), db=repos)
        for k, v in list(scan(txn, self._db[schema.MANIFESTS], b"")):
            name = k.decode().split("\x00", 1)[0]
            meta, data = split_manifest(v)
            self.add_manifest(txn, name, meta, data, meta.get("created"))
        for k, v in list(scan(txn, self._db[schema.TAGS], b"")):
            name, tag = k.decode().split("\x00", 1)
            self.set_tag(txn, name, tag, v.decode(), None)
