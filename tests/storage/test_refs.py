"""
Reference counts and repository counters (izreg.storage.refs on LMDB, queries on
PostgreSQL) against a brute-force recount, on both backends.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from izreg.core.digest import Digest
from izreg.storage import schema
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import Index
from izreg.storage.refs import repo_key
from tests.helpers.indexes import backdoor, index, index_backend  # noqa: F401  (fixtures)

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
REPOS = [f"{A}/app", f"{A}/db", f"{B}/app", f"{A}/" + "x" * 220, f"{A}/web", f"{A}/ci"]  # 5 of A: more than Refs._ref reads
BLOBS = [(str(Digest.of(b"blob-%d" % i)), 10 ** (i % 4) + i) for i in range(6)]
MANIFESTS = [
    (Digest.of(b"m-%d" % i), b'{"m":%d}' % i + b" " * i, [BLOBS[j] for j in range(6) if (i >> j) & 1 or j == i % 6])
    for i in range(8)
]
TAGS = ["v1", "v2", "latest"]

op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(range(len(REPOS))), st.sampled_from(range(len(MANIFESTS))),
              st.one_of(st.none(), st.sampled_from(TAGS))),
    st.tuples(st.just("untag"), st.sampled_from(range(len(REPOS))), st.sampled_from(TAGS)),
    st.tuples(st.just("delete"), st.sampled_from(range(len(REPOS))), st.sampled_from(range(len(MANIFESTS)))),
)


def apply(index: Index, ops) -> None:
    for i, (kind, r, *rest) in enumerate(ops):
        name = REPOS[r]
        if kind == "put":
            digest, data, blobs = MANIFESTS[rest[0]]
            for blob, size in blobs:
                index.commit_blob(name, Digest.parse(blob), size, float(i), None)
            index.put_manifest(name, digest, {"mediaType": "x", "subject": None, "created": float(i)}, data,
                               blobs, [], rest[1], None, float(i))
        elif kind == "untag":
            index.delete_tag(name, rest[0])
        else:
            index.delete_manifest(name, MANIFESTS[rest[0]][0])


def recount(index) -> tuple[dict, set]:
    """Counters and referenced blobs, from the manifests and tags alone (read through the interface)."""
    sizes = dict(BLOBS)
    held: dict[str, set] = {}
    stats: dict[str, dict] = {}
    for name in index.list_repos("", None, 10**6)[0]:
        manifests = index.list_manifests(name, None, 10**6)[0]
        tags = index.list_tags(name, None, 10**6)[0]
        stats[name] = {"manifests": len(manifests), "tags": len(tags),
                       "manifest_bytes": sum(len(data) for _, _, data, _ in manifests)}
        held[name] = {d for _, meta, _, _ in manifests for d, _ in meta["blobs"]}
    for name, s in stats.items():
        mine = held.get(name, set())
        others = set().union(*[b for n, b in held.items() if n != name and n[:32] == name[:32]])
        s["size"] = s["manifest_bytes"] + sum(sizes[b] for b in mine)
        s["unique"] = s["manifest_bytes"] + sum(sizes[b] for b in mine - others)
    return stats, set().union(*held.values()) if held else set()


def derived(index: Index) -> dict:
    """The derived databases; of the repository records, all but C{pushed} (a rebuild knows only manifest times)."""
    with index.env.begin() as txn:
        out = {db: list(txn.cursor(db=index._db[db])) for db in (schema.REPOBLOBS, schema.BLOBREFS, schema.TAGSOF)}
        out[schema.REPOS] = [(k, {f: v for f, v in json.loads(v).items() if f != "pushed"})
                             for k, v in txn.cursor(db=index._db[schema.REPOS])]
        return out


def test_counters_match_a_recount_and_a_rebuild(index, backdoor):
    # hypothesis runs inside the test (not as its wrapper), over the backend's one store
    @settings(max_examples=40, deadline=None)
    @given(ops=st.lists(op, max_size=25))
    def check(ops):
        backdoor.clear()
        apply(index, ops)
        expected, referenced = recount(index)
        for name in REPOS:
            stats = index.repo_stats(name)
            if name in expected:
                got = {k: stats[k] for k in ("manifests", "tags", "size", "unique", "manifest_bytes")}
                assert got == expected[name], name
            else:
                assert stats is None
        for blob, _ in BLOBS:
            assert index.blob_referenced(Digest.parse(blob)) == (blob in referenced)
        for name in REPOS:
            tags = index.list_tags(name, None, 100)[0]
            for digest, _, _ in MANIFESTS:
                assert index.tags_of(name, digest) == sorted(t for t in tags if index.resolve_tag(name, t) == digest)
        listed = dict(index.list_repo_stats("", None, 100)[0])
        assert listed == {name: index.repo_stats(name) for name in expected}
        assert index.recount() == []  # nothing derived is out of step

    check()


def test_long_names_are_hashed_in_keys():
    assert repo_key(REPOS[0]) == REPOS[0]
    long = repo_key(REPOS[3])
    assert long.startswith(f"{A}/#") and len(long) == 32 + 2 + 64


def test_schema_1_index_is_upgraded_with_its_references(tmp_path):
    index = Index(open_env(str(tmp_path), map_size=32 * 1024 * 1024))
    apply(index, [("put", 0, 3, "v1"), ("put", 1, 3, None), ("put", 0, 5, "v2")])
    expected = derived(index)
    with index.env.begin(write=True) as txn:  # what a schema 1 index looked like
        for db in (schema.REPOBLOBS, schema.BLOBREFS, schema.TAGSOF):
            txn.drop(index._db[db], delete=False)
        for k, v in list(txn.cursor(db=index._db[schema.REPOS])):
            txn.put(k, json.dumps({"created": json.loads(v)["created"]}).encode(), db=index._db[schema.REPOS])
        txn.put(b"schema_version", b"1", db=index._db[schema.META])
    index.close()
    index = Index(open_env(str(tmp_path), map_size=32 * 1024 * 1024))
    try:
        assert derived(index) == expected
        with index.env.begin() as txn:
            assert txn.get(b"schema_version", db=index._db[schema.META]) == str(schema.SCHEMA_VERSION).encode()
    finally:
        index.close()
