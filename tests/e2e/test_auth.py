"""
Access keys end to end: real clients with and without credentials, keys that
reach only their own account, read-only and revoked keys, the failed-auth
brake, and the Docker token service with skopeo and oras' token backend.

Tests that send wrong credentials use a registry of their own: failures
count per client address, and 127.0.0.1 is everybody here.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.ociclient import OCIClient, describe, expect, sha256_digest
from tests.helpers.ocilayout import build_layout, random_bytes
from tests.helpers.skopeo import SKOPEO, Skopeo

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                       reason="izreg access keys (the reference registry runs without auth)"),
]

needs_skopeo = pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed")


def basic(creds: str) -> tuple[str, str]:
    user, _, password = creds.partition(":")
    return user, password


def error_codes(resp) -> list[str]:
    try:
        return [e["code"] for e in resp.json()["errors"]]
    except Exception:  # noqa: BLE001
        return [f"<not an OCI error body: {resp.content[:200]!r}>"]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    return build_layout(tmp_path_factory.mktemp("auth-src") / "layout", tag="v1", layers=[2048, 5000], seed=40)


def test_anonymous_requests_are_challenged(registry, repo):
    anon = OCIClient(registry.url)
    resp = anon.request("GET", "/v2/")
    assert resp.status_code == 401, describe(resp)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Basic realm="), describe(resp)
    for method, path in [("GET", f"/v2/{repo}/tags/list"), ("POST", f"/v2/{repo}/blobs/uploads/"),
                         ("GET", "/v2/_catalog")]:
        resp = anon.request(method, path)
        assert resp.status_code == 401, describe(resp)
        assert error_codes(resp) == ["UNAUTHORIZED"]
        assert resp.headers.get("WWW-Authenticate")
    # the key works as Basic (username KEY) and as Bearer
    key = basic(registry.creds)[1]
    expect(anon.request("GET", "/v2/", auth=basic(registry.creds)), 200)
    expect(anon.request("GET", "/v2/", headers={"Authorization": f"Bearer {key}"}), 200)


@needs_skopeo
def test_skopeo_login_then_authfile(registry, small_image, new_repo, tmp_path):
    """The README tour: ``skopeo login`` writes an authfile that copy/inspect/list-tags reuse."""
    nocreds = Skopeo(_without_creds(registry), tmp_path)
    authfile = str(tmp_path / "auth.json")
    user, key = basic(registry.creds)
    nocreds.run("login", "--tls-verify=false", "--authfile", authfile, "-u", user, "-p", key, registry.host)
    with open(authfile) as f:
        assert registry.host in json.load(f)["auths"]
    repo = new_repo("logged-in")
    nocreds.run("copy", "--authfile", authfile, "--dest-tls-verify=false",
                f"oci:{small_image['path']}:v1", f"docker://{registry.host}/{repo}:v1")
    raw = nocreds.run("inspect", "--authfile", authfile, "--tls-verify=false", "--raw",
                      f"docker://{registry.host}/{repo}:v1").stdout
    assert raw.encode() == small_image["manifest_bytes"]
    tags = json.loads(nocreds.run("list-tags", "--authfile", authfile, "--tls-verify=false",
                                  f"docker://{registry.host}/{repo}").stdout)["Tags"]
    assert tags == ["v1"]


class _without_creds:
    """A view of a registry with no credentials (for clients that must log in themselves)."""

    def __init__(self, registry, creds=None):
        self.host, self.url, self.port = registry.host, registry.url, registry.port
        self.creds = creds


@needs_skopeo
def test_missing_or_wrong_credentials_are_refused(fresh_registry, small_image, tmp_path):
    registry = fresh_registry
    repo = f"{registry.account}/private"
    Skopeo(registry, tmp_path).copy(f"oci:{small_image['path']}:v1", f"docker://{registry.host}/{repo}:v1")

    anon = Skopeo(_without_creds(registry), tmp_path)
    proc = anon.inspect(f"docker://{registry.host}/{repo}:v1", check=False)
    assert proc.returncode != 0
    assert "unauthorized" in proc.stderr.lower() or "authentication required" in proc.stderr.lower(), proc.stderr

    wrong = Skopeo(_without_creds(registry, "KEY:izr_0000000000000000_notakey"), tmp_path)
    proc = wrong.inspect(f"docker://{registry.host}/{repo}:v1", check=False)
    assert proc.returncode != 0, proc.stdout
    proc = wrong.copy(f"oci:{small_image['path']}:v1", f"docker://{registry.host}/{repo}:v2", check=False)
    assert proc.returncode != 0, proc.stdout

    # a wrong username with the right key is refused too (the username must be KEY)
    user, key = basic(registry.creds)
    resp = OCIClient(registry.url, auth=("admin", key)).request("GET", f"/v2/{repo}/tags/list")
    assert resp.status_code == 401, describe(resp)


def test_failed_authentications_are_slowed_down(fresh_registry):
    """Past 10 failures a minute from one address: 429 with Retry-After."""
    registry = fresh_registry
    bad = OCIClient(registry.url, auth=("KEY", "izr_0000000000000000_wrong"))
    statuses = [bad.request("GET", "/v2/").status_code for _ in range(12)]
    assert statuses[0] == 401
    assert statuses[-1] == 429, statuses
    resp = bad.request("GET", "/v2/")
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert error_codes(resp) == ["TOOMANYREQUESTS"]


@needs_skopeo
def test_anonymous_clients_do_not_lock_out_keys(fresh_registry, small_image, tmp_path):
    """
    containers/image without credentials answers a Basic challenge with empty
    credentials (``Authorization: Basic Og==``, i.e. ``:``). That is an anonymous
    client, not a wrong key: a few anonymous skopeo runs (a device without its
    certificate, a CI job before login) must not trip the failed-auth brake and
    lock every key out of that address.
    """
    registry = fresh_registry
    repo = f"{registry.account}/public-ish"
    Skopeo(registry, tmp_path).copy(f"oci:{small_image['path']}:v1", f"docker://{registry.host}/{repo}:v1")
    anon = Skopeo(_without_creds(registry), tmp_path)
    proc = anon.inspect(f"docker://{registry.host}/{repo}:v1", "--raw", check=False)
    assert proc.returncode != 0
    # what skopeo just sent, ten more times (skopeo itself would then sit out the 429s)
    http = OCIClient(registry.url)
    for _ in range(10):
        assert http.request("GET", "/v2/").status_code == 401
        resp = http.request("GET", f"/v2/{repo}/manifests/v1", headers={"Authorization": "Basic Og=="})
        assert resp.status_code == 401, describe(resp)
    resp = OCIClient(registry.url, auth=basic(registry.creds)).request("GET", f"/v2/{repo}/tags/list")
    assert resp.status_code == 200, describe(resp)


def test_key_reaches_only_its_own_account(registry, client, new_repo):
    other_account, other_creds = registry.new_account()
    other = OCIClient(registry.url, auth=basic(other_creds))
    theirs = f"{other_account}/secret/app"
    data = random_bytes(3000, "other-account")
    digest = sha256_digest(data)
    expect(other.push_blob_monolithic(theirs, data), 201)
    expect(other.get_blob(theirs, digest), 200)

    # our key: no read, no write, no mount out of the other account
    for resp in (client.get_blob(theirs, digest), client.head_blob(theirs, digest),
                 client.request("GET", f"/v2/{theirs}/tags/list"),
                 client.push_blob_monolithic(theirs, b"intrusion")):
        assert resp.status_code in (401, 403, 404), describe(resp)
    # the 403 says which account the key is of (clients print only the message)
    resp = client.request("GET", f"/v2/{theirs}/tags/list")
    assert resp.status_code == 403 and error_codes(resp) == ["DENIED"], describe(resp)
    assert resp.json()["errors"][0]["message"] == (
        "access to a repository of another account is denied;"
        f" your account id is {registry.account}"), describe(resp)
    ours = new_repo("thief")
    resp = client.mount_blob(ours, digest, theirs)
    assert resp.status_code != 201, describe(resp)
    assert client.get_blob(ours, digest).status_code == 404
    # and a digest alone (no from=) does not mount a blob of another account either
    resp = client.request("POST", client.with_query(f"/v2/{ours}/blobs/uploads/", mount=digest),
                          headers={"Content-Length": "0"})
    assert resp.status_code != 201, describe(resp)
    assert client.get_blob(ours, digest).status_code == 404

    # the catalog lists the caller's account only
    assert all(r.startswith(registry.account + "/") for r in client.catalog())
    assert all(r.startswith(other_account + "/") for r in other.catalog())


@needs_skopeo
def test_read_only_key(registry, small_image, new_repo, tmp_path):
    repo = new_repo("ro")
    rw = Skopeo(registry, tmp_path)
    rw.copy(f"oci:{small_image['path']}:v1", rw.ref(repo, "v1"))

    ro_key = registry.cli("key", "create", registry.account, "--read-only", "--name", "ro")
    ro = Skopeo(_without_creds(registry, f"KEY:{ro_key}"), tmp_path)
    assert ro.inspect_raw(ro.ref(repo, "v1")) == small_image["manifest_bytes"]
    assert ro.list_tags(repo) == ["v1"]
    ro.copy(ro.ref(repo, "v1"), f"dir:{tmp_path / 'pulled'}")
    proc = ro.copy(f"oci:{small_image['path']}:v1", ro.ref(repo, "v2"), check=False)
    assert proc.returncode != 0, proc.stdout

    http = OCIClient(registry.url, auth=("KEY", ro_key))
    resp = http.start_upload(repo)
    assert resp.status_code == 403 and error_codes(resp) == ["DENIED"], describe(resp)
    resp = http.request("DELETE", f"/v2/{repo}/manifests/{small_image['manifest_digest']}")
    assert resp.status_code == 403, describe(resp)
    assert rw.list_tags(repo) == ["v1"]


def test_revoked_key_is_refused_at_once(registry, new_repo):
    account, creds = registry.new_account()
    http = OCIClient(registry.url, auth=basic(creds))
    repo = f"{account}/app"
    expect(http.push_blob_monolithic(repo, b"before revocation"), 201)
    listing = [json.loads(line) for line in registry.cli("key", "list", account, "--json").splitlines()]
    [record] = listing
    registry.cli("key", "revoke", record["id"])
    resp = http.get_blob(repo, sha256_digest(b"before revocation"))
    assert resp.status_code == 401, describe(resp)


@needs_skopeo
def test_token_service_with_skopeo(start_registry, small_image, tmp_path):
    """``--token-service``: Bearer challenge, the token endpoint, skopeo's Bearer flow."""
    registry = start_registry("--token-service")
    anon = OCIClient(registry.url)
    challenge = anon.request("GET", "/v2/").headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer "), challenge
    assert f'realm="http://{registry.host}/v2/token"' in challenge, challenge

    user, key = basic(registry.creds)
    resp = expect(anon.request("GET", "/v2/token", auth=(user, key),
                               params={"service": "izreg", "scope": f"repository:{registry.account}/x:pull,push"}), 200)
    token = resp.json().get("token") or resp.json().get("access_token")
    assert token and int(resp.json().get("expires_in", 60)) >= 60
    expect(anon.request("GET", "/v2/", headers={"Authorization": f"Bearer {token}"}), 200)
    assert anon.request("GET", "/v2/token", auth=(user, "izr_0000000000000000_wrong")).status_code == 401

    sk = Skopeo(registry, tmp_path)
    repo = f"{registry.account}/tokened"
    sk.copy(f"oci:{small_image['path']}:v1", sk.ref(repo, "v1"))
    assert sk.inspect_raw(sk.ref(repo, "v1")) == small_image["manifest_bytes"]
    sk.delete(sk.ref(repo, "v1"))
    assert sk.list_tags(repo) == []



@needs_skopeo
def test_a_configured_token_realm_is_sent_whatever_host_and_clients_follow_it(small_image, tmp_path):
    """
    ``[auth] token_realm``: behind a load balancer the realm is the public token URL, not one built
    from the Host a client sent (a node's own address, or anything a client chose). Here the realm
    names the node by another host name than the clients use: skopeo fetches its token there.
    """
    import requests

    from tests.helpers.server import RegistryProcess, running

    config = tmp_path / "izreg.toml"
    registry = RegistryProcess(data_dir=str(tmp_path / "data"), config=str(config))
    realm = f"http://localhost:{registry.port}/v2/token"
    config.write_text(f'[auth]\ntoken_service = true\ntoken_realm = "{realm}"\n')
    with running(registry):
        for host in (registry.host, "evil.example.org", "10.0.0.12:5000"):
            resp = requests.get(f"{registry.url}/v2/", headers={"Host": host, "X-Forwarded-Proto": "https"},
                                timeout=30)
            assert resp.status_code == 401, describe(resp)
            assert resp.headers["WWW-Authenticate"].startswith(f'Bearer realm="{realm}",'), resp.headers
        sk = Skopeo(registry, tmp_path)
        ref = sk.ref(f"{registry.account}/realmed", "v1")
        assert ref.startswith(f"docker://{registry.host}/")  # not the realm's host name
        mark = registry.log_mark()
        sk.copy(f"oci:{small_image['path']}:v1", ref)
        assert sk.inspect_raw(ref) == small_image["manifest_bytes"]
        registry.wait_for_log("GET /v2/token 200", mark)  # the token came from the configured realm


def test_token_service_with_oras_token_backend(start_registry, tmp_path, oras_guard):
    """
    oras-py's default token backend caches the first token (from a HEAD: pull
    scope) and refreshes only on 403, not on 401 (CLIENTS.md). So a push works
    only if the token carries the key's full rights whatever scope was asked
    (OCI-NOTES section 5), or if a missing scope is answered with 403.
    """
    oras_client = pytest.importorskip("oras.client")
    registry = start_registry("--token-service")
    user, key = basic(registry.creds)
    oras = oras_client.OrasClient(hostname=registry.host, insecure=True)
    oras.auth.set_basic_auth(user, key)
    chart = tmp_path / "chart.tgz"
    chart.write_bytes(random_bytes(4000, "token-chart"))
    target = f"{registry.host}/{registry.account}/charts/tokened:0.1.0"
    resp = oras.push(target=target, files=[f"{chart}:application/vnd.cncf.helm.chart.content.v1.tar+gzip"],
                     disable_path_validation=True, quiet=True, do_chunked=True, chunk_size=1024)
    assert resp.status_code == 201
    files = oras.pull(target=target, outdir=str(tmp_path / "out"))
    assert open(files[0], "rb").read() == chart.read_bytes()


def test_token_realm_over_tls_is_https(start_registry, tmp_path):
    """
    A client on the TLS listener is sent to the token endpoint over https (on
    the port it came in by), the plain listener's clients over http: a
    client that logs in over TLS would otherwise fetch its token in plain
    HTTP from a TLS port, and fail. (Twisted's TLS protocol, and so
    izreg.service.fasttls's, implements INegotiated, an ISSLTransport:
    C{request.isSecure()} is true there.)
    """
    import time

    import requests

    from izreg.devcerts import write_dev_certs
    from tests.helpers.server import free_port, random_account

    paths = write_dev_certs(str(tmp_path / "certs"), time.time(), random_account())
    tls_port = free_port()
    registry = start_registry("--token-service", "--tls-listen", f"tcp:{tls_port}:interface=127.0.0.1",
                              "--tls-cert", paths.server_cert, "--tls-key", paths.server_key,
                              "--device-ca", paths.ca_cert)
    resp = requests.get(f"https://127.0.0.1:{tls_port}/v2/", verify=paths.ca_cert, timeout=30)
    assert resp.status_code == 401, describe(resp)
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert f'realm="https://127.0.0.1:{tls_port}/v2/token"' in challenge, challenge
    challenge = OCIClient(registry.url).request("GET", "/v2/").headers.get("WWW-Authenticate", "")
    assert f'realm="http://{registry.host}/v2/token"' in challenge, challenge
