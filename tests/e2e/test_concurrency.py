"""
Races that real CI produces: many clients pushing the same layer at once
(into one repository and into several), and several pushes racing for one tag.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.ociclient import OCI_MANIFEST, OCIClient, describe, expect, sha256_digest
from tests.helpers.ocilayout import OCI_CONFIG, OCI_LAYER_GZIP, canonical_json, random_bytes

pytestmark = pytest.mark.e2e


def _run_together(n, fn):
    """Run fn(i) for i in range(n) on n threads, released together by a barrier."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait(30)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def test_same_blob_pushed_concurrently(registry, new_repo):
    data = random_bytes(2_000_000, "same-blob")
    digest = sha256_digest(data)
    repos = [new_repo("same-a"), new_repo("same-b")]
    methods = ["monolithic", "post_put", "chunked"]

    def push(i):
        client = OCIClient(registry.url, auth=registry.requests_auth)
        repo = repos[i % 2]
        method = methods[i % 3]
        if method == "monolithic":
            resp = client.push_blob_monolithic(repo, data)
        elif method == "post_put":
            resp = client.push_blob_post_put(repo, data)
        else:
            resp = client.push_blob_chunked(repo, data, 256 * 1024)
        return repo, method, resp.status_code, resp.headers.get("Docker-Content-Digest"), describe(resp)

    results = _run_together(8, push)
    for repo, method, status, header, text in results:
        assert status == 201, f"{method} into {repo}:\n{text}"
        assert header == digest
    client = OCIClient(registry.url, auth=registry.requests_auth)
    for repo in repos:
        resp = expect(client.get_blob(repo, digest), 200)
        assert resp.content == data
    if registry.backend == "izreg":
        hexpart = digest.split(":", 1)[1]
        path = os.path.join(registry.data_dir, "blobs", "sha256", hexpart[:2], hexpart)
        with open(path, "rb") as f:
            assert f.read() == data


def test_tag_race_resolves_to_one_pushed_manifest(registry, repo):
    client = OCIClient(registry.url, auth=registry.requests_auth)
    config = canonical_json({"architecture": "amd64", "os": "linux"})
    expect(client.push_blob_monolithic(repo, config), 201)
    bodies = []
    for i in range(6):
        layer = random_bytes(1000 + i, f"race-{i}")
        expect(client.push_blob_monolithic(repo, layer), 201)
        bodies.append(canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer), "size": len(layer)}],
        }))

    def put(i):
        c = OCIClient(registry.url, auth=registry.requests_auth)
        return c.put_manifest(repo, "latest", bodies[i]).status_code

    assert _run_together(len(bodies), put) == [201] * len(bodies)
    resp = expect(client.get_manifest(repo, "latest"), 200)
    assert resp.content in bodies
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(resp.content)
    # every pushed manifest stays reachable by digest; the tag is listed once
    for body in bodies:
        assert expect(client.get_manifest(repo, sha256_digest(body)), 200).content == body
    assert client.tags(repo) == ["latest"]
