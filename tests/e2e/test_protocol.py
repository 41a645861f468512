"""
Protocol details that only show up through the real HTTP stack of the real
process (chunked transfer-encoding, streamed bodies, HEAD lengths, Range,
Link pagination, referrers, error envelopes), as real clients use them.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.ociclient import OCI_INDEX, OCI_MANIFEST, describe, expect, sha256_digest
from tests.helpers.ocilayout import OCI_CONFIG, OCI_LAYER_GZIP, canonical_json, random_bytes

pytestmark = pytest.mark.e2e


def error_codes(resp) -> list[str]:
    try:
        return [e["code"] for e in resp.json()["errors"]]
    except Exception:  # noqa: BLE001 - reported by the assertion
        return [f"<not an OCI error body: {resp.content[:200]!r}>"]


def push_image(client, repo, tag, seed, subject=None, artifact_type=None, annotations=None):
    """Push a tiny image (config + 1 layer) and its manifest; return (digest, body, manifest)."""
    layer = random_bytes(2048, f"layer-{seed}")
    config = canonical_json({"architecture": "amd64", "os": "linux", "seed": seed})
    for data in (config, layer):
        expect(client.push_blob_monolithic(repo, data), 201)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer), "size": len(layer)}],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = annotations
    body = canonical_json(manifest)
    resp = expect(client.put_manifest(repo, tag, body), 201)
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(body)
    return sha256_digest(body), body, manifest


def test_base_endpoint(client):
    resp = expect(client.request("GET", "/v2/"), 200)
    assert resp.headers.get("Docker-Distribution-API-Version") == "registry/2.0", describe(resp)


def test_streamed_patch_without_content_range(client, repo):
    """The legacy docker push: one PATCH, chunked transfer-encoding, no Content-Range/Length."""
    data = random_bytes(300_001, "streamed")
    url = client.location(expect(client.start_upload(repo), 202))

    def body():
        for i in range(0, len(data), 32_768):
            yield data[i:i + 32_768]

    resp = client.request("PATCH", url, data=body(), headers={"Content-Type": "application/octet-stream"})
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    expect(resp, 202)
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = expect(client.request("PUT", client.with_query(client.location(resp), digest=sha256_digest(data))), 201)
    got = expect(client.get_blob(repo, sha256_digest(data)), 200)
    assert got.content == data


def test_large_monolithic_put(client, repo):
    """A 24 MiB blob in one PUT (containerd/oras): streamed in and out intact."""
    data = random_bytes(24 * 1024 * 1024, "big")
    digest = sha256_digest(data)
    expect(client.push_blob_post_put(repo, data), 201)
    head = expect(client.head_blob(repo, digest), 200)
    assert int(head.headers["Content-Length"]) == len(data)
    resp = expect(client.get_blob(repo, digest, stream=True), 200)
    h = __import__("hashlib").sha256()
    n = 0
    for chunk in resp.iter_content(1 << 20):
        h.update(chunk)
        n += len(chunk)
    assert (n, "sha256:" + h.hexdigest()) == (len(data), digest)


def test_blob_range_requests(client, repo):
    data = random_bytes(100_000, "ranges")
    digest = sha256_digest(data)
    expect(client.push_blob_monolithic(repo, data), 201)
    resp = expect(client.get_blob(repo, digest, headers={"Range": "bytes=10-99"}), 206)
    assert resp.content == data[10:100]
    assert resp.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    # a resumed download (docker/containerd): bytes=<offset>-
    resp = expect(client.get_blob(repo, digest, headers={"Range": "bytes=60000-"}), 206)
    assert resp.content == data[60000:]
    assert resp.headers["Content-Range"] == f"bytes 60000-{len(data) - 1}/{len(data)}"


def test_upload_cancel(client, repo):
    url = client.location(expect(client.start_upload(repo), 202))
    url = client.location(expect(client.patch_chunk(url, b"x" * 100, 0), 202))
    resp = client.request("DELETE", url)
    assert resp.status_code == 204, describe(resp)
    resp = client.request("GET", url)
    assert resp.status_code == 404, describe(resp)
    assert error_codes(resp) == ["BLOB_UPLOAD_UNKNOWN"]


def test_tags_pagination(client, repo, izreg_only):
    digest, body, _ = push_image(client, repo, "t-c", seed=1)
    for tag in ("t-a", "t-e", "t-b", "t-d"):
        expect(client.put_manifest(repo, tag, body), 201)
    everything = ["t-a", "t-b", "t-c", "t-d", "t-e"]
    assert client.tags(repo) == everything

    first = expect(client.request("GET", f"/v2/{repo}/tags/list?n=2"), 200)
    assert first.json() == {"name": repo, "tags": ["t-a", "t-b"]}
    assert first.links.get("next", {}).get("url"), describe(first)
    # follow the Link headers all the way
    pages, url = [], f"/v2/{repo}/tags/list?n=2"
    while url:
        resp = expect(client.request("GET", url), 200)
        pages.append(resp.json()["tags"])
        url = resp.links.get("next", {}).get("url")
    assert [t for page in pages for t in page] == everything
    assert all(len(p) <= 2 for p in pages)

    resp = expect(client.request("GET", f"/v2/{repo}/tags/list?n=10&last=t-b"), 200)
    assert resp.json()["tags"] == ["t-c", "t-d", "t-e"]
    assert "next" not in resp.links
    resp = expect(client.request("GET", f"/v2/{repo}/tags/list?n=0"), 200)
    assert resp.json()["tags"] == []
    assert "next" not in resp.links


def test_catalog_lists_and_pages(client, new_repo):
    repos = sorted(new_repo(n) for n in ("cat-a", "cat-b", "cat-c/sub"))
    for i, r in enumerate(repos):
        push_image(client, r, "v1", seed=10 + i)
    catalog = client.catalog()
    assert set(repos) <= set(catalog)
    assert catalog == sorted(catalog)
    resp = expect(client.request("GET", "/v2/_catalog?n=1"), 200)
    assert len(resp.json()["repositories"]) == 1
    assert resp.links.get("next", {}).get("url"), describe(resp)
    resp = client.request("GET", "/v2/_catalog?n=0")
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["repositories"] == []
    assert "next" not in resp.links


def test_referrers(client, repo, izreg_only):
    subject_digest, subject_body, _ = push_image(client, repo, "v1", seed=20)
    subject = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject_body)}

    # an empty list (not a 404) before anything refers to it
    resp = expect(client.request("GET", f"/v2/{repo}/referrers/{subject_digest}"), 200)
    assert resp.headers["Content-Type"] == OCI_INDEX
    assert resp.json()["manifests"] == []

    sig_type = "application/vnd.example.signature.v1"
    sbom_type = "application/vnd.example.sbom.v1"
    digests = {}
    for i, art in enumerate((sig_type, sbom_type)):
        layer = random_bytes(100, f"art-{i}")
        empty = b"{}"
        for data in (empty, layer):
            expect(client.push_blob_monolithic(repo, data), 201)
        body = canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": art,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(empty), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": sha256_digest(layer), "size": len(layer)}],
            "subject": subject,
            "annotations": {"org.example.kind": art},
        })
        d = sha256_digest(body)
        resp = expect(client.put_manifest(repo, d, body), 201)
        assert resp.headers.get("OCI-Subject") == subject_digest, describe(resp)
        digests[art] = (d, len(body))

    resp = expect(client.request("GET", f"/v2/{repo}/referrers/{subject_digest}"), 200)
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = resp.json()
    assert index["mediaType"] == OCI_INDEX
    found = {m["digest"]: m for m in index["manifests"]}
    assert set(found) == {d for d, _ in digests.values()}
    for art, (d, size) in digests.items():
        assert found[d]["artifactType"] == art
        assert found[d]["size"] == size
        assert found[d]["mediaType"] == OCI_MANIFEST
        assert found[d]["annotations"] == {"org.example.kind": art}

    resp = expect(client.request("GET", f"/v2/{repo}/referrers/{subject_digest}?artifactType={sbom_type}"), 200)
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in resp.json()["manifests"]] == [digests[sbom_type][0]]


def test_error_envelopes(client, repo, account, izreg_only):
    missing = sha256_digest(b"never pushed")
    resp = client.get_blob(repo, missing)
    assert resp.status_code == 404 and error_codes(resp) == ["BLOB_UNKNOWN"], describe(resp)
    resp = client.get_manifest(repo, "nope")
    assert resp.status_code == 404, describe(resp)
    assert error_codes(resp)[0] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")

    # an invalid repository name is a 400 NAME_INVALID, not a 404
    resp = client.get_manifest(f"{account}/Bad--Name", "v1")
    assert resp.status_code == 400 and error_codes(resp) == ["NAME_INVALID"], describe(resp)

    # a body that does not match ?digest=
    data = b"some bytes"
    url = client.location(expect(client.start_upload(repo), 202))
    resp = client.request("PUT", client.with_query(url, digest=sha256_digest(b"other bytes")), data=data)
    assert resp.status_code == 400 and error_codes(resp) == ["DIGEST_INVALID"], describe(resp)
    assert client.get_blob(repo, sha256_digest(data)).status_code == 404

    # a manifest whose blobs were never pushed
    body = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": missing, "size": 12},
        "layers": [],
    })
    resp = client.put_manifest(repo, "dangling", body)
    assert resp.status_code == 400 and error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"], describe(resp)

    # a manifest pushed by digest must match that digest
    digest, good, _ = push_image(client, repo, "v1", seed=30)
    resp = client.put_manifest(repo, sha256_digest(b"x"), good)
    assert resp.status_code == 400 and error_codes(resp) == ["DIGEST_INVALID"], describe(resp)
    assert json.loads(expect(client.get_manifest(repo, digest), 200).content) == json.loads(good)


def test_a_blob_a_manifest_names_is_not_deleted(client, repo, izreg_only):
    """Over a real server: a layer of a manifest in the repository is refused (409 DENIED), as zot does."""
    digest, _, manifest = push_image(client, repo, "v1", seed=40)
    layer, config = manifest["layers"][0]["digest"], manifest["config"]["digest"]
    resp = client.request("DELETE", f"/v2/{repo}/blobs/{layer}")
    assert resp.status_code == 409 and error_codes(resp) == ["DENIED"], describe(resp)
    assert "must be deleted first" in resp.json()["errors"][0]["message"]
    assert resp.json()["errors"][0]["detail"] == {"digest": layer, "manifests": [digest]}
    expect(client.get_blob(repo, layer), 200)  # the image still pulls
    expect(client.request("DELETE", f"/v2/{repo}/manifests/{digest}"), 202)
    for blob in (layer, config):
        expect(client.request("DELETE", f"/v2/{repo}/blobs/{blob}"), 202)
    resp = client.request("DELETE", f"/v2/{repo}/blobs/{layer}")
    assert resp.status_code == 404 and error_codes(resp) == ["BLOB_UNKNOWN"], describe(resp)
