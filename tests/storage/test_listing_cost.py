"""
The index's work for a tags list, a catalog page and a push into one more
repository does not grow with the number of other repositories (#13: 10,000
repositories sharing their layers). Counted, not timed: LMDB reads and cursor
steps of each call, with a few repositories and with hundreds more of the same
account naming the same blobs.
"""

from __future__ import annotations

import itertools

import pytest

from izreg.core.digest import Digest
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import Index

A = "0123456789abcdef0123456789abcdef"
CONFIG = (str(Digest.of(b"{}")), 2)
LAYER = (str(Digest.of(b"layer")), 5)
MANIFEST = b'{"m":1}'
DIGEST = Digest.of(MANIFEST)
TAGS = [f"t{i:02d}" for i in range(20)]


class _Cursor:
    def __init__(self, cursor, counts: dict) -> None:
        self.cursor, self.counts = cursor, counts

    def set_range(self, k: bytes) -> bool:
        self.counts["steps"] += 1
        return self.cursor.set_range(k)

    def __iter__(self):
        for item in self.cursor:
            self.counts["steps"] += 1
            yield item


class _Txn:
    """A transaction that counts its reads (gets and cursor steps)."""

    def __init__(self, txn, counts: dict) -> None:
        self.txn, self.counts = txn, counts

    def __enter__(self):
        self.txn.__enter__()
        return self

    def __exit__(self, *exc):
        return self.txn.__exit__(*exc)

    def get(self, *args, **kwargs):
        self.counts["steps"] += 1
        return self.txn.get(*args, **kwargs)

    def cursor(self, db=None):
        return _Cursor(self.txn.cursor(db=db), self.counts)

    def __getattr__(self, name):
        return getattr(self.txn, name)


class CountingIndex(Index):
    def __init__(self, env) -> None:
        super().__init__(env)
        self.counts = {"steps": 0}

    def reading(self, db=None):
        return _Txn(super().reading(db), self.counts)

    def writing(self, db=None):
        return _Txn(super().writing(db), self.counts)

    def cost(self, method, *args) -> int:
        before = self.counts["steps"]
        method(*args)
        return self.counts["steps"] - before


def _repo(i: int) -> str:
    return f"{A}/cat/r{i:05d}"


def _push(index: Index, name: str, first: bool = False) -> None:
    for blob, size in (CONFIG, LAYER):
        if first:
            index.commit_blob(name, Digest.parse(blob), size, 1.0, None)
        else:
            assert index.mount_blob(name, Digest.parse(blob), [_repo(0)], 1.0)
    for tag in TAGS:
        index.put_manifest(name, DIGEST, {"mediaType": "x", "subject": None, "created": 1.0}, MANIFEST,
                           [CONFIG, LAYER], [], tag, None, 1.0)


def _costs(index: CountingIndex, target: int, new: int) -> dict:
    name = _repo(target)
    out = {
        "exists": index.cost(index.repo_exists, name),
        "tags": index.cost(index.list_tags, name, None, 100),
        "tags_page": index.cost(index.list_tags, name, "t04", 5),
        "catalog": index.cost(index.list_repos, f"{A}/", None, 5),
        "catalog_middle": index.cost(index.list_repos, f"{A}/", name, 5),
        "mount": index.cost(index.mount_blob, _repo(new), Digest.parse(LAYER[0]), [_repo(0)], 2.0),
        # a mount without from=: one repository of the account that links the blob (a seek)
        "mount_source": index.cost(index.repos_linking, Digest.parse(LAYER[0]), f"{A}/", 1),
        "push": index.cost(index.put_manifest, _repo(new), DIGEST, {"mediaType": "x", "subject": None, "created": 2.0},
                           MANIFEST, [LAYER], [], "t00", None, 2.0),
        "delete": index.cost(index.delete_manifest, _repo(new), DIGEST),
    }
    assert index.list_tags(name, None, 100) == (TAGS, False)
    assert index.list_tags(name, "t04", 5) == (TAGS[5:10], True)
    return out


def test_listing_and_pushing_cost_does_not_grow_with_other_repositories(tmp_path):
    index = CountingIndex(open_env(str(tmp_path), map_size=64 * 1024 * 1024))
    try:
        # r00000..r00009, listed from r00002; each push goes into a new repository
        for i in range(10):
            _push(index, _repo(i), first=i == 0)
        few = _costs(index, 2, 10)
        # 300 more repositories of the account, before and after the listed
        # one, all naming the same two blobs
        for i in range(11, 311):
            _push(index, _repo(i))
        for i in range(311, 460):
            _push(index, f"{A}/a/r{i:05d}")
        for i in range(100):  # and another account's, whose names sort before the account's
            _push(index, f"{'0' * 32}/r{i:05d}")
        many = _costs(index, 2, 2000)
        assert many == few
        assert index.repo_stats(_repo(2000))["manifests"] == 0  # pushed, then deleted
        assert index.repo_stats(_repo(2))["unique"] == len(MANIFEST)  # the blobs are shared
    finally:
        index.close()



def test_a_refused_blob_delete_walks_a_bounded_part_of_the_repository(tmp_path):
    """
    Refusing to delete a blob a manifest names looks for those manifests in the one writer (every
    account's pushes wait for it): it reads as much with 1,000 or 2,000 more manifests (small, or 4 MiB)
    that do not name the blob, sorted before the one that does. Unbounded, 200 of 4 MiB naming 20,000
    blobs each held the writer 6-8 s per refused delete.
    """
    from izreg.core.errors import RegistryError
    from izreg.storage.lmdbindex import NAMING_WALK, NAMING_WALK_BYTES

    name, blob, meta = f"{A}/app", Digest.of(b"named"), {"mediaType": "x", "subject": None}
    others = itertools.count()

    def repository(directory: str) -> CountingIndex:
        index = CountingIndex(open_env(directory, map_size=1 << 30, sync=False))
        index.commit_blob(name, blob, 5, 1.0, None)
        # the one manifest that names the blob sorts after the others: sha256:f... > sha256:e...
        index.put_manifest(name, Digest("sha256", "f" * 64), meta, MANIFEST, [(str(blob), 5)], [], None, None, 1.0)
        return index

    def more(index: Index, count: int, data: bytes) -> None:
        for i in itertools.islice(others, count):
            index.put_manifest(name, Digest("sha256", f"e{i:063x}"), meta, data + b"%d" % i, [], [], None, None, 1.0)

    def refused(index: CountingIndex) -> int:
        before = index.counts["steps"]
        with pytest.raises(RegistryError):
            index.unlink_blob(name, blob)
        return index.counts["steps"] - before

    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    small, big = repository(str(tmp_path / "small")), repository(str(tmp_path / "big"))
    try:
        few = refused(small)
        more(small, NAMING_WALK, MANIFEST)
        bounded = refused(small)
        more(small, NAMING_WALK, MANIFEST)
        assert refused(small) == bounded > few
        four = b"x" * (4 * 1024 * 1024)
        more(big, NAMING_WALK_BYTES // len(four), four)
        bounded = refused(big)
        more(big, 4, four)
        assert refused(big) == bounded
    finally:
        small.close()
        big.close()
