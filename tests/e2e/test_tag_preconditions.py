"""
Two CI jobs racing to move one tag, each with the If-Match of the manifest it
saw (or If-None-Match: * to create a release tag): against a real ``twistd
izreg server``, exactly one PUT is a 201 and the other a 412 that stored
nothing. Over LMDB, and over PostgreSQL (a node with its metadata there).
"""

from __future__ import annotations

import pytest

from tests.e2e.test_concurrency import _run_together
from tests.e2e.test_pg_node import node_config
from tests.helpers.ociclient import OCI_MANIFEST, OCIClient, expect, sha256_digest
from tests.helpers.ocilayout import OCI_CONFIG, OCI_LAYER_GZIP, canonical_json, random_bytes
from tests.helpers.server import RegistryProcess

pytestmark = pytest.mark.e2e

ROUNDS = 5


def _manifests(client: OCIClient, repo: str, count: int) -> list[bytes]:
    config = canonical_json({"architecture": "amd64", "os": "linux"})
    expect(client.push_blob_monolithic(repo, config), 201)
    bodies = []
    for i in range(count):
        layer = random_bytes(1000 + i, f"{repo}-{i}")
        expect(client.push_blob_monolithic(repo, layer), 201)
        bodies.append(canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer), "size": len(layer)}],
        }))
    return bodies


def _race(registry, repo: str, bodies: list[bytes], tag: str, condition: dict):
    """Both bodies PUT to C{tag} at once under C{condition}: (the winner's body, the loser's response)."""
    def put(i):
        client = OCIClient(registry.url, auth=registry.requests_auth)
        return client.request("PUT", f"/v2/{repo}/manifests/{tag}", data=bodies[i],
                              headers={"Content-Type": OCI_MANIFEST, **condition})

    answers = _run_together(2, put)
    assert sorted(a.status_code for a in answers) == [201, 412], [a.text for a in answers]
    won = next(i for i, a in enumerate(answers) if a.status_code == 201)
    assert answers[won].headers["ETag"] == f'"{sha256_digest(bodies[won])}"'
    lost = answers[1 - won]
    assert lost.json()["errors"][0]["code"] == "UNSUPPORTED" and "precondition" in lost.json()["errors"][0]["message"]
    return bodies[won], bodies[1 - won]


def check_races(registry, repo: str) -> None:
    client = OCIClient(registry.url, auth=registry.requests_auth)
    bodies = _manifests(client, repo, 1 + 2 * ROUNDS + 2)
    etag = expect(client.put_manifest(repo, "latest", bodies[0]), 201).headers["ETag"]
    for r in range(ROUNDS):
        won, lost = _race(registry, repo, bodies[1 + 2 * r:3 + 2 * r], "latest", {"If-Match": etag})
        tagged = expect(client.get_manifest(repo, "latest"), 200)
        assert tagged.content == won
        expect(client.get_manifest(repo, sha256_digest(lost)), 404)  # the loser stored nothing
        etag = tagged.headers["ETag"]
    won, lost = _race(registry, repo, bodies[-2:], "v1.0.0", {"If-None-Match": "*"})
    assert expect(client.get_manifest(repo, "v1.0.0"), 200).content == won
    expect(client.get_manifest(repo, sha256_digest(lost)), 404)
    assert client.tags(repo) == ["latest", "v1.0.0"]


def test_racing_tag_moves_one_wins(registry, repo, izreg_only):
    check_races(registry, repo)


@pytest.mark.postgres
def test_racing_tag_moves_one_wins_over_postgresql(tmp_path, postgres_server):
    dsn = postgres_server.create_migrated_database()
    node = RegistryProcess(data_dir=str(tmp_path / "data"), config=node_config(tmp_path / "izreg.toml", dsn))
    node.start()
    try:
        check_races(node, f"{node.account}/race/app")
    finally:
        node.close()
        postgres_server.drop_database(dsn)
