"""
The ORAS Python SDK (oras 0.2.43) against a real izreg process: Helm-chart-like
artifacts pushed monolithically (POST + PUT) and chunked (POST + PATCH* + PUT),
pulled back byte-identical, tags listed; plus a Helm 3.0-3.6 style manifest
that has no ``mediaType`` field (the type only in ``Content-Type``).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.helpers.ociclient import OCI_MANIFEST, expect, sha256_digest
from tests.helpers.ocilayout import canonical_json, gzip_bytes, make_tar, random_bytes

oras_client = pytest.importorskip("oras.client")

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("oras_guard")]

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OLD_HELM_CHART = "application/tar+gzip"
TITLE = "org.opencontainers.image.title"


def make_chart(directory, name="mychart", version="0.1.0", seed=0, payload=6000):
    """Write ``<name>-<version>.tgz`` and its Helm config JSON; return both paths and bytes."""
    chart_yaml = f"apiVersion: v2\nname: {name}\nversion: {version}\ntype: application\n".encode()
    tgz = gzip_bytes(make_tar([
        (f"{name}/Chart.yaml", chart_yaml),
        (f"{name}/values.yaml", b"replicaCount: 1\n"),
        # incompressible padding so the chunked push needs several 1 KiB PATCHes
        (f"{name}/files/blob.bin", random_bytes(payload, f"chart-{seed}")),
    ]))
    config = canonical_json({"apiVersion": "v2", "name": name, "version": version, "type": "application"})
    os.makedirs(directory, exist_ok=True)
    chart_path = os.path.join(directory, f"{name}-{version}.tgz")
    config_path = os.path.join(directory, "config.json")
    with open(chart_path, "wb") as f:
        f.write(tgz)
    with open(config_path, "wb") as f:
        f.write(config)
    return {"chart_path": chart_path, "chart": tgz, "config_path": config_path, "config": config,
            "filename": os.path.basename(chart_path)}


def make_oras(registry):
    if registry.creds:  # later: access keys (CLIENTS.md: the token backend breaks on Basic)
        client = oras_client.OrasClient(hostname=registry.host, insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(*registry.requests_auth)
        return client
    return oras_client.OrasClient(hostname=registry.host, insecure=True)


def push_chart(oras, registry, repo, tag, chart, **kw):
    target = f"{registry.host}/{repo}:{tag}"
    resp = oras.push(
        target=target,
        files=[f"{chart['chart_path']}:{HELM_CHART}"],
        manifest_config=f"{chart['config_path']}:{HELM_CONFIG}",
        disable_path_validation=True,
        quiet=True,
        **kw,
    )
    assert resp.status_code == 201, (resp.status_code, resp.headers, resp.content)
    return target, resp


def check_pull(oras, client, repo, tag, target, push_resp, chart, outdir):
    manifest = oras.get_manifest(target)
    assert manifest["config"]["mediaType"] == HELM_CONFIG
    assert manifest["config"]["digest"] == sha256_digest(chart["config"])
    [layer] = manifest["layers"]
    assert layer["mediaType"] == HELM_CHART
    assert layer["digest"] == sha256_digest(chart["chart"])
    assert layer["size"] == len(chart["chart"])

    files = oras.pull(target=target, outdir=str(outdir))
    assert [os.path.basename(f) for f in files] == [chart["filename"]]
    with open(files[0], "rb") as f:
        assert f.read() == chart["chart"]

    # the raw manifest: served byte-exact under the digest the PUT answered with
    resp = expect(client.get_manifest(repo, tag), 200)
    digest = push_resp.headers.get("Docker-Content-Digest")
    assert digest == sha256_digest(resp.content)
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert json.loads(resp.content) == manifest
    config = expect(client.get_blob(repo, manifest["config"]["digest"]), 200)
    assert config.content == chart["config"]


@pytest.fixture
def oras(registry):
    return make_oras(registry)


def test_push_pull_monolithic(registry, oras, client, new_repo, tmp_path):
    repo = new_repo("charts/mychart")
    chart = make_chart(tmp_path / "src", seed=1)
    target, resp = push_chart(oras, registry, repo, "0.1.0", chart)
    check_pull(oras, client, repo, "0.1.0", target, resp, chart, tmp_path / "out")
    assert oras.get_tags(target) == ["0.1.0"]


def test_push_pull_chunked(registry, oras, client, new_repo, tmp_path):
    repo = new_repo("charts/chunky")
    chart = make_chart(tmp_path / "src", name="chunky", seed=2, payload=5000)
    assert len(chart["chart"]) > 4 * 1024  # several PATCHes, the last one short
    target, resp = push_chart(oras, registry, repo, "1.2.3", chart, do_chunked=True, chunk_size=1024)
    check_pull(oras, client, repo, "1.2.3", target, resp, chart, tmp_path / "out")


def test_get_tags_several_versions(registry, oras, new_repo, tmp_path):
    repo = new_repo("charts/versions")
    versions = ["0.1.0", "0.10.0", "0.2.0", "1.0.0", "1.0.0-rc1"]
    for i, version in enumerate(versions):
        chart = make_chart(tmp_path / f"src{i}", name="versions", version=version, seed=100 + i, payload=200)
        push_chart(oras, registry, repo, version, chart)
    target = f"{registry.host}/{repo}"
    tags = oras.get_tags(target)
    assert sorted(tags) == sorted(versions)
    if registry.backend == "izreg":
        assert tags == sorted(versions)  # lexical
    # N=2: oras follows Link pagination and stops at 2
    assert len(oras.get_tags(target, N=2)) == 2


def test_manifest_without_media_type_field(registry, oras, client, new_repo, tmp_path):
    """
    Helm 3.0-3.6 (containerd pusher): HEAD, POST + one PUT per blob, then a
    manifest with no ``mediaType`` field, its type only in ``Content-Type``,
    and the chart layer typed ``application/tar+gzip``.
    """
    repo = new_repo("legacy/helmchart")
    chart = make_chart(tmp_path / "src", name="legacy", seed=3, payload=3000)
    for data in (chart["config"], chart["chart"]):
        digest = sha256_digest(data)
        assert client.head_blob(repo, digest).status_code == 404
        resp = expect(client.push_blob_post_put(repo, data), 201)
        assert resp.headers.get("Location")
        assert resp.headers["Docker-Content-Digest"] == digest
        head = expect(client.head_blob(repo, digest), 200)
        assert int(head.headers["Content-Length"]) == len(data)

    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": HELM_CONFIG, "digest": sha256_digest(chart["config"]),
                   "size": len(chart["config"])},
        "layers": [{"mediaType": OLD_HELM_CHART, "digest": sha256_digest(chart["chart"]),
                    "size": len(chart["chart"])}],
    }
    # Go's json.Marshal: compact, struct field order
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = sha256_digest(body)
    resp = expect(client.put_manifest(repo, "0.1.0", body, OCI_MANIFEST), 201)
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers.get("Location")

    for ref in ("0.1.0", digest):
        got = expect(client.get_manifest(repo, ref, accept=OCI_MANIFEST), 200)
        assert got.content == body
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = expect(client.head_manifest(repo, ref, accept=OCI_MANIFEST), 200)
        assert head.headers["Content-Type"] == OCI_MANIFEST
        assert head.headers["Docker-Content-Digest"] == digest
        assert int(head.headers["Content-Length"]) == len(body)

    # and a client pulls it: oras resolves the manifest and fetches the layer
    target = f"{registry.host}/{repo}:0.1.0"
    assert oras.get_manifest(target) == manifest
    files = oras.pull(target=target, outdir=str(tmp_path / "out"))
    assert len(files) == 1
    with open(files[0], "rb") as f:
        assert f.read() == chart["chart"]
    assert oras.get_tags(target) == ["0.1.0"]


def test_a_name_without_the_account_is_refused_with_the_form(registry, oras, tmp_path, izreg_only):
    """oras (what helm push uses underneath) pushes HOST/chart:0.1.0: one 403 with the form, no retries."""
    account = registry.account
    chart = make_chart(tmp_path / "chart")
    name = "chart" + os.urandom(3).hex()
    started = time.monotonic()
    with pytest.raises(ValueError) as info:  # oras-py: "Issue retrieving session url: {'errors': [...]}"
        push_chart(oras, registry, name, "0.1.0", chart)
    took = time.monotonic() - started
    assert f"repository names are <account id>/<name>; your account id is {account}: use {account}/{name}" \
        in str(info.value), repr(info.value)
    assert took < 10
