"""
podman (containers/image, with the vfs storage driver) against a real izreg
process: ``podman login HOST -u KEY -p <access key>``, push in Docker schema2
and in OCI form, ``rmi``, pull back by tag and by digest, ``logout``; a wrong
key, a read-only key and a name without the account refused with the
registry's message; a device pulling over the TLS listener with its client
certificate (``--cert-dir``: ``ca.crt``, ``client.cert``, ``client.key``) and
refused when it pushes.

Images are made with ``podman import`` of a tar (``podman run`` needs a
runtime the sandbox lacks). In CI (``CI=true``) a missing podman is a
failure, elsewhere a skip.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time

import pytest

from tests.conftest import require_tool
from tests.helpers.ociclient import ALL_MANIFESTS, DOCKER_MANIFEST, OCI_MANIFEST, OCIClient, expect, sha256_digest
from tests.helpers.podman import Podman, ok, podman_available, refused
from tests.helpers.tls import restart_with_tls

pytestmark = [pytest.mark.e2e]

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
def podman(registry, tmp_path):
    require_tool(podman_available(), "podman")
    if registry.backend != "izreg":
        pytest.skip("izreg-specific (access keys, device certificates)")
    pm = Podman(tmp_path / "podman")
    yield pm
    pm.close()


@pytest.fixture(scope="module")
def tls(registry, tmp_path_factory):
    """The module's registry restarted once with a TLS listener beside its plain one: (host:port, certs dir)."""
    port, paths = restart_with_tls(registry, str(tmp_path_factory.mktemp("podman-certs")))
    return f"127.0.0.1:{port}", paths.directory


def key_of(creds: str) -> str:
    return creds.partition(":")[2]


def login(podman, registry, creds: str | None = None):
    return podman.run("login", "--tls-verify=false", registry.host, "-u", "KEY", "-p", key_of(creds or registry.creds))


def some_files() -> dict[str, bytes]:
    return {"hello.txt": secrets.token_hex(16).encode(), "data/blob.bin": secrets.token_bytes(200_000)}


@pytest.mark.parametrize("fmt, manifest_type, layer_type", [
    ("v2s2", DOCKER_MANIFEST, DOCKER_LAYER_GZIP),
    ("oci", OCI_MANIFEST, OCI_LAYER_GZIP),
])
def test_login_push_rmi_pull(podman, registry, client, new_repo, tmp_path, fmt, manifest_type, layer_type):
    repo = new_repo(f"podman-{fmt}")
    ref = f"{registry.host}/{repo}:v1"
    assert "Login Succeeded!" in ok(login(podman, registry)).stdout
    files = some_files()
    image_id = podman.import_image(ref, files)
    ok(podman.run("push", "--tls-verify=false", "--format", fmt, ref))

    resp = expect(client.get_manifest(repo, "v1", accept=ALL_MANIFESTS), 200)
    assert resp.headers["Content-Type"] == manifest_type
    manifest = json.loads(resp.content)
    assert manifest["config"]["digest"] == image_id
    assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type]
    digest = resp.headers["Docker-Content-Digest"]
    assert digest == sha256_digest(resp.content)

    ok(podman.run("rmi", ref))
    assert not podman.exists(ref)
    ok(podman.run("pull", "--tls-verify=false", ref))
    assert podman.image_id(ref) == image_id
    assert podman.saved_files(ref, tmp_path / "by-tag") == files

    ok(podman.run("rmi", ref))
    ok(podman.run("pull", "--tls-verify=false", f"{registry.host}/{repo}@{digest}"))
    assert podman.image_id(f"{registry.host}/{repo}@{digest}") == image_id
    assert client.tags(repo) == ["v1"]


def test_logout_then_pull_is_refused(podman, registry, new_repo):
    ref = f"{registry.host}/{new_repo('podman-logout')}:v1"
    ok(login(podman, registry))
    with open(podman.authfile) as f:
        assert registry.host in json.load(f)["auths"]
    podman.import_image(ref, some_files())
    ok(podman.run("push", "--tls-verify=false", ref))
    ok(podman.run("rmi", ref))

    assert "Removed login credentials" in ok(podman.run("logout", registry.host)).stdout
    refused(podman.run("pull", "--tls-verify=false", ref),
            "unauthorized: authentication required: docker login <registry host> -u KEY -p <access key>")
    refused(podman.run("pull", "--tls-verify=false", "--creds", registry.creds + "x", ref),
            "unauthorized: not an izreg access key")
    ok(podman.run("pull", "--tls-verify=false", "--creds", registry.creds, ref))


def test_a_wrong_key_is_refused(podman, registry):
    key = key_of(registry.creds)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for user, password in (("KEY", wrong), ("admin", key)):
        refused(podman.run("login", "--tls-verify=false", registry.host, "-u", user, "-p", password),
                f'logging into "{registry.host}": invalid username/password')
    # with --creds (no login) the registry's own reason reaches the user
    refused(podman.run("pull", "--tls-verify=false", "--creds", f"KEY:{wrong}", f"{registry.host}/{registry.account}/x:v1"),
            "unauthorized: invalid access key")
    assert podman.run("login", "--get-login", registry.host).returncode != 0


def test_a_read_only_key_pulls_but_cannot_push(podman, registry):
    account, writer = registry.new_account()
    reader = "KEY:" + registry.cli("key", "create", account, "--name", "ro", "--read-only")
    ref = f"{registry.host}/{account}/ro/app:v1"
    ok(login(podman, registry, writer))
    image_id = podman.import_image(ref, some_files())
    ok(podman.run("push", "--tls-verify=false", ref))

    ok(login(podman, registry, reader))
    ok(podman.run("rmi", ref))
    ok(podman.run("pull", "--tls-verify=false", ref))
    assert podman.image_id(ref) == image_id
    podman.import_image(f"{registry.host}/{account}/ro/app:v2", some_files())
    refused(podman.run("push", "--tls-verify=false", f"{registry.host}/{account}/ro/app:v2"),
            "this access key is read-only")
    assert OCIClient(registry.url, auth=("KEY", key_of(writer))).tags(f"{account}/ro/app") == ["v1"]


def test_another_accounts_key_is_denied(podman, registry, new_repo):
    ref = f"{registry.host}/{new_repo('theirs')}:v1"
    ok(login(podman, registry))
    podman.import_image(ref, some_files())
    ok(podman.run("push", "--tls-verify=false", ref))
    _, other = registry.new_account()
    ok(login(podman, registry, other))
    # its first HEAD of a blob is "not there" (a 403 would have no body to say why): refused at the upload, with why
    refused(podman.run("push", "--tls-verify=false", ref), "access to a repository of another account is denied")
    ok(podman.run("rmi", ref))
    refused(podman.run("pull", "--tls-verify=false", ref), "access to a repository of another account is denied")


def test_a_name_without_the_account_is_refused_with_the_form(podman, registry):
    """podman pushes HOST/app:v1: refused when it starts the upload, at once, with the form and the account id."""
    account = registry.account
    name = "app" + secrets.token_hex(3)
    ok(login(podman, registry))
    podman.import_image(f"{registry.host}/{name}:v1", some_files())
    started = time.monotonic()
    proc = refused(podman.run("push", "--tls-verify=false", f"{registry.host}/{name}:v1"),
                   f"denied: repository names are <account id>/<name>; your account id is {account}:"
                   f" use {account}/{name}")
    took = time.monotonic() - started
    assert took < 10, f"podman push took {took:.1f}s to fail:\n{proc.stderr}"


@pytest.fixture
def pushed(podman, registry, new_repo):
    """An image pushed with the account's key over the plain listener: (repo, image id, files)."""
    repo = new_repo("device")
    files = some_files()
    image_id = podman.import_image(f"{registry.host}/{repo}:v1", files)
    ok(podman.run("push", "--tls-verify=false", "--creds", registry.creds, f"{registry.host}/{repo}:v1"))
    ok(podman.run("rmi", f"{registry.host}/{repo}:v1"))
    return repo, image_id, files


def test_device_pulls_over_tls_with_its_certificate(podman, tls, pushed, tmp_path):
    host, certs = tls
    repo, image_id, files = pushed
    ref = f"{host}/{repo}:v1"
    ok(podman.run("pull", "--cert-dir", certs, ref))  # no key and no --tls-verify=false: the certificate is the identity
    assert podman.image_id(ref) == image_id
    assert podman.saved_files(ref, tmp_path / "on-device") == files


def test_tls_listener_needs_the_ca_and_the_certificate(podman, tls, pushed, tmp_path):
    host, certs = tls
    ref = f"{host}/{pushed[0]}:v1"
    refused(podman.run("pull", ref), "x509: certificate signed by unknown authority")
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    shutil.copy(f"{certs}/ca.crt", ca_only)
    refused(podman.run("pull", "--cert-dir", str(ca_only), ref), "unauthorized: authentication required")
    assert not podman.exists(ref)


def test_device_may_not_push(podman, registry, tls, pushed, client):
    """Pull-only: refused at the first upload (new layers) or at the manifest (layers already there)."""
    host, certs = tls
    repo, _, _ = pushed
    podman.import_image(f"{host}/{repo}:new", some_files())
    refused(podman.run("push", "--cert-dir", certs, f"{host}/{repo}:new"), "denied: devices may only pull")

    ok(podman.run("pull", "--cert-dir", certs, f"{host}/{repo}:v1"))
    ok(podman.run("tag", f"{host}/{repo}:v1", f"{host}/{repo}:from-device"))
    refused(podman.run("push", "--cert-dir", certs, f"{host}/{repo}:from-device"), "denied: devices may only pull")
    assert client.tags(repo) == ["v1"]
