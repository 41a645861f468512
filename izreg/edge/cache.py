# -*- test-case-name: tests.edge.test_cache -*-
"""
The edge's cache: content-addressed files and an LMDB index of their own.

Layout under the cache directory::

    blobs/<algorithm>/<2 hex>/<hex>    verified content (blobs and manifests alike)
    tmp/                               downloads in progress (emptied at start)
    index/                             the LMDB environment (below)

Named databases of the index:

- ``entries``: digest -> json {size, type, atime}: what the files hold;
  ``type`` is the manifest media type (``""`` for blobs).
- ``lru``: 8-byte big-endian access time (microseconds) + digest -> ``""``,
  the eviction order (least recently used first).
- ``tags``: repository NUL tag -> json {digest, type, at}: the last digest
  each tag resolved to upstream, for offline pulls by tag.
- ``pins``: ``<repository>:<tag>`` -> json {digests: [...], digest, at,
  problem, checked}: images pinned by ``izreg-edge pin`` (or the config's
  ``pin`` list) and the digests that keep them whole (those are never
  evicted); ``at`` when it was last fetched, ``problem`` why the last try
  failed (at ``checked``), C{None} after a fetch.
- ``reports``: time-ordered key -> json {repository, digest, time}: pulls
  served from the cache, waiting to be reported to the registry.
- ``meta``: ``total`` (bytes of content).

Files are written before their entry (fsync, rename, then the index), so an
entry always has its file; a file without an entry (a crash in between) is
removed at start. The environment is opened without fsync per commit (the
index is rebuilt from nothing at worst: it is a cache); report queue writes
are followed by an explicit sync, since those must not be lost.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import threading
from dataclasses import dataclass

import lmdb

from izreg.core.digest import Digest
from izreg.storage.lmdbenv import open_dbs

SEP = b"\x00"
_DBS = (b"entries", b"lru", b"tags", b"pins", b"reports", b"meta")


@dataclass(frozen=True)
class Entry:
    digest: str
    size: int
    type: str
    atime: float


def _lru_key(atime: float, digest: str) -> bytes:
    return struct.pack(">Q", int(atime * 1e6)) + digest.encode()


class EdgeCache:
    def __init__(self, root: str, limit: int, map_size: int = 4 * 1024**3) -> None:
        self.root = os.path.abspath(root)
        self.limit = limit
        #: entries evicted (L{evict}) since this process opened the cache, and their bytes
        self.evictions = self.evicted_bytes = 0
        self._counting = threading.Lock()
        for sub in ("blobs", "tmp", "index"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        self.env = lmdb.open(os.path.join(self.root, "index"), map_size=map_size, max_dbs=len(_DBS),
                             subdir=True, sync=False, max_readers=64)
        # opened once, in one transaction, before anything else uses the environment
        self._db = {name.decode(): db for name, db in open_dbs(self.env, _DBS).items()}

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()

    # -- files --------------------------------------------------------------------

    def path(self, digest: str) -> str:
        d = Digest.parse(digest)
        return os.path.join(self.root, "blobs", d.algorithm, d.hex[:2], d.hex)

    def temp_path(self) -> str:
        return os.path.join(self.root, "tmp", secrets.token_hex(12))

    def clean(self) -> int:
        """At start: drop unfinished downloads and files with no entry, entries with no file."""
        shutil.rmtree(os.path.join(self.root, "tmp"), ignore_errors=True)
        os.makedirs(os.path.join(self.root, "tmp"), mode=0o700, exist_ok=True)
        removed = 0
        blobs = os.path.join(self.root, "blobs")
        for algorithm in os.listdir(blobs):
            for dirpath, _, files in os.walk(os.path.join(blobs, algorithm)):
                for name in files:
                    if self.entry(f"{algorithm}:{name}") is None:
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        for entry in self.entries():
            if not os.path.exists(self.path(entry.digest)):
                self._remove(entry.digest)
        return removed

    def commit(self, temp: str, digest: str, size: int, media_type: str, now: float) -> list[str]:
        """
        Make a verified download (already fsynced at C{temp}) an entry; evict
        beyond the limit. Blocking (rename, unlink): run in a thread. Returns
        the evicted digests.
        """
        final = self.path(digest)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        os.replace(temp, final)
        with self.env.begin(write=True) as txn:
            old = txn.get(digest.encode(), db=self._db["entries"])
            if old is not None:
                txn.delete(_lru_key(json.loads(old)["atime"], digest), db=self._db["lru"])
            else:
                self._add_total(txn, size)
            txn.put(digest.encode(), json.dumps({"size": size, "type": media_type, "atime": now}).encode(),
                    db=self._db["entries"])
            txn.put(_lru_key(now, digest), b"", db=self._db["lru"])
        return self.evict()

    # -- entries ------------------------------------------------------------------

    def entry(self, digest: str) -> Entry | None:
        with self.env.begin() as txn:
            raw = txn.get(digest.encode(), db=self._db["entries"])
        if raw is None:
            return None
        value = json.loads(raw)
        return Entry(digest, value["size"], value["type"], value["atime"])

    def entries(self) -> list[Entry]:
        with self.env.begin() as txn:
            return [Entry(k.decode(), v["size"], v["type"], v["atime"])
                    for k, v in ((k, json.loads(v)) for k, v in txn.cursor(db=self._db["entries"]))]

    def open(self, digest: str):
        """C{(entry, file)} of a cached digest, or C{None}. The file is open for reading."""
        entry = self.entry(digest)
        if entry is None:
            return None
        try:
            f = open(self.path(digest), "rb")
        except FileNotFoundError:
            self._remove(digest)
            return None
        return entry, f

    def touch(self, digest: str, now: float) -> None:
        """Mark a cached digest as just used (one short write txn, no fsync)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(digest.encode(), db=self._db["entries"])
            if raw is None:
                return
            value = json.loads(raw)
            txn.delete(_lru_key(value["atime"], digest), db=self._db["lru"])
            value["atime"] = now
            txn.put(digest.encode(), json.dumps(value).encode(), db=self._db["entries"])
            txn.put(_lru_key(now, digest), b"", db=self._db["lru"])

    @property
    def total(self) -> int:
        with self.env.begin() as txn:
            raw = txn.get(b"total", db=self._db["meta"])
        return int(raw) if raw else 0

    def _add_total(self, txn, delta: int) -> None:
        raw = txn.get(b"total", db=self._db["meta"])
        txn.put(b"total", str(max(0, (int(raw) if raw else 0) + delta)).encode(), db=self._db["meta"])

    def _remove(self, digest: str) -> int | None:
        """Drop C{digest}'s entry and file: its size, or C{None} if it had no entry."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(digest.encode(), db=self._db["entries"])
            if raw is None:
                return None
            value = json.loads(raw)
            txn.delete(digest.encode(), db=self._db["entries"])
            txn.delete(_lru_key(value["atime"], digest), db=self._db["lru"])
            self._add_total(txn, -value["size"])
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass
        return value["size"]

    def evict(self) -> list[str]:
        """
        Remove least recently used, unpinned entries until the total fits the limit; each counted in
        L{evictions} and L{evicted_bytes} (C{izreg_edge_cache_evictions_total}, C{..._evicted_bytes_total}).
        """
        evicted: list[str] = []
        if self.total <= self.limit:
            return evicted
        pinned = self.pinned_digests()
        with self.env.begin() as txn:
            order = [k[8:].decode() for k, _ in txn.cursor(db=self._db["lru"])]
        for digest in order:
            if self.total <= self.limit:
                break
            size = None if digest in pinned else self._remove(digest)
            if size is not None:
                evicted.append(digest)
                with self._counting:  # (commits, and so evictions, run in threads: two at once can)
                    self.evictions += 1
                    self.evicted_bytes += size
        return evicted

    # -- tags ---------------------------------------------------------------------

    def set_tag(self, repository: str, tag: str, digest: str, media_type: str, now: float) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(repository.encode() + SEP + tag.encode(),
                    json.dumps({"digest": digest, "type": media_type, "at": now}).encode(), db=self._db["tags"])

    def tag(self, repository: str, tag: str) -> str | None:
        """The digest C{tag} last resolved to upstream, or C{None}."""
        with self.env.begin() as txn:
            raw = txn.get(repository.encode() + SEP + tag.encode(), db=self._db["tags"])
        return json.loads(raw)["digest"] if raw else None

    # -- pins ---------------------------------------------------------------------

    def pin(self, ref: str) -> bool:
        """Add a pin (C{<repository>:<tag>}); C{False} if it was there."""
        with self.env.begin(write=True) as txn:
            added = txn.put(ref.encode(), json.dumps({"digests": [], "digest": None, "at": None}).encode(),
                            db=self._db["pins"], overwrite=False)
        self.env.sync(True)
        return added

    def unpin(self, ref: str) -> bool:
        with self.env.begin(write=True) as txn:
            removed = txn.delete(ref.encode(), db=self._db["pins"])
        self.env.sync(True)
        return removed

    def pin_refs(self) -> set[str]:
        """The pins, without what they resolved to (one short read: the running edge looks every 2 s)."""
        with self.env.begin() as txn:
            return {k.decode() for k in txn.cursor(db=self._db["pins"]).iternext(keys=True, values=False)}

    def pins(self) -> dict[str, dict]:
        with self.env.begin() as txn:
            return {k.decode(): json.loads(v) for k, v in txn.cursor(db=self._db["pins"])}

    def set_pinned(self, ref: str, digest: str, digests: list[str], now: float) -> None:
        """Record what a pin resolved to and which digests keep it whole (if it is still pinned)."""
        self._update_pin(ref, {"digests": digests, "digest": digest, "at": now, "problem": None, "checked": now})

    def set_pin_problem(self, ref: str, problem: str, now: float) -> None:
        """Record why a pin could not be fetched just now (if it is still pinned); what it holds stays."""
        self._update_pin(ref, {"problem": problem, "checked": now})

    def pin_checked(self, ref: str, now: float) -> None:
        """Record that a pin's tag still names what is cached (if it is still pinned): no problem any more."""
        self._update_pin(ref, {"problem": None, "checked": now})

    def _update_pin(self, ref: str, fields: dict) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(ref.encode(), db=self._db["pins"])
            if raw is not None:
                txn.put(ref.encode(), json.dumps({**json.loads(raw), **fields}).encode(), db=self._db["pins"])

    def pinned_digests(self) -> set[str]:
        return {d for value in self.pins().values() for d in value["digests"]}

    # -- pull reports -------------------------------------------------------------

    def queue_reports(self, reports: list[dict], now: float) -> None:
        """Queue pulls served from the cache (durably: synced before returning; run in a thread)."""
        with self.env.begin(write=True) as txn:
            for report in reports:
                key = struct.pack(">Q", int(now * 1e6)) + secrets.token_bytes(8)
                txn.put(key, json.dumps(report).encode(), db=self._db["reports"])
        self.env.sync(True)

    def pending_reports(self, limit: int) -> list[tuple[bytes, dict]]:
        out = []
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._db["reports"]):
                out.append((bytes(k), json.loads(v)))
                if len(out) >= limit:
                    break
        return out

    def drop_reports(self, keys: list[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.delete(k, db=self._db["reports"])
        self.env.sync(True)
