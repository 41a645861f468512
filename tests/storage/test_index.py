"""
The metadata index contract (izreg.storage.interfaces.IMetadataIndex), run against
both backends: LMDB (izreg.storage.lmdbindex) over a real environment in tmp_path,
and PostgreSQL (izreg.storage.pgindex) over a real server (marker ``postgres``).
"""

from __future__ import annotations

import threading

import pytest
from zope.interface.verify import verifyObject

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import ANY, Precondition
from izreg.storage.interfaces import IMetadataIndex
from tests.helpers.indexes import backdoor, index, index_backend, open_index  # noqa: F401  (fixtures)

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
REPO = f"{A}/app"
OTHER = f"{A}/other"
B1, B2, B3 = (Digest.of(x) for x in (b"blob-1", b"blob-2", b"blob-3"))
M1, M2, M3 = (Digest.of(x) for x in (b"manifest-1", b"manifest-2", b"manifest-3"))


def meta(subject: Digest | None = None, **extra) -> dict:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "subject": str(subject) if subject else None, **extra}


def put(index, name=REPO, digest=M1, data=b"{}", blobs=(), children=(), tag=None, referrer=None, now=1.0, **meta_extra):
    index.put_manifest(name, digest, meta(**meta_extra), data, list(blobs), [str(c) for c in children], tag, referrer, now)


def commit(index, name=REPO, digest=B1, size=6, now=1.0, upload_id=None):
    index.commit_blob(name, digest, size, now, upload_id)


# -- repositories ---------------------------------------------------------------------


def test_provides_the_interface(index):
    assert verifyObject(IMetadataIndex, index)


def test_the_version_changes_with_every_write(index):
    """IMetadataIndex.version: None (no cheap counter), or a value that differs once a write committed."""
    before = index.version()
    assert index.version() == before  # reads do not change it
    index.list_tags(REPO, None, 10)
    assert index.version() == before
    commit(index)
    after = index.version()
    if before is None:
        assert after is None
        return
    assert after != before
    index.delete_tag(REPO, "nope")  # a write that changes nothing may leave it as it is; never back to before
    assert index.version() != before


def test_empty_index(index):
    assert not index.repo_exists(REPO)
    assert index.list_repos("", None, 10) == ([], False)
    assert index.list_tags(REPO, None, 10) == ([], False)
    assert index.referrers(REPO, M1) == []
    assert index.list_uploads() == []


# in key (byte) order: "-" (0x2d) sorts before "/" (0x2f)
REPOS = [f"{A}/a", f"{A}/a-b", f"{A}/a/b", f"{A}/b", f"{A}/z", f"{B}/a", f"{B}/c"]


@pytest.mark.parametrize(
    "start, last, limit, expected, more",
    [
        ("", None, 100, REPOS, False),
        ("", None, 7, REPOS, False),
        ("", None, 6, REPOS[:6], True),
        ("", None, 0, [], True),
        (f"{A}/", None, 100, REPOS[:5], False),
        (f"{A}/", None, 2, [f"{A}/a", f"{A}/a-b"], True),
        (f"{A}/", f"{A}/a", 100, [f"{A}/a-b", f"{A}/a/b", f"{A}/b", f"{A}/z"], False),
        (f"{A}/", f"{A}/a-b", 2, [f"{A}/a/b", f"{A}/b"], True),
        (f"{A}/", f"{A}/b", 1, [f"{A}/z"], False),
        (f"{A}/", f"{A}/z", 10, [], False),
        (f"{A}/", f"{A}/c", 10, [f"{A}/z"], False),  # last need not exist
        (f"{A}/", f"{A}/", 10, REPOS[:5], False),
        (f"{A}/", f"{B}/a", 10, [], False),  # last past the account
        (f"{A}/", "", 10, REPOS[:5], False),  # empty last = from the start
        (f"{B}/", None, 100, [f"{B}/a", f"{B}/c"], False),
        (f"{B}/", f"{A}/z", 100, [f"{B}/a", f"{B}/c"], False),  # last before the account
        ("ffffffffffffffffffffffffffffffff/", None, 100, [], False),
    ],
)
def test_list_repos(index, start, last, limit, expected, more):
    for name in reversed(REPOS):
        commit(index, name)
    assert index.list_repos(start, last, limit) == (expected, more)


def test_repo_created_once(index, backdoor):
    commit(index, now=1.0)
    commit(index, digest=B2, now=5.0)
    assert backdoor.repo_created(REPO) == 1.0
    assert index.repo_stats(REPO)["created"] == 1.0


# -- blobs and links -----------------------------------------------------------------


def test_commit_blob_links_and_records(index):
    index.put_upload("u1", {"name": REPO, "offset": 6})
    commit(index, upload_id="u1", now=3.0)
    assert index.repo_exists(REPO)
    assert index.blob_size(REPO, B1) == 6
    assert index.blob_size(OTHER, B1) is None  # not linked there
    assert index.blob_record(B1) == {"size": 6, "created": 3.0, "touched": 3.0}
    assert index.repos_linking(B1) == [REPO]
    assert index.get_upload("u1") is None  # the session ends with the commit


def test_commit_blob_keeps_the_first_record_and_touches_it(index):
    commit(index, size=6, now=1.0)
    commit(index, name=OTHER, size=6, now=9.0)
    assert index.blob_record(B1) == {"size": 6, "created": 1.0, "touched": 9.0}
    assert index.repos_linking(B1) == sorted([REPO, OTHER])


def test_blob_size_needs_a_record(index, backdoor):
    backdoor.put_blob_record(B2, 10, 1.0)
    assert index.blob_size(REPO, B2) is None  # recorded but not linked
    assert index.blob_record(B2) == {"size": 10, "created": 1.0}
    assert index.blob_record(B3) is None


@pytest.mark.parametrize(
    "linked_in, recorded, sources, mounted",
    [
        ([OTHER], True, [OTHER], True),
        ([OTHER], True, [f"{A}/x", OTHER], True),
        ([OTHER], True, [], False),  # only from given sources
        ([OTHER], True, [f"{A}/x"], False),
        ([f"{B}/app"], True, [OTHER], False),
        ([], True, [OTHER], False),  # recorded, linked nowhere
        ([OTHER], False, [OTHER], False),  # no record: the file is not known
        ([REPO], True, [REPO], True),  # mounting into itself is harmless
    ],
)
def test_mount_blob(index, backdoor, linked_in, recorded, sources, mounted):
    for name in linked_in:
        commit(index, name)
    if recorded and not linked_in:
        backdoor.put_blob_record(B1, 6, 1.0)
    if not recorded:
        backdoor.drop_blob_record(B1)
    target = REPO
    was_linked = index.blob_size(target, B1) is not None
    assert index.mount_blob(target, B1, sources, 2.0) is mounted
    if mounted:
        assert index.blob_size(target, B1) == 6
        assert index.repo_exists(target)
        assert target in index.repos_linking(B1)
    elif not was_linked:
        assert index.blob_size(target, B1) is None
        assert not index.repo_exists(target)


def test_unlink_blob(index):
    commit(index)
    commit(index, name=OTHER)
    assert index.unlink_blob(REPO, B1) is True
    assert index.unlink_blob(REPO, B1) is False
    assert index.blob_size(REPO, B1) is None
    assert index.repos_linking(B1) == [OTHER]
    assert not index.repo_exists(REPO)  # nothing left: the repo disappears
    assert index.repo_exists(OTHER)
    assert index.blob_record(B1) is not None  # the file record stays (GC's business)


@pytest.mark.parametrize("keeper", ["blob", "manifest", "tag"])
def test_unlink_blob_keeps_non_empty_repo(index, backdoor, keeper):
    commit(index, digest=B1)
    if keeper == "blob":
        commit(index, digest=B2)
    else:
        put(index, digest=M1, tag="v1" if keeper == "tag" else None)
        if keeper == "tag":
            backdoor.drop_manifest_record(REPO, M1)  # a tag alone (manifest record gone)
    index.unlink_blob(REPO, B1)
    assert index.repo_exists(REPO)


def test_unlink_blob_of_unknown_repo(index):
    assert index.unlink_blob(REPO, B1) is False


def test_unlink_blob_refused_while_a_manifest_of_the_repo_names_it(index):
    """A blob a manifest of the repository names (config or layer) stays linked: 409 DENIED, naming the manifests."""
    commit(index, digest=B1)
    commit(index, digest=B2)
    commit(index, name=OTHER, digest=B3)
    put(index, digest=M2, blobs=[(str(B1), 6)])
    put(index, digest=M1, blobs=[(str(B1), 6), (str(B2), 6)])
    put(index, name=OTHER, digest=M3, blobs=[(str(B3), 6)])
    for blob, naming in ((B1, sorted([str(M1), str(M2)])), (B2, [str(M1)])):
        with pytest.raises(RegistryError) as raised:
            index.unlink_blob(REPO, blob)
        assert raised.value.code is ErrorCode.BLOB_REFERENCED
        assert raised.value.code.status == 409 and raised.value.code.code == "DENIED"
        assert raised.value.detail == {"digest": str(blob), "manifests": naming}
        assert index.blob_size(REPO, blob) == 6  # nothing written: the link stays
    index.delete_manifest(REPO, M1)
    with pytest.raises(RegistryError):
        index.unlink_blob(REPO, B1)  # M2 still names it
    assert index.unlink_blob(REPO, B2) is True  # no manifest names it any more
    index.delete_manifest(REPO, M2)
    assert index.unlink_blob(REPO, B1) is True
    assert index.unlink_blob(REPO, B3) is False  # another repository's manifest names B3: not linked here


def test_unlink_blob_named_in_another_repo_only(index):
    commit(index, digest=B1)
    commit(index, name=OTHER, digest=B1)
    put(index, name=OTHER, digest=M1, blobs=[(str(B1), 6)])
    assert index.unlink_blob(REPO, B1) is True  # only this repository's manifests count
    assert index.blob_size(OTHER, B1) == 6


def test_unlink_blob_shows_a_few_of_the_naming_manifests(index):
    from izreg.storage.refs import REFERENCING_SHOWN
    commit(index, digest=B1)
    digests = sorted(str(Digest.of(b"manifest-%d" % i)) for i in range(REFERENCING_SHOWN + 2))
    for d in digests:
        put(index, digest=Digest.parse(d), blobs=[(str(B1), 6)])
    with pytest.raises(RegistryError) as raised:
        index.unlink_blob(REPO, B1)
    assert raised.value.detail["manifests"] == digests[:REFERENCING_SHOWN]


def test_repos_linking_is_exact(index):
    # a digest that is a prefix of nothing else, and names that share prefixes
    for name in (f"{A}/a", f"{A}/a/b", f"{A}/ab"):
        commit(index, name)
    commit(index, f"{A}/c", digest=B2)
    assert index.repos_linking(B1) == [f"{A}/a", f"{A}/a/b", f"{A}/ab"]
    assert index.repos_linking(B2) == [f"{A}/c"]
    assert index.repos_linking(B3) == []
    assert index.repos_linking(B1, f"{A}/a") == [f"{A}/a", f"{A}/a/b", f"{A}/ab"]
    assert index.repos_linking(B1, f"{A}/a/") == [f"{A}/a/b"]
    assert index.repos_linking(B1, f"{A}/", 2) == [f"{A}/a", f"{A}/a/b"]
    assert index.repos_linking(B1, f"{A}/ab", 1) == [f"{A}/ab"]
    assert index.repos_linking(B1, f"{A}/b") == [] and index.repos_linking(B2, f"{A}/a") == []


# -- upload records -----------------------------------------------------------------


def test_upload_records(index):
    r1 = {"name": REPO, "offset": 0, "started": 1.0, "updated": 1.0}
    r2 = {"name": OTHER, "offset": 10, "started": 2.0, "updated": 3.0}
    index.put_upload("b-id", r2)
    index.put_upload("a-id", r1)
    assert index.get_upload("a-id") == r1
    assert index.list_uploads() == [("a-id", r1), ("b-id", r2)]
    index.put_upload("a-id", {**r1, "offset": 5})
    assert index.get_upload("a-id")["offset"] == 5
    assert index.delete_upload("a-id") is True
    assert index.delete_upload("a-id") is False
    assert index.get_upload("a-id") is None
    assert index.list_uploads() == [("b-id", r2)]


# -- manifests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{}", b'{"a": "\\u0000"}', b"\x00\x00raw\x00", b"", b"x" * 100000],
    ids=["json", "escaped-nul", "raw-nul", "empty", "100k"],
)
def test_put_and_get_manifest_byte_exact(index, data):
    put(index, data=data, size=len(data))
    stored_meta, stored = index.get_manifest(REPO, M1)
    assert stored == data
    assert stored_meta == {**meta(size=len(data)), "blobs": [], "children": []}  # the index keeps the blobs it counts
    assert index.repo_exists(REPO)
    assert index.get_manifest(OTHER, M1) is None
    assert index.get_manifest(REPO, M2) is None


def test_put_manifest_with_blobs_and_children(index):
    commit(index, digest=B1, size=6)
    commit(index, digest=B2, size=6)
    put(index, digest=M1, blobs=[(str(B1), 6), (str(B2), 6)])
    put(index, digest=M2, blobs=[(str(B1), 6)])
    put(index, digest=M3, children=[M1, M2], tag="multi")
    assert index.get_manifest(REPO, M3) is not None
    assert index.resolve_tag(REPO, "multi") == M3


@pytest.mark.parametrize(
    "setup, blobs, children, missing",
    [
        # nothing exists
        ([], [B1], [], [{"digest": str(B1)}]),
        # recorded and linked in another repo only
        ([(OTHER, B1)], [B1], [], [{"digest": str(B1)}]),
        # some present, some missing, order kept
        ([(REPO, B2)], [B1, B2, B3], [], [{"digest": str(B1)}, {"digest": str(B3)}]),
        # child manifests
        ([], [], [M2], [{"digest": str(M2), "kind": "manifest"}]),
        ([(REPO, B1)], [B1, B3], [M2, M3], [{"digest": str(B3)}, {"digest": str(M2), "kind": "manifest"}, {"digest": str(M3), "kind": "manifest"}]),
    ],
)
def test_put_manifest_missing_references(index, backdoor, setup, blobs, children, missing):
    for name, digest in setup:
        commit(index, name, digest, 6)
    before = backdoor.snapshot()
    with pytest.raises(RegistryError) as info:
        put(index, name=REPO, digest=M1, blobs=[(str(b), 6) for b in blobs], children=children, tag="t", referrer=(str(M3), {"x": 1}))
    assert info.value.code is ErrorCode.MANIFEST_BLOB_UNKNOWN
    assert info.value.code.status == 400
    assert info.value.detail == {"missing": missing}
    assert backdoor.snapshot() == before  # atomic: nothing written


def test_linked_blob_without_record_is_missing(index, backdoor):
    commit(index, digest=B1)
    backdoor.drop_blob_record(B1)
    with pytest.raises(RegistryError) as info:
        put(index, blobs=[(str(B1), 6)])
    assert info.value.detail == {"missing": [{"digest": str(B1)}]}


def test_child_in_another_repo_is_missing(index):
    put(index, name=OTHER, digest=M2)
    with pytest.raises(RegistryError) as info:
        put(index, digest=M1, children=[M2])
    assert info.value.code is ErrorCode.MANIFEST_BLOB_UNKNOWN


def test_missing_list_is_capped(index):
    blobs = [(str(Digest.of(str(i).encode())), 1) for i in range(25)]
    with pytest.raises(RegistryError) as info:
        put(index, blobs=blobs)
    assert info.value.detail["missing"] == [{"digest": d} for d, _ in blobs[:20]]


@pytest.mark.parametrize("declared", [0, 5, 7, 6000])
def test_put_manifest_size_mismatch(index, backdoor, declared):
    commit(index, digest=B1, size=6)
    before = backdoor.snapshot()
    with pytest.raises(RegistryError) as info:
        put(index, blobs=[(str(B1), declared)], tag="t")
    assert info.value.code is ErrorCode.MANIFEST_INVALID
    assert info.value.detail["digest"] == str(B1)
    assert info.value.detail["size"] == declared
    assert backdoor.snapshot() == before


def test_empty_blob(index):
    empty = Digest.of(b"")
    commit(index, digest=empty, size=0)
    assert index.blob_size(REPO, empty) == 0
    put(index, blobs=[(str(empty), 0)])
    with pytest.raises(RegistryError):
        put(index, digest=M2, blobs=[(str(empty), 1)])


def test_put_existing_manifest_keeps_first_bytes_and_moves_tag(index):
    put(index, digest=M1, data=b"first", tag="v1", now=1.0, extra="a")
    put(index, digest=M2, data=b"second", tag="latest")
    put(index, digest=M1, data=b"again", tag="latest", now=2.0, extra="b")
    stored_meta, data = index.get_manifest(REPO, M1)
    assert (data, stored_meta["extra"]) == (b"first", "a")
    assert index.resolve_tag(REPO, "latest") == M1
    assert index.resolve_tag(REPO, "v1") == M1


@pytest.mark.parametrize("tag", ["v1", "a" * 128, "_", "UPPER"])
def test_resolve_tag(index, tag):
    put(index, tag=tag)
    assert index.resolve_tag(REPO, tag) == M1
    assert index.resolve_tag(OTHER, tag) is None
    assert index.resolve_tag(REPO, tag + "x") is None


def test_resolve_sha512_tag(index):
    d = Digest.of(b"m", "sha512")
    put(index, digest=d, tag="t")
    assert index.resolve_tag(REPO, "t") == d


# -- tags listing -------------------------------------------------------------------

TAGS = ["1.0", "10", "2", "A", "Z", "_x", "a", "a-b", "a.b", "a_b", "b", "latest", "v1", "v1.0", "v10", "v2"]


def test_tag_order_is_byte_order():
    # the expectation below is ASCII order: digits < uppercase < "_" < lowercase; "-" < "." < "_"
    assert TAGS == sorted(TAGS, key=lambda t: t.encode())


@pytest.mark.parametrize(
    "last, limit, expected, more",
    [
        (None, 100, TAGS, False),
        (None, len(TAGS), TAGS, False),
        (None, len(TAGS) - 1, TAGS[:-1], True),
        (None, 1, ["1.0"], True),
        (None, 0, [], True),
        ("1.0", 2, ["10", "2"], True),
        ("a", 3, ["a-b", "a.b", "a_b"], True),
        ("a_b", 100, ["b", "latest", "v1", "v1.0", "v10", "v2"], False),
        ("v10", 1, ["v2"], False),  # the last one: no more
        ("v2", 10, [], False),
        ("zzz", 10, [], False),
        ("a-", 2, ["a-b", "a.b"], True),  # last need not be a tag
        ("0", 1, ["1.0"], True),
        ("", 100, TAGS, False),
    ],
)
def test_list_tags(index, last, limit, expected, more):
    for tag in reversed(TAGS):
        put(index, tag=tag)
    assert index.list_tags(REPO, last, limit) == (expected, more)


def test_list_tags_pagination_walks_everything(index):
    for tag in TAGS:
        put(index, tag=tag)
    seen, last = [], None
    while True:
        page, more = index.list_tags(REPO, last, 3)
        seen += page
        if not more:
            break
        last = page[-1]
    assert seen == TAGS


@pytest.mark.parametrize("neighbour", [f"{REPO}/sub", f"{REPO}-x", f"{REPO}.x", f"{A}/ap", f"{A}/app0"])
def test_list_tags_isolated_from_similar_names(index, neighbour):
    put(index, name=REPO, tag="mine")
    put(index, name=neighbour, tag="theirs")
    put(index, name=neighbour, tag="aaa")
    assert index.list_tags(REPO, None, 10) == (["mine"], False)
    assert index.list_tags(neighbour, None, 10) == (["aaa", "theirs"], False)
    assert index.list_tags(REPO, "a", 10) == (["mine"], False)


def test_delete_tag(index):
    put(index, tag="v1")
    put(index, tag="v2")
    assert index.delete_tag(REPO, "v1") is True
    assert index.delete_tag(REPO, "v1") is False
    assert index.delete_tag(OTHER, "v2") is False
    assert index.list_tags(REPO, None, 10) == (["v2"], False)
    assert index.get_manifest(REPO, M1) is not None  # untag keeps the manifest
    assert index.repo_exists(REPO)


def test_delete_last_tag_of_otherwise_empty_repo(index, backdoor):
    put(index, tag="v1")
    backdoor.drop_manifest_record(REPO, M1)
    assert index.delete_tag(REPO, "v1") is True
    assert not index.repo_exists(REPO)


# -- preconditions: If-Match / If-None-Match, checked in the transaction that moves the tag ---


def expect(if_match=None, if_none_match=None) -> Precondition:
    def tags(value):
        return value if value in (None, ANY) else frozenset(str(d) for d in value)
    return Precondition(tags(if_match), tags(if_none_match))


def put_expecting(index, condition, digest=M2, tag="latest", **kwargs):
    index.put_manifest(REPO, digest, meta(), b"{}", [], [], tag, kwargs.get("referrer"), 2.0, condition)


@pytest.mark.parametrize(
    "tagged, condition, stored",
    [
        # the tag names M1
        (True, expect(if_match=[M1]), True),
        (True, expect(if_match=[M3, M1]), True),
        (True, expect(if_match=ANY), True),
        (True, expect(if_match=[M3]), False),
        (True, expect(if_match=[]), False),  # only weak tags: never a strong match
        (True, expect(if_none_match=ANY), False),
        (True, expect(if_none_match=[M1]), False),
        (True, expect(if_none_match=[M3]), True),
        (True, expect(if_match=[M1], if_none_match=[M3]), True),
        (True, expect(if_match=[M1], if_none_match=ANY), False),
        # no such tag yet
        (False, expect(if_none_match=ANY), True),  # create-only
        (False, expect(if_none_match=[M1]), True),
        (False, expect(if_match=ANY), False),
        (False, expect(if_match=[M2]), False),
    ],
)
def test_put_manifest_expecting(index, backdoor, tagged, condition, stored):
    put(index, digest=M1, tag="latest" if tagged else "other")
    before = backdoor.snapshot()
    if stored:
        put_expecting(index, condition)
        assert index.resolve_tag(REPO, "latest") == M2
        return
    with pytest.raises(RegistryError) as info:
        put_expecting(index, condition, referrer=(str(M1), {"digest": str(M2)}))
    assert info.value.code is ErrorCode.PRECONDITION_FAILED and info.value.code.status == 412
    assert info.value.detail == condition.detail()  # what was asked, not what the tag names (a push-only token)
    assert backdoor.snapshot() == before  # nothing: not the manifest, not its referrers entry, not a counter


def test_put_manifest_by_digest_expecting(index, backdoor):
    """Without a tag the reference is the digest: If-None-Match: * stores it only if the repository lacks it."""
    put_expecting(index, expect(if_none_match=ANY), tag=None)
    assert index.get_manifest(REPO, M2) is not None
    before = backdoor.snapshot()
    with pytest.raises(RegistryError) as info:
        put_expecting(index, expect(if_none_match=ANY), tag=None)
    assert info.value.code is ErrorCode.PRECONDITION_FAILED
    assert backdoor.snapshot() == before
    put_expecting(index, expect(if_match=[M2]), tag=None)
    with pytest.raises(RegistryError):
        put_expecting(index, expect(if_match=ANY), digest=M3, tag=None)
    assert index.get_manifest(REPO, M3) is None


@pytest.mark.parametrize(
    "condition, deleted",
    [
        (expect(if_match=[M1]), True),
        (expect(if_match=ANY), True),
        (expect(if_none_match=[M2]), True),
        (expect(if_match=[M2]), False),
        (expect(if_none_match=ANY), False),
    ],
)
def test_delete_tag_expecting(index, backdoor, condition, deleted):
    put(index, digest=M1, tag="latest")
    before = backdoor.snapshot()
    if deleted:
        assert index.delete_tag(REPO, "latest", condition)
        assert index.resolve_tag(REPO, "latest") is None
        return
    with pytest.raises(RegistryError) as info:
        index.delete_tag(REPO, "latest", condition)
    assert info.value.code is ErrorCode.PRECONDITION_FAILED
    assert backdoor.snapshot() == before


def test_delete_missing_tag_expecting_is_not_found(index):
    """No tag: False (404), whatever the condition (RFC 9110 13.2.1: it would not have been a 2xx)."""
    put(index, digest=M1, tag="other")
    assert not index.delete_tag(REPO, "latest", expect(if_match=[M1]))
    assert not index.delete_tag(REPO, "latest", expect(if_none_match=ANY))


def _together(writers: int, put) -> list:
    """C{put(w)} on C{writers} threads released at once: each one's digest, or the code of its RegistryError."""
    barrier = threading.Barrier(writers)
    outcome: list = [None] * writers

    def writer(w):
        barrier.wait(30)
        try:
            outcome[w] = put(w)
        except RegistryError as e:
            outcome[w] = e.code

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    winners = [o for o in outcome if isinstance(o, Digest)]
    assert len(winners) == 1, outcome
    assert outcome.count(ErrorCode.PRECONDITION_FAILED) == writers - 1, outcome
    return winners[0]


def test_concurrent_puts_expecting_the_same_tag_one_wins(index):
    """
    Writers that all expect the tag to name the manifest they saw: exactly one
    moves it each round, every other is refused (the check is in the write
    transaction; without it each would store and the last would win silently).
    """
    rounds = 10
    put(index, digest=M1, tag="latest")
    seen = M1
    for r in range(rounds):
        def move(w, r=r, seen=seen):
            digest = Digest.of(b"round %d writer %d" % (r, w))
            index.put_manifest(REPO, digest, meta(), b"{}", [], [], "latest", None, 2.0 + r, expect(if_match=[seen]))
            return digest

        seen = _together(4, move)
        assert index.resolve_tag(REPO, "latest") == seen
    assert index.repo_stats(REPO)["tags"] == 1
    assert index.repo_stats(REPO)["manifests"] == 1 + rounds  # the refused stored nothing


def test_concurrent_create_only_tag_one_wins(index):
    def create(w):
        digest = Digest.of(b"create %d" % w)
        index.put_manifest(REPO, digest, meta(), b"{}", [], [], "v1.0.0", None, 2.0, expect(if_none_match=ANY))
        return digest

    winner = _together(4, create)
    assert index.resolve_tag(REPO, "v1.0.0") == winner
    assert index.repo_stats(REPO)["manifests"] == 1


# -- delete_manifest and referrers --------------------------------------------------


def test_delete_manifest_removes_its_tags_only(index):
    put(index, digest=M1, tag="a")
    put(index, digest=M1, tag="b")
    put(index, digest=M2, tag="c")
    put(index, name=OTHER, digest=M1, tag="a")
    assert index.delete_manifest(REPO, M1) is True
    assert index.get_manifest(REPO, M1) is None
    assert index.list_tags(REPO, None, 10) == (["c"], False)
    assert index.resolve_tag(REPO, "a") is None
    assert index.resolve_tag(OTHER, "a") == M1  # another repo is untouched
    assert index.get_manifest(OTHER, M1) is not None
    assert index.delete_manifest(REPO, M1) is False


def test_delete_unknown_manifest(index):
    assert index.delete_manifest(REPO, M1) is False
    put(index, digest=M2)
    assert index.delete_manifest(REPO, M1) is False
    assert index.get_manifest(REPO, M2) is not None


@pytest.mark.parametrize(
    "links, remains",
    [
        ([], False),  # the last thing in the repo: it disappears
        ([B1], True),  # blobs still linked: it stays
    ],
)
def test_repo_disappears_when_empty(index, links, remains):
    for b in links:
        commit(index, digest=b)
    put(index, digest=M1, tag="v1", blobs=[(str(b), 6) for b in links])
    assert index.delete_manifest(REPO, M1)
    assert index.repo_exists(REPO) is remains
    assert (REPO in index.list_repos(f"{A}/", None, 10)[0]) is remains


def test_referrers(index):
    d1 = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(M2), "size": 10, "artifactType": "sig"}
    d2 = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(M3), "size": 20, "artifactType": "sbom"}
    put(index, digest=M1, tag="img")
    put(index, digest=M2, subject=M1, referrer=(str(M1), d1))
    put(index, digest=M3, subject=M1, referrer=(str(M1), d2))
    by_digest = sorted([(M2, d1), (M3, d2)], key=lambda x: str(x[0]))
    assert index.referrers(REPO, M1) == [d for _, d in by_digest]
    assert index.referrers(REPO, M2) == []
    assert index.referrers(OTHER, M1) == []


def test_referrers_of_missing_subject_are_kept(index):
    # the spec: a manifest whose subject does not exist MUST be accepted
    d = {"digest": str(M2)}
    put(index, digest=M2, subject=M1, referrer=(str(M1), d))
    assert index.referrers(REPO, M1) == [d]


def test_delete_manifest_removes_its_referrers_entry(index):
    d2, d3 = {"digest": str(M2)}, {"digest": str(M3)}
    put(index, digest=M1)
    put(index, digest=M2, subject=M1, referrer=(str(M1), d2))
    put(index, digest=M3, subject=M1, referrer=(str(M1), d3))
    assert index.delete_manifest(REPO, M2)
    assert index.referrers(REPO, M1) == [d3]
    # deleting the subject leaves its referrers listed (they still exist)
    assert index.delete_manifest(REPO, M1)
    assert index.referrers(REPO, M1) == [d3]
    assert index.delete_manifest(REPO, M3)
    assert index.referrers(REPO, M1) == []
    assert not index.repo_exists(REPO)


def test_referrers_isolated_by_subject_prefix(index):
    put(index, digest=M2, subject=M1, referrer=(str(M1), {"n": 1}))
    other_subject = Digest.of(b"x", "sha512")
    put(index, digest=M3, subject=other_subject, referrer=(str(other_subject), {"n": 2}))
    assert index.referrers(REPO, M1) == [{"n": 1}]
    assert index.referrers(REPO, other_subject) == [{"n": 2}]


def test_state_survives_reopen(index_backend, request, tmp_path):
    idx = open_index(index_backend, request, tmp_path)
    commit(idx)
    put(idx, blobs=[(str(B1), 6)], tag="v1")
    idx.put_upload("u", {"name": REPO, "offset": 1})
    idx.close()
    idx = open_index(index_backend, request, tmp_path)
    try:
        assert idx.resolve_tag(REPO, "v1") == M1
        assert idx.blob_size(REPO, B1) == 6
        assert idx.get_upload("u") == {"name": REPO, "offset": 1}
    finally:
        idx.close()


# -- whole-index reads: metrics, account usage --------------------------------------


def test_totals_and_account_blobs(index):
    assert index.totals() == {"blobs": 0, "blob_bytes": 0, "manifests": 0, "manifest_bytes": 0, "uploads": 0}
    commit(index, digest=B1, size=6)
    commit(index, digest=B2, size=10)
    commit(index, name=f"{B}/app", digest=B3, size=7)
    put(index, digest=M1, data=b"12345", blobs=[(str(B1), 6)])
    put(index, name=f"{B}/app", digest=M1, data=b"123", blobs=[(str(B3), 7)])
    index.put_upload("u", {"name": REPO, "offset": 0})
    assert index.totals() == {"blobs": 3, "blob_bytes": 23, "manifests": 2, "manifest_bytes": 8, "uploads": 1}
    assert index.account_blobs(A) == {str(B1)}  # linked B2 is named by no manifest
    assert index.account_blobs(B) == {str(B3)}


def test_storage_gauges_from_either_index(index):
    from izreg.browse import usage
    from izreg.service.metrics import StorageCollector

    commit(index, digest=B1, size=6)
    put(index, digest=M1, data=b"12345", blobs=[(str(B1), 6)])
    gauges = {family.name: family.samples[0].value for family in StorageCollector(index).collect()}
    assert gauges == {"izreg_blobs": 1, "izreg_blobs_bytes": 6, "izreg_manifests": 1, "izreg_manifests_bytes": 5,
                      "izreg_upload_sessions": 0}
    assert usage(index, A) == {"account": A, "repositories": 1, "manifests": 1, "blobs": 1, "size": 11}


def test_an_upload_record_is_replaced_only_over_the_offset_expected(index):
    # two nodes appending to one session: the second to write must not overwrite the first's record
    r = {"name": REPO, "offset": 0, "started": 1.0, "updated": 1.0}
    assert index.put_upload("u-id", r) is True
    assert index.put_upload("u-id", {**r, "offset": 5}, 0) is True
    assert index.put_upload("u-id", {**r, "offset": 7}, 0) is False
    assert index.get_upload("u-id")["offset"] == 5
    assert index.put_upload("u-id", {**r, "offset": 9}, 5) is True
    assert index.put_upload("gone", {**r, "offset": 9}, 0) is False and index.get_upload("gone") is None


# -- garbage collection: a batch of candidates per write transaction --------------------


def test_collect_blobs_rechecks_each_candidate_of_the_batch(index):
    orphan, used, fresh, shared = (Digest.of(b"gc-%d" % i) for i in range(4))
    commit(index, digest=orphan, size=1, now=1.0)
    commit(index, digest=used, size=2, now=1.0)
    put(index, blobs=[(str(used), 2)], now=1.0)
    commit(index, digest=fresh, size=3, now=1.0)
    assert index.touch_blob(REPO, fresh, 50.0)  # a HEAD after the candidate scan
    commit(index, name=OTHER, digest=shared, size=4, now=1.0)
    assert index.mount_blob(f"{A}/third", shared, [OTHER], 1.0)
    unknown = str(Digest.of(b"never pushed"))
    batch = [str(orphan), str(used), str(fresh), unknown, str(shared)]
    assert index.collect_blobs(batch, 10.0) == [1, None, None, None, 4]
    assert index.blob_record(orphan) is None and index.blob_record(shared) is None
    assert index.blob_record(used) is not None and index.blob_record(fresh) is not None
    assert index.repos_linking(shared) == []
    assert index.list_repos("", None, 10)[0] == [REPO]  # OTHER and third had only the shared blob
    assert index.collect_blobs([str(orphan)], 10.0) == [None]  # already gone
    assert index.collect_blobs([], 10.0) == []


def test_collect_blobs_drops_records_and_a_blob_pushed_again_before_its_bytes_go_keeps_them(index):
    # the collector's two steps: the records go (committed), then the bytes of those still without one
    again, gone = Digest.of(b"gc-again"), Digest.of(b"gc-gone")
    for d in (again, gone):
        commit(index, digest=d, now=1.0)
    assert None not in index.collect_blobs([str(again), str(gone)], 10.0)
    assert index.blob_record(again) is None and index.blob_record(gone) is None
    commit(index, digest=again, now=20.0)  # pushed again between the two steps
    deleted = []
    assert index.without_records([again, gone], deleted.append) == [None, None]
    assert deleted == [gone]
    assert index.blob_record(again) is not None


def test_without_records_calls_f_for_the_unrecorded_only(index):
    recorded, loose = Digest.of(b"recorded"), Digest.of(b"loose")
    commit(index, digest=recorded)
    seen = []
    assert index.without_records([recorded, loose], lambda d: seen.append(d) or 7) == [None, 7]
    assert seen == [loose]


def test_collect_links_rechecks_each_link_of_the_batch(index):
    stale, used, young = (Digest.of(b"link-%d" % i) for i in range(3))
    commit(index, digest=stale, now=1.0)
    commit(index, digest=used, now=1.0)
    put(index, blobs=[(str(used), 6)], now=1.0)
    commit(index, digest=young, now=20.0)
    commit(index, name=OTHER, digest=stale, now=1.0)
    links = [(REPO, str(stale)), (REPO, str(used)), (REPO, str(young)), (OTHER, str(stale)), (OTHER, str(used))]
    assert index.collect_links(links, 10.0) == [True, False, False, True, False]
    assert index.blob_size(REPO, stale) is None and index.blob_size(REPO, young) == 6
    assert index.repos_linking(stale) == []
    assert index.blob_record(stale) is not None  # a link goes, the blob is the blob collector's
    assert index.list_repos("", None, 10)[0] == [REPO]  # OTHER is empty now
