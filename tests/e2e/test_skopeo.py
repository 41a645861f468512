"""
skopeo (containers/image) against a real izreg process: push an OCI layout,
pull it back to ``oci:`` and ``dir:``, Docker schema2 conversion, inspect,
list-tags, a cross-repository copy (blob mount) and delete; a name without
the account refused at once with the form and the caller's account id.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import ssl
import time

import pytest

from tests.conftest import require_tool
from tests.helpers.ociclient import DOCKER_MANIFEST, OCI_MANIFEST, expect, sha256_digest
from tests.helpers.ocilayout import (OCI_INDEX, build_index_layout, build_layout, layout_manifest_digest,
                                    read_layout_blob)
from tests.helpers.skopeo import SKOPEO, Skopeo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def skopeo_installed():
    """A skip without skopeo, a failure in CI (the README's test command installs it)."""
    require_tool(os.path.exists(SKOPEO), "skopeo")

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-layer OCI layout (1 KiB, 300 kB, 2 MB of random data) tagged v1."""
    return build_layout(tmp_path_factory.mktemp("src") / "layout", tag="v1",
                        layers=[1024, 300_000, 2_000_000], seed=0)


@pytest.fixture(scope="module")
def pushed(registry, source, tmp_path_factory):
    """The source image pushed once per module as <acct>/app:v1 and :latest."""
    sk = Skopeo(registry, tmp_path_factory.mktemp("skopeo-push"))
    account = registry.account
    repo = f"{account}/{'s' + secrets.token_hex(4)}/app"
    sk.copy(f"oci:{source['path']}:v1", sk.ref(repo, "v1"))
    sk.copy(f"oci:{source['path']}:v1", sk.ref(repo, "latest"))
    return {"account": account, "repo": repo, "image": source}


def test_plain_port_refuses_tls_hello_quickly(registry):
    """
    skopeo/podman with ``--tls-verify=false`` first send a TLS ClientHello to the
    plain-HTTP port and fall back to HTTP only when that fails; a server that
    just waits makes every skopeo command hang for containers/image's 10 s TLS
    handshake timeout. The server must answer (400) or close at once.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", registry.port), timeout=3) as sock:
        try:
            ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        except TimeoutError:
            pytest.fail("the server neither answered nor closed a TLS ClientHello within 3 s")
        except (ssl.SSLError, ConnectionError, OSError):
            pass  # refused: an HTTP 400 / a closed connection, what the clients expect
        else:
            pytest.fail("a TLS handshake succeeded on the plain HTTP port")


def _blob_files(blob_dir) -> dict[str, bytes]:
    out = {}
    for name in os.listdir(blob_dir):
        with open(os.path.join(blob_dir, name), "rb") as f:
            out[name] = f.read()
    return out


def test_push_then_inspect(pushed, skopeo, client):
    repo, image = pushed["repo"], pushed["image"]
    info = skopeo.inspect_json(skopeo.ref(repo, "v1"))
    assert info["Digest"] == image["manifest_digest"]
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Layers"] == [l["digest"] for l in image["layers"]]

    # the manifest is served byte-exact, with the pushed type and its digest
    assert skopeo.inspect_raw(skopeo.ref(repo, "v1")) == image["manifest_bytes"]
    assert skopeo.inspect_raw(skopeo.ref(repo, image["manifest_digest"])) == image["manifest_bytes"]
    assert skopeo.inspect_raw(skopeo.ref(repo, "v1"), config=True) == image["config_bytes"]

    resp = expect(client.get_manifest(repo, "v1"), 200)
    assert resp.content == image["manifest_bytes"]
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == image["manifest_digest"]
    head = expect(client.head_manifest(repo, "v1"), 200)
    assert head.headers["Docker-Content-Digest"] == image["manifest_digest"]
    assert int(head.headers["Content-Length"]) == len(image["manifest_bytes"])

    for digest, data in image["blobs"].items():
        resp = expect(client.get_blob(repo, digest), 200)
        assert resp.content == data, digest
        assert resp.headers["Docker-Content-Digest"] == digest


def test_list_tags(pushed, skopeo, client, registry):
    tags = skopeo.list_tags(pushed["repo"])
    assert sorted(tags) == ["latest", "v1"]
    if registry.backend == "izreg":  # the spec asks for lexical order (distribution 2.8 does not sort)
        assert tags == ["latest", "v1"]
    assert sorted(client.tags(pushed["repo"])) == ["latest", "v1"]


def test_copy_out_to_oci_layout(pushed, skopeo, tmp_path):
    repo, image = pushed["repo"], pushed["image"]
    out = tmp_path / "out"
    skopeo.copy(skopeo.ref(repo, "v1"), f"oci:{out}:pulled")
    assert layout_manifest_digest(out, "pulled") == image["manifest_digest"]
    assert read_layout_blob(out, image["manifest_digest"]) == image["manifest_bytes"]
    files = _blob_files(out / "blobs" / "sha256")
    for digest, data in image["blobs"].items():
        assert files[digest.split(":", 1)[1]] == data, digest
    for name, data in files.items():
        assert hashlib.sha256(data).hexdigest() == name


def test_copy_out_to_dir(pushed, skopeo, tmp_path):
    repo, image = pushed["repo"], pushed["image"]
    out = tmp_path / "dir"
    skopeo.copy(skopeo.ref(repo, "latest"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image["manifest_bytes"]
    for digest, data in image["blobs"].items():
        assert (out / digest.split(":", 1)[1]).read_bytes() == data, digest


def test_docker_schema2_round_trip(pushed, source, skopeo, client, tmp_path):
    """``--format v2s2`` converts the OCI image; the registry stores and serves Docker schema2."""
    repo = pushed["repo"] + "-v2s2"
    skopeo.copy(f"oci:{source['path']}:v1", skopeo.ref(repo, "v2s2"), "--format", "v2s2")

    raw = skopeo.inspect_raw(skopeo.ref(repo, "v2s2"))
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [l["digest"] for l in manifest["layers"]] == [l["digest"] for l in source["layers"]]
    assert {l["mediaType"] for l in manifest["layers"]} == {DOCKER_LAYER_GZIP}

    resp = expect(client.get_manifest(repo, "v2s2", accept=DOCKER_MANIFEST), 200)
    assert resp.content == raw
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(raw)

    out = tmp_path / "v2s2"
    skopeo.copy(skopeo.ref(repo, "v2s2"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == raw
    for layer in source["layers"]:
        assert (out / layer["digest"].split(":", 1)[1]).read_bytes() == layer["bytes"]
    config = (out / manifest["config"]["digest"].split(":", 1)[1]).read_bytes()
    assert sha256_digest(config) == manifest["config"]["digest"]
    assert json.loads(config)["rootfs"]["diff_ids"] == [l["diff_id"] for l in source["layers"]]

    info = skopeo.inspect_json(skopeo.ref(repo, "v2s2"))
    assert info["Digest"] == sha256_digest(raw)
    assert skopeo.list_tags(repo) == ["v2s2"]


def test_cross_repository_copy_and_mount(pushed, skopeo, client, registry):
    """docker:// -> docker:// inside one account; the registry answers blob mounts with 201."""
    image = pushed["image"]
    dest = pushed["repo"] + "2"
    skopeo.copy(skopeo.ref(pushed["repo"], "v1"), skopeo.ref(dest, "copied"))
    assert skopeo.inspect_raw(skopeo.ref(dest, "copied")) == image["manifest_bytes"]
    for digest, data in image["blobs"].items():
        assert expect(client.get_blob(dest, digest), 200).content == data

    # the mount skopeo relies on, spelled out: 201 + Location + Docker-Content-Digest
    third = pushed["repo"] + "3"
    layer = image["layers"][1]
    resp = expect(client.mount_blob(third, layer["digest"], pushed["repo"]), 201)
    assert resp.headers.get("Location")
    assert resp.headers["Docker-Content-Digest"] == layer["digest"]
    blob = expect(client.get_blob(third, layer["digest"]), 200)
    assert blob.content == layer["bytes"]
    head = expect(client.head_blob(third, layer["digest"]), 200)
    assert int(head.headers["Content-Length"]) == layer["size"]


def test_delete(registry, skopeo, client, new_repo, tmp_path):
    """skopeo delete removes the manifest digest: every tag on it goes, others stay."""
    repo = new_repo("app-del")
    one = build_layout(tmp_path / "one", tag="one", layers=[512, 4096], seed=11)
    two = build_layout(tmp_path / "two", tag="two", layers=[777], seed=12)
    skopeo.copy(f"oci:{one['path']}:one", skopeo.ref(repo, "v1"))
    skopeo.copy(f"oci:{one['path']}:one", skopeo.ref(repo, "alias"))
    skopeo.copy(f"oci:{two['path']}:two", skopeo.ref(repo, "other"))
    assert sorted(skopeo.list_tags(repo)) == ["alias", "other", "v1"]

    skopeo.delete(skopeo.ref(repo, "v1"))

    proc = skopeo.inspect(skopeo.ref(repo, "v1"), check=False)
    assert proc.returncode != 0, proc.stdout
    assert skopeo.inspect(skopeo.ref(repo, "alias"), check=False).returncode != 0
    assert skopeo.list_tags(repo) == ["other"]
    assert client.get_manifest(repo, one["manifest_digest"]).status_code == 404
    assert client.get_manifest(repo, "v1").status_code == 404
    assert skopeo.inspect_raw(skopeo.ref(repo, "other")) == two["manifest_bytes"]


def test_multi_platform_index(registry, skopeo, client, new_repo, tmp_path):
    """``copy --all`` pushes an OCI image index and every platform image; clients pick theirs."""
    src = build_index_layout(tmp_path / "multi", tag="multi", seed=60)
    repo = new_repo("multiarch")
    skopeo.copy(f"oci:{src['path']}:multi", skopeo.ref(repo, "v1"), "--all")

    assert skopeo.inspect_raw(skopeo.ref(repo, "v1")) == src["index_bytes"]
    resp = expect(client.get_manifest(repo, "v1"), 200)
    assert resp.headers["Content-Type"] == OCI_INDEX
    assert resp.headers["Docker-Content-Digest"] == src["index_digest"]
    for image in src["images"]:
        got = expect(client.get_manifest(repo, image["manifest_digest"]), 200)
        assert got.content == image["manifest_bytes"]

    arm = next(im for im in src["images"] if im["platform"]["architecture"] == "arm64")
    info = json.loads(skopeo.run("--override-arch", "arm64", "--override-os", "linux", "inspect",
                                 "--tls-verify=false", *skopeo._creds("--creds"), skopeo.ref(repo, "v1")).stdout)
    assert info["Architecture"] == "arm64"
    assert info["Digest"] == src["index_digest"]  # skopeo 1.9 reports the digest of what the tag names
    assert info["Layers"] == [l["digest"] for l in arm["layers"]]

    out = tmp_path / "arm64"
    skopeo.run("--override-arch", "arm64", "--override-os", "linux", "copy", "--src-tls-verify=false",
               *skopeo._creds("--src-creds"), skopeo.ref(repo, "v1"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == arm["manifest_bytes"]
    for digest, data in arm["blobs"].items():
        assert (out / digest.split(":", 1)[1]).read_bytes() == data

    # the whole index back out, byte-identical
    out_all = tmp_path / "all"
    skopeo.copy(skopeo.ref(repo, "v1"), f"oci:{out_all}:v1", "--all")
    assert layout_manifest_digest(out_all, "v1") == src["index_digest"]
    for image in src["images"]:
        for digest, data in image["blobs"].items():
            assert read_layout_blob(out_all, digest) == data


def test_a_name_without_the_account_is_refused_at_once_with_the_form(registry, source, skopeo, izreg_only):
    """
    403 DENIED (after authentication) is final for containers/image. A copy
    checks the blobs first (HEAD: no body, so "not there") and is refused
    with the registry's message when it starts the upload; inspect prints
    the message; list-tags prints only the status (it ignores the body).
    """
    account = registry.account
    name = "app" + secrets.token_hex(3)
    message = ("denied: repository names are <account id>/<name>; your account id is"
               f" {account}: use {account}/{name}")
    for run, says in ((lambda: skopeo.copy(f"oci:{source['path']}:v1", skopeo.ref(name, "v1"), check=False), message),
                      (lambda: skopeo.inspect(skopeo.ref(name, "v1"), check=False), message),
                      (lambda: skopeo.list_tags(name, check=False), "403 (Forbidden)")):
        started = time.monotonic()
        proc = run()
        took = time.monotonic() - started
        assert proc.returncode != 0, proc.stdout
        assert says in proc.stderr, proc.stderr
        assert took < 10, f"{proc.args}: {took:.1f}s to fail"

