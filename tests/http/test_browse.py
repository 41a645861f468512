"""The browse API (/v2/_izreg/...) over the in-process server with real keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytest_twisted

from izreg.core.digest import Digest
from izreg.manage_cli import human

from tests.http.authhelpers import Keys, bearer
from tests.http.conftest import header, start_server
from tests.http.helpers import OCI_INDEX, OCI_MANIFEST, index_manifest, push_blob, push_image, put_manifest
from tests.http.test_manage import Authed

CONFIG = b'{"architecture":"arm64","os":"linux","variant":"v8"}'
SHARED = b"shared-layer" * 1000
ONLY_APP = b"app-layer" * 300
ONLY_DB = b"db-layer" * 700


@pytest_twisted.async_yield_fixture
async def pushed(tmp_path):
    server = await start_server(tmp_path)
    keys = Keys.make(server)
    a = Authed(server, keys.a_key)
    app, db = f"{keys.a}/app", f"{keys.a}/db"
    image, image_bytes = await push_image(a, app, "v1", config=CONFIG, layers=(SHARED, ONLY_APP))
    response, _ = await put_manifest(a, app, "stable", image_bytes)  # a second tag, same manifest
    assert response.code == 201
    other, other_bytes = await push_image(a, db, "v1", config=CONFIG, layers=(SHARED, ONLY_DB))
    # an index over the app image, in app
    index = index_manifest([(image_bytes, OCI_MANIFEST, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    response, _ = await put_manifest(a, app, "multi", index, OCI_INDEX)
    assert response.code == 201
    yield server, keys, a, {"image": (image, image_bytes), "other": (other, other_bytes), "index": index}
    await server.service.stopService()


async def get_json(client, path):
    response, body = await client.request("GET", path)
    assert response.code == 200, body
    assert header(response, "Content-Type") == "application/json"
    return response, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_repositories_with_counts_and_sizes(pushed):
    server, keys, a, images = pushed
    _, doc = await get_json(a, "/v2/_izreg/repositories")
    assert doc["account"] == keys.a
    repos = {r["name"]: r for r in doc["repositories"]}
    assert list(repos) == [f"{keys.a}/app", f"{keys.a}/db"]
    app, db = repos[f"{keys.a}/app"], repos[f"{keys.a}/db"]
    image_bytes, other_bytes, index = images["image"][1], images["other"][1], images["index"]
    assert (app["manifests"], app["tags"]) == (2, 3)
    assert (db["manifests"], db["tags"]) == (1, 1)
    # every byte pushed, shared blobs once per repository
    assert app["size"] == len(image_bytes) + len(index) + len(CONFIG) + len(SHARED) + len(ONLY_APP)
    assert db["size"] == len(other_bytes) + len(CONFIG) + len(SHARED) + len(ONLY_DB)
    # unique: what no other repository of the account references
    assert app["unique_size"] == len(image_bytes) + len(index) + len(ONLY_APP)
    assert db["unique_size"] == len(other_bytes) + len(ONLY_DB)
    assert app["last_push"].endswith("Z") and len(app["last_push"]) == 20


@pytest_twisted.ensureDeferred
async def test_repositories_paginate_with_link(pushed):
    server, keys, a, _ = pushed
    response, doc = await get_json(a, "/v2/_izreg/repositories?n=1")
    assert [r["name"] for r in doc["repositories"]] == [f"{keys.a}/app"]
    link = header(response, "Link")
    assert link == f'</v2/_izreg/repositories?n=1&last={keys.a}%2Fapp>; rel="next"'
    response, doc = await get_json(a, link[1:link.index(">")])
    assert [r["name"] for r in doc["repositories"]] == [f"{keys.a}/db"]
    assert header(response, "Link") is None


@pytest_twisted.ensureDeferred
async def test_manifests_with_tags_platforms_sizes_and_device_pulls(pushed):
    server, keys, a, images = pushed
    image, image_bytes = images["image"]
    index = images["index"]
    pulls = server.service.pulls
    pulls.record(keys.a, "gw-1", f"{keys.a}/app", image, 1_700_000_000.0)
    pulls.record(keys.a, "gw-2", f"{keys.a}/app", image, 1_700_000_100.0)
    pulls.record(keys.a, "gw-1", f"{keys.a}/app", image, 1_700_000_050.0)  # older than gw-1's last: kept the last
    await server.service.flush_pulls()
    _, doc = await get_json(a, f"/v2/{keys.a}/app/_izreg/manifests")
    assert doc["name"] == f"{keys.a}/app"
    found = {m["digest"]: m for m in doc["manifests"]}
    assert list(found) == sorted(found)
    entry = found[image]
    assert entry["tags"] == ["stable", "v1"]
    assert entry["kind"] == "image" and entry["mediaType"] == OCI_MANIFEST and entry["artifactType"] is None
    assert entry["platforms"] == ["linux/arm64/v8"]
    image_total = len(image_bytes) + len(CONFIG) + len(SHARED) + len(ONLY_APP)
    assert entry["size"] == image_total
    assert entry["devices"] == {"count": 2, "last_pulled": "2023-11-14T22:15:00Z"}
    assert entry["last_pulled"] == "2023-11-14T22:15:00Z"
    assert entry["subject"] is None and entry["annotations"] == {}
    idx = found["sha256:" + __import__("hashlib").sha256(index).hexdigest()]
    assert idx["kind"] == "index" and idx["tags"] == ["multi"] and idx["platforms"] == ["linux/arm64/v8"]
    assert idx["size"] == len(index) + image_total
    assert idx["devices"] == {"count": 0, "last_pulled": None} and idx["last_pulled"] is None


@pytest_twisted.ensureDeferred
async def test_manifests_paginate_by_digest(pushed):
    server, keys, a, _ = pushed
    response, first = await get_json(a, f"/v2/{keys.a}/app/_izreg/manifests?n=1")
    link = header(response, "Link")
    assert link.startswith(f"</v2/{keys.a}/app/_izreg/manifests?n=1&last=sha256%3A")
    response, second = await get_json(a, link[1:link.index(">")])
    assert len(first["manifests"]) == len(second["manifests"]) == 1
    assert first["manifests"][0]["digest"] < second["manifests"][0]["digest"]
    # HEAD wherever GET (RFC 9110 9.1): the same headers, no body
    head, body = await a.request("HEAD", f"/v2/{keys.a}/app/_izreg/manifests?n=1")
    assert (head.code, body, header(head, "Link")) == (200, b"", link)


@pytest_twisted.ensureDeferred
async def test_artifact_kinds(pushed):
    server, keys, a, images = pushed
    name = f"{keys.a}/chart"
    chart = b"chart-bytes"
    await push_blob(a, name, b"{}")
    await push_blob(a, name, chart)
    helm = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": _d(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": _d(chart), "size": len(chart)}]}
    response, _ = await put_manifest(a, name, "0.1.0", json.dumps(helm).encode())
    assert response.code == 201
    sbom = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _d(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/spdx+json", "digest": _d(chart), "size": len(chart)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": _d(json.dumps(helm).encode()), "size": len(json.dumps(helm))},
            "annotations": {"org.example": "yes"}}
    response, _ = await put_manifest(a, name, _d(json.dumps(sbom).encode()), json.dumps(sbom).encode())
    assert response.code == 201
    _, doc = await get_json(a, f"/v2/{name}/_izreg/manifests")
    kinds = {m["kind"]: m for m in doc["manifests"]}
    assert set(kinds) == {"helm-chart", "sbom"}
    assert kinds["sbom"]["artifactType"] == "application/spdx+json"
    assert kinds["sbom"]["subject"] == _d(json.dumps(helm).encode())
    assert kinds["sbom"]["annotations"] == {"org.example": "yes"}
    assert kinds["helm-chart"]["artifactType"] == "application/vnd.cncf.helm.config.v1+json"


def _d(data: bytes) -> str:
    return "sha256:" + __import__("hashlib").sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_another_accounts_key_is_refused(pushed):
    server, keys, a, _ = pushed
    b = Authed(server, keys.b_key)
    response, body = await b.request("GET", f"/v2/{keys.a}/app/_izreg/manifests")
    assert response.code == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
    response, body = await b.request("GET", f"/v2/_izreg/repositories?account={keys.a}")
    assert response.code == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
    _, doc = await get_json(b, "/v2/_izreg/repositories")
    assert doc == {"account": keys.b, "repositories": []}
    _, doc = await get_json(a, f"/v2/_izreg/repositories?account={keys.a}")
    assert len(doc["repositories"]) == 2


@pytest_twisted.ensureDeferred
async def test_unauthenticated_gets_a_bearer_challenge(pushed):
    server, keys, a, _ = pushed
    for path in ("/v2/_izreg/repositories", f"/v2/{keys.a}/app/_izreg/manifests"):
        response, _ = await server.request("GET", path)
        assert response.code == 401
        assert header(response, "WWW-Authenticate").startswith("Bearer ")
    response, _ = await server.request("GET", "/v2/_izreg/repositories", headers={"Authorization": bearer("nope")})
    assert response.code == 401 and header(response, "WWW-Authenticate").startswith("Bearer ")


@pytest_twisted.ensureDeferred
async def test_unknown_repository_is_name_unknown(pushed):
    server, keys, a, _ = pushed
    response, body = await a.request("GET", f"/v2/{keys.a}/nothing/_izreg/manifests")
    assert response.code == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"


def izreg(server, *argv: str) -> subprocess.CompletedProcess:
    """The real ``izreg`` command, in its own process, on the running server's data directory."""
    data_dir = server.service.config.data_dir
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-c", "import sys; from izreg.cli import main; sys.exit(main())", "--data-dir", data_dir, *argv],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.e2e  # a real izreg process
@pytest_twisted.ensureDeferred
async def test_izreg_images_no_trunc_shows_whole_digests_and_a_short_one_is_told_it_is_short(pushed):
    """
    As docker images: the DIGEST column is sha256: and 12 hex digits, --no-trunc the whole digest, the rest of each
    row the same. Nothing takes a shortened digest, and the help says so and how to get the whole one; the whole
    one is what the API takes, and the registry tells a shortened one it is short, not merely "invalid digest".
    """
    server, keys, a, images = pushed
    image, index = images["image"][0], str(Digest.of(images["index"]))

    def table(*extra: str) -> list[list[str]]:
        done = izreg(server, "images", keys.a, "--repository", "app", *extra)
        assert done.returncode == 0, done.stderr
        return [line.split() for line in done.stdout.splitlines()[1:-1]]

    short, whole = table(), table("--no-trunc")
    assert sorted(row[1] for row in short) == sorted([image[:19], index[:19]])
    assert sorted(row[1] for row in whole) == sorted([image, index])
    assert [row[:1] + row[2:] for row in short] == [row[:1] + row[2:] for row in whole]
    for digest in (row[1] for row in whole):  # what --no-trunc prints is what the API takes
        response, _ = await a.request("HEAD", f"/v2/{keys.a}/app/manifests/{digest}")
        assert response.code == 200, digest
    response, body = await a.request("GET", f"/v2/{keys.a}/app/manifests/{image[:19]}")
    error = json.loads(body)["errors"][0]
    assert (response.code, error["code"]) == (400, "DIGEST_INVALID")
    assert "a sha256 digest has 64 hex digits, not 12; a shortened digest names nothing" in error["message"]
    done = izreg(server, "images", "--help")
    assert done.returncode == 0 and "--no-trunc" in done.stdout
    assert "nothing takes a shortened digest" in " ".join(done.stdout.split())


def test_shortened_digests_are_told_apart_when_they_begin_alike():
    """Two digests with the same first 12 hex digits: each is shown with as many as tell them apart."""
    from izreg.manage_cli import short_digests

    a, b, c = "sha256:" + "0" * 64, "sha256:" + "0" * 14 + "1" * 50, "sha256:" + "2" * 64
    shown = short_digests([a, b, c, a])
    assert [shown(d) for d in (a, b, c)] == ["sha256:" + "0" * 15, "sha256:" + "0" * 14 + "1", "sha256:" + "2" * 15]
    assert short_digests([a, c])(a) == "sha256:" + "0" * 12


@pytest.mark.e2e  # a real izreg process
@pytest_twisted.ensureDeferred
async def test_izreg_images_and_usage(pushed):
    server, keys, a, images = pushed
    image, image_bytes = images["image"]
    server.service.pulls.record(keys.a, "gw-1", f"{keys.a}/app", image, 1_700_000_000.0)
    await server.service.flush_pulls()
    _, api = await get_json(a, f"/v2/{keys.a}/app/_izreg/manifests")
    done = izreg(server, "images", keys.a, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["account"] == keys.a
    assert [r["name"] for r in doc["repositories"]] == [f"{keys.a}/app", f"{keys.a}/db"]
    assert doc["repositories"][0]["images"] == api["manifests"]
    done = izreg(server, "images", keys.a, "--repository", "app")
    assert done.returncode == 0, done.stderr
    header_line, *rows, summary = done.stdout.splitlines()
    assert header_line.split() == ["REPOSITORY", "DIGEST", "KIND", "TAGS", "PLATFORMS", "SIZE", "PUSHED", "DEVICES"]
    row = next(r for r in rows if image[:19] in r).split()
    assert row[:5] == ["app", image[:19], "image", "stable,v1", "linux/arm64/v8"]
    assert " ".join(row[5:7]) == human(len(image_bytes) + len(CONFIG) + len(SHARED) + len(ONLY_APP)) == "15.0 KiB"
    assert row[8:] == ["1", "(last", "2023-11-14T22:13:20Z)"]
    assert summary.startswith("1 repository, 2 manifests")
    done = izreg(server, "usage", keys.a, "--json")
    assert done.returncode == 0, done.stderr
    usage = json.loads(done.stdout)
    total = (len(image_bytes) + len(images["index"]) + len(images["other"][1])
             + len(CONFIG) + len(SHARED) + len(ONLY_APP) + len(ONLY_DB))  # shared blobs once
    assert usage == {"account": keys.a, "repositories": 2, "manifests": 3, "blobs": 4, "size": total}
    done = izreg(server, "usage")
    assert done.returncode == 0, done.stderr
    by_account = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert by_account[keys.a][-1] == str(total) and by_account[keys.b][-1] == "0"
    done = izreg(server, "images", keys.a, "--repository", "nothing")
    assert done.returncode == 2 and "no repository" in done.stderr
    done = izreg(server, "images", keys.a, "--repository", "App")  # names are lowercase: the one to use
    assert (done.returncode, done.stdout) == (2, "") and done.stderr.count("\n") == 1
    assert "not a repository name (NAME or <account>/<name>): 'App'; repository names are lowercase" in done.stderr
    assert done.stderr.rstrip().endswith(f": use {keys.a}/app")
    done = izreg(server, "images", keys.a, "--repository", f"{keys.b}/app")
    assert done.returncode == 2 and f"repository {keys.b}/app is not in account {keys.a}" in done.stderr
    # a repository whose manifests were all deleted is listed as such, not left out of the table it is counted in
    response, _ = await a.request("DELETE", f"/v2/{keys.a}/db/manifests/{images['other'][0]}")
    assert response.code == 202
    done = izreg(server, "images", keys.a)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["db", "(no", "manifests)", "-", "-", "-", "0", "B", "-", "0"] in rows
    assert done.stdout.splitlines()[-1].startswith("2 repositories, 2 manifests")
    # a mistyped account id is an error, not an empty listing
    for command in ("images", "usage"):
        done = izreg(server, command, "f" * 32)
        assert (done.returncode, done.stdout) == (2, ""), (command, done)
        assert f"no such account: {'f' * 32}" in done.stderr
