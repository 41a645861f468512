"""Tags list, catalog and referrers (end-8, end-12, /v2/_catalog)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted

from tests.http.helpers import (
    API_VERSION,
    EMPTY_JSON_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    OTHER_ACCOUNT,
    descriptor,
    digest_of,
    dumps,
    header,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    repo,
)

NAME = repo("list/app")
TAGS = ["v1", "latest", "V2", "a", "b-1", "b_0", "b.2", "0", "_x", "zz"]


async def tagged(server, name=NAME, tags=TAGS):
    digest, data = await push_image(server, name, tags[0])
    for tag in tags[1:]:
        response, _ = await put_manifest(server, name, tag, data)
        assert response.code == 201
    return digest, data


async def get_json(server, path):
    response, body = await server.request("GET", path)
    assert response.code == 200, (path, response.code, body)
    return response, json.loads(body)


def next_link(response) -> str | None:
    link = header(response, "Link")
    if link is None:
        return None
    target, _, rel = link.partition(";")
    assert rel.strip() == 'rel="next"'
    assert target.startswith("<") and target.endswith(">")
    return target[1:-1]


# -- tags -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tags_in_lexical_order(server):
    await tagged(server)
    response, document = await get_json(server, f"/v2/{NAME}/tags/list")
    assert document == {"name": NAME, "tags": sorted(TAGS)}
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Link") is None
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest_twisted.ensureDeferred
async def test_tags_of_nested_repositories_do_not_mix(server):
    await tagged(server, repo("a"), ["t1"])
    await tagged(server, repo("a/b"), ["t2"])
    await tagged(server, repo("a-b"), ["t3"])
    _, document = await get_json(server, f"/v2/{repo('a')}/tags/list")
    assert document["tags"] == ["t1"]
    _, document = await get_json(server, f"/v2/{repo('a/b')}/tags/list")
    assert document["tags"] == ["t2"]


@pytest.mark.parametrize("n", [1, 3, 4, 9, 10])
@pytest_twisted.ensureDeferred
async def test_tags_pagination_follows_link(server, n):
    await tagged(server)
    path = f"/v2/{NAME}/tags/list?n={n}"
    seen, pages = [], 0
    while path is not None:
        response, document = await get_json(server, path)
        pages += 1
        assert len(document["tags"]) <= n
        seen += document["tags"]
        link = next_link(response)
        if link is not None:
            assert len(document["tags"]) == n
            assert urlsplit(link).path == f"/v2/{NAME}/tags/list"
            query = parse_qs(urlsplit(link).query)
            assert query["n"] == [str(n)] and query["last"] == [document["tags"][-1]]
        path = link
    assert seen == sorted(TAGS)
    assert pages in (-(-len(TAGS) // n), -(-len(TAGS) // n) + 1)


@pytest_twisted.ensureDeferred
async def test_tags_link_format(server):
    await tagged(server)
    response, document = await get_json(server, f"/v2/{NAME}/tags/list?n=2")
    assert document["tags"] == sorted(TAGS)[:2]
    assert header(response, "Link") == f'</v2/{NAME}/tags/list?n=2&last={sorted(TAGS)[1]}>; rel="next"'


@pytest_twisted.ensureDeferred
async def test_tags_n_larger_than_list(server):
    await tagged(server)
    response, document = await get_json(server, f"/v2/{NAME}/tags/list?n=1000")
    assert document["tags"] == sorted(TAGS)
    assert header(response, "Link") is None


@pytest_twisted.ensureDeferred
async def test_tags_last_is_exclusive(server):
    await tagged(server)
    ordered = sorted(TAGS)
    _, document = await get_json(server, f"/v2/{NAME}/tags/list?last={ordered[3]}")
    assert document["tags"] == ordered[4:]
    _, document = await get_json(server, f"/v2/{NAME}/tags/list?last={ordered[3]}&n=2")
    assert document["tags"] == ordered[4:6]
    # a `last` that is not a tag: everything after it
    _, document = await get_json(server, f"/v2/{NAME}/tags/list?last=b")
    assert document["tags"] == [t for t in ordered if t > "b"]
    _, document = await get_json(server, f"/v2/{NAME}/tags/list?last={ordered[-1]}")
    assert document["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "0x10", "", " 1"])
@pytest_twisted.ensureDeferred
async def test_tags_bad_n_is_400(server, n):
    await tagged(server)
    status, code, _ = await server.error("GET", f"/v2/{NAME}/tags/list?n={n}")
    assert (status, code) == (400, "PAGINATION_NUMBER_INVALID")


@pytest_twisted.ensureDeferred
async def test_tags_unknown_repository_is_404(server):
    status, code, response = await server.error("GET", f"/v2/{repo('never')}/tags/list")
    assert (status, code) == (404, "NAME_UNKNOWN")
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest_twisted.ensureDeferred
async def test_tags_of_repository_without_tags_is_empty(server):
    await push_blob(server, NAME, b"just a blob")
    _, document = await get_json(server, f"/v2/{NAME}/tags/list")
    assert document == {"name": NAME, "tags": []}


@pytest_twisted.ensureDeferred
async def test_tags_list_trailing_slash(server):
    await tagged(server, tags=["one"])
    _, document = await get_json(server, f"/v2/{NAME}/tags/list/")
    assert document["tags"] == ["one"]


# -- catalog ---------------------------------------------------------------------------------------

REPOS = [repo("b"), repo("a"), repo("a/z"), repo("a-b"), repo("c.d"), repo("x", OTHER_ACCOUNT)]


async def repositories(server):
    for name in REPOS:
        await push_blob(server, name, b"blob of " + name.encode())
    return sorted(REPOS)


@pytest_twisted.ensureDeferred
async def test_catalog_lists_repositories_in_order(server):
    expected = await repositories(server)
    response, document = await get_json(server, "/v2/_catalog")
    assert document == {"repositories": expected}
    assert header(response, "Link") is None


@pytest_twisted.ensureDeferred
async def test_catalog_empty(server):
    _, document = await get_json(server, "/v2/_catalog")
    assert document == {"repositories": []}


@pytest.mark.parametrize("n", [1, 2, 5, 6])
@pytest_twisted.ensureDeferred
async def test_catalog_pagination(server, n):
    expected = await repositories(server)
    path = f"/v2/_catalog?n={n}"
    seen = []
    while path is not None:
        response, document = await get_json(server, path)
        assert len(document["repositories"]) <= n
        seen += document["repositories"]
        link = next_link(response)
        if link is not None:
            assert urlsplit(link).path == "/v2/_catalog"
            assert parse_qs(urlsplit(link).query)["last"] == [document["repositories"][-1]]
        path = link
    assert seen == expected


@pytest_twisted.ensureDeferred
async def test_catalog_last_is_exclusive(server):
    expected = await repositories(server)
    _, document = await get_json(server, f"/v2/_catalog?last={expected[1]}")
    assert document["repositories"] == expected[2:]


@pytest.mark.parametrize("n", ["-3", "x", ""])
@pytest_twisted.ensureDeferred
async def test_catalog_bad_n_is_400(server, n):
    status, code, _ = await server.error("GET", f"/v2/_catalog?n={n}")
    assert (status, code) == (400, "PAGINATION_NUMBER_INVALID")


@pytest_twisted.ensureDeferred
async def test_catalog_drops_emptied_repository(server):
    digest = await push_blob(server, repo("gone"), b"x")
    await push_blob(server, repo("stays"), b"y")
    response, _ = await server.request("DELETE", f"/v2/{repo('gone')}/blobs/{digest}")
    assert response.code == 202
    _, document = await get_json(server, "/v2/_catalog")
    assert document["repositories"] == [repo("stays")]


# -- referrers --------------------------------------------------------------------------------------


async def push_referrer(server, name, subject_data, artifact_type=None, annotations=None, config_type=None,
                        payload=b"payload", tag=None):
    await push_blob(server, name, payload)
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if config_type is None:
        document["config"] = {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}
    else:
        config = b'{"kind":"' + config_type.encode() + b'"}'
        await push_blob(server, name, config)
        document["config"] = descriptor(config_type, config)
    document["layers"] = [descriptor("application/octet-stream", payload)]
    document["subject"] = descriptor(OCI_MANIFEST, subject_data)
    if annotations is not None:
        document["annotations"] = annotations
    data = dumps(document)
    response, _ = await put_manifest(server, name, tag or digest_of(data), data)
    assert response.code == 201
    assert header(response, "OCI-Subject") == digest_of(subject_data)
    return digest_of(data), data


@pytest_twisted.ensureDeferred
async def test_referrers_of_unknown_subject_is_empty_index(server):
    for name in (NAME, repo("never")):
        response, document = await get_json(server, f"/v2/{name}/referrers/{digest_of(b'nothing')}")
        assert header(response, "Content-Type") == OCI_INDEX
        assert document == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


@pytest_twisted.ensureDeferred
async def test_referrers_listed_with_artifact_type_and_annotations(server):
    subject_digest, subject = await push_image(server, NAME)
    sig, sig_data = await push_referrer(server, NAME, subject, artifact_type="application/vnd.example.sig",
                                        annotations={"org.example.kind": "signature", "created": "now"})
    sbom, sbom_data = await push_referrer(server, NAME, subject, config_type="application/vnd.example.sbom.config",
                                          payload=b"sbom")
    response, document = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}")
    assert header(response, "Content-Type") == OCI_INDEX
    assert header(response, "OCI-Filters-Applied") is None
    assert document["schemaVersion"] == 2 and document["mediaType"] == OCI_INDEX
    by_digest = {entry["digest"]: entry for entry in document["manifests"]}
    assert set(by_digest) == {sig, sbom}
    assert by_digest[sig] == {
        "mediaType": OCI_MANIFEST,
        "digest": sig,
        "size": len(sig_data),
        "artifactType": "application/vnd.example.sig",
        "annotations": {"org.example.kind": "signature", "created": "now"},
    }
    assert by_digest[sbom]["artifactType"] == "application/vnd.example.sbom.config"
    assert by_digest[sbom]["size"] == len(sbom_data)
    assert "annotations" not in by_digest[sbom]


@pytest_twisted.ensureDeferred
async def test_referrers_are_per_repository(server):
    subject_digest, subject = await push_image(server, NAME)
    await push_referrer(server, NAME, subject, artifact_type="application/x")
    _, document = await get_json(server, f"/v2/{repo('other')}/referrers/{subject_digest}")
    assert document["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_referrers_filter_by_artifact_type(server):
    subject_digest, subject = await push_image(server, NAME)
    sig, _ = await push_referrer(server, NAME, subject, artifact_type="application/vnd.example.sig")
    await push_referrer(server, NAME, subject, artifact_type="application/vnd.example.sbom", payload=b"sbom")
    response, document = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}?artifactType=application/vnd.example.sig")
    assert header(response, "OCI-Filters-Applied") == "artifactType"
    assert [entry["digest"] for entry in document["manifests"]] == [sig]
    response, document = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}?artifactType=application/none")
    assert header(response, "OCI-Filters-Applied") == "artifactType"
    assert document["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_referrer_of_missing_subject_is_listed(server):
    subject = image_manifest(b'{"absent":1}', (b"absent",))
    ref, _ = await push_referrer(server, NAME, subject, artifact_type="application/x")
    _, document = await get_json(server, f"/v2/{NAME}/referrers/{digest_of(subject)}")
    assert [entry["digest"] for entry in document["manifests"]] == [ref]


@pytest_twisted.ensureDeferred
async def test_deleting_referrer_removes_it(server):
    subject_digest, subject = await push_image(server, NAME)
    sig, _ = await push_referrer(server, NAME, subject, artifact_type="application/vnd.example.sig")
    other, _ = await push_referrer(server, NAME, subject, artifact_type="application/vnd.example.sbom", payload=b"s")
    response, _ = await server.request("DELETE", f"/v2/{NAME}/manifests/{sig}")
    assert response.code == 202
    _, document = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}")
    assert [entry["digest"] for entry in document["manifests"]] == [other]


@pytest_twisted.ensureDeferred
async def test_tagged_referrer_deleted_by_digest(server):
    subject_digest, subject = await push_image(server, NAME)
    sig, _ = await push_referrer(server, NAME, subject, artifact_type="application/x", tag="sig")
    response, _ = await server.request("DELETE", f"/v2/{NAME}/manifests/{sig}")
    assert response.code == 202
    _, document = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}")
    assert document["manifests"] == []


@pytest.mark.parametrize("bad", ["latest", "sha256:123", "sha256:" + "Z" * 64])
@pytest_twisted.ensureDeferred
async def test_referrers_invalid_digest_is_400(server, bad):
    status, code, _ = await server.error("GET", f"/v2/{NAME}/referrers/{bad}")
    assert (status, code) == (400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_index_referrer_listed(server):
    subject_digest, subject = await push_image(server, NAME)
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.example.bundle",
                "manifests": [], "subject": descriptor(OCI_MANIFEST, subject)}
    data = dumps(document)
    response, _ = await put_manifest(server, NAME, digest_of(data), data, OCI_INDEX)
    assert response.code == 201
    assert header(response, "OCI-Subject") == subject_digest
    _, listed = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}")
    assert listed["manifests"] == [{"mediaType": OCI_INDEX, "digest": digest_of(data), "size": len(data),
                                    "artifactType": "application/vnd.example.bundle"}]


@pytest_twisted.ensureDeferred
async def test_empty_artifact_type_is_as_missing(server):
    """
    OCI distribution-spec v1.1 (listing referrers): "if the artifactType is empty or missing" in an image
    manifest, its descriptor takes the config's mediaType; in an index, it has none. Pushed as such, not refused.
    """
    subject_digest, subject = await push_image(server, NAME)
    image, _ = await push_referrer(server, NAME, subject, artifact_type="", config_type="application/vnd.example.cfg")
    data = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "", "manifests": [],
                  "subject": descriptor(OCI_MANIFEST, subject)})
    response, _ = await put_manifest(server, NAME, digest_of(data), data, OCI_INDEX)
    assert response.code == 201
    assert header(response, "OCI-Subject") == subject_digest
    _, listed = await get_json(server, f"/v2/{NAME}/referrers/{subject_digest}")
    by_digest = {entry["digest"]: entry for entry in listed["manifests"]}
    assert by_digest[image]["artifactType"] == "application/vnd.example.cfg"
    assert "artifactType" not in by_digest[digest_of(data)]


# -- tag pages served again while the index is unchanged (izreg.http.listings.TagPages) ------------------------


@pytest_twisted.ensureDeferred
async def test_a_tags_page_is_read_again_once_the_index_changed(server):
    name = repo("pages/app")
    digest, data = await tagged(server, name, ["a", "b", "c"])
    pages = server.service.api.tag_pages
    first, listed = await get_json(server, f"/v2/{name}/tags/list?n=2")
    assert listed == {"name": name, "tags": ["a", "b"]} and next_link(first) == f"/v2/{name}/tags/list?n=2&last=b"
    again, relisted = await get_json(server, f"/v2/{name}/tags/list?n=2")  # the page kept: the same answer
    assert relisted == listed and next_link(again) == next_link(first)
    # kept over LMDB; over PostgreSQL (no version) never, and read every time
    kept = server.service.registry.index.version() is not None
    assert ((name, 2, None) in pages.pages) is kept and (kept or not pages.pages)
    # a tag pushed: the next request reads the index again
    response, _ = await put_manifest(server, name, "0", data)
    assert response.code == 201
    _, listed = await get_json(server, f"/v2/{name}/tags/list?n=2")
    assert listed["tags"] == ["0", "a"]
    # the manifest deleted, and its tags with it: gone at the next request
    response, _ = await server.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 202
    first, listed = await get_json(server, f"/v2/{name}/tags/list?n=2")
    assert listed == {"name": name, "tags": []} and next_link(first) is None


@pytest_twisted.ensureDeferred
async def test_a_tag_deleted_by_another_process_is_gone_at_the_next_request(server, tmp_path):
    """The izreg commands write the same LMDB from their own process: the index's version is its last transaction's."""
    import os
    import subprocess
    import sys

    from izreg.storage.lmdbindex import Index

    name = repo("pages/other")
    await tagged(server, name, ["a", "b"])
    _, listed = await get_json(server, f"/v2/{name}/tags/list")
    assert listed["tags"] == ["a", "b"]
    index = server.service.registry.index
    if not isinstance(index, Index):
        pytest.skip("the LMDB index: another process opens the same environment")
    script = ("import sys; from izreg.storage.lmdbenv import open_env; from izreg.storage.lmdbindex import Index; "
              "index = Index(open_env(sys.argv[1], 1 << 30)); assert index.delete_tag(sys.argv[2], 'b'); index.close()")
    data_dir = os.path.dirname(index.env.path())  # open_env's data dir holds the index
    subprocess.run([sys.executable, "-c", script, data_dir, name], check=True, timeout=60)
    _, listed = await get_json(server, f"/v2/{name}/tags/list")
    assert listed["tags"] == ["a"]


def test_tag_pages_are_bounded_in_number_and_bytes():
    from izreg.http.listings import TagPages

    pages = TagPages()
    pages.put(("r", 1, None), 7, (None, b"x" * (TagPages.PAGE_BYTES + 1)))  # too large to keep
    assert pages.get(("r", 1, None), 7) is None and pages.bytes == 0
    pages.put(("r", 1, None), None, (None, b"{}"))  # no version: never kept
    assert pages.pages == {}
    pages.put(("r", 1, None), 7, (None, b"{}"))
    pages.put(("r", 1, None), 8, (None, b"{1}"))  # the same key again: counted once
    assert pages.get(("r", 1, None), 7) is None and pages.get(("r", 1, None), 8) == (None, b"{1}")
    assert pages.bytes == 3
    big = b"y" * TagPages.PAGE_BYTES
    for i in range(TagPages.BYTES // TagPages.PAGE_BYTES + 1):
        pages.put(("r", i, "big"), 8, (None, big))
        assert pages.bytes <= TagPages.BYTES and len(pages.pages) <= TagPages.SIZE
    for i in range(TagPages.SIZE + 1):
        pages.put(("s", i, None), 8, (None, b"{}"))
        assert len(pages.pages) <= TagPages.SIZE
