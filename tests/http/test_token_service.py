"""
The Docker token service (``token_service = true``): the Bearer challenge,
``/v2/token`` (GET with Basic, POST password grant) and what its tokens may
do, over the in-process server with the real guard; then the oras Python
client driving the same flow.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import types
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from izreg.auth import tokens
from izreg.auth.policy import parse_scope
from tests.http.authhelpers import (
    BASIC_CHALLENGE,
    OCI_MANIFEST,
    Keys,
    auth,
    basic,
    bearer,
    digest_of,
    error_of,
    image_manifest,
    push_blob,
    push_image,
    start_upload,
    unknown_key,
)
from tests.http.conftest import header, start_server
from tests.http.helpers import parse_raw
from tests.http.test_bodies import answer_before_body, connect
from tests.service.test_admission import until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Env:
    def __init__(self, server, keys: Keys) -> None:
        self.server, self.keys = server, keys
        self.count = 0

    @property
    def realm(self) -> str:
        return f"{self.server.url}/v2/token"

    def repo(self, account: str | None = None) -> str:
        self.count += 1
        return f"{account or self.keys.a}/t{self.count}"

    async def token(self, key: str, *scopes: str, expect: int = 200) -> str | dict:
        query = urlencode([("service", "izreg")] + [("scope", s) for s in scopes])
        response, body = await self.server.request("GET", f"/v2/token?{query}", headers=auth(basic(key)))
        assert response.code == expect, body
        return json.loads(body)["token"] if expect == 200 else json.loads(body)


def claims(token: str) -> dict:
    """The (unverified) payload of an izreg token, to see what was granted."""
    body = token[len(tokens.PREFIX):].partition(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def pull_push(name: str) -> str:
    return f"repository:{name}:pull,push"


@pytest_twisted.async_yield_fixture(scope="module")
async def env(tmp_path_factory):
    server = await start_server(tmp_path_factory.mktemp("tokens"), socket=True, token_service=True,
                                auth_failure_limit=10**9)  # the realm names the listener; oras connects to it
    yield Env(server, Keys.make(server))
    await server.service.stopService()


# The challenge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, what, scope",
    [
        ("GET", "manifests/v1", "pull"),
        ("HEAD", "manifests/v1", "pull"),
        ("PUT", "manifests/v1", "pull,push"),
        ("DELETE", "manifests/v1", "delete"),
        ("GET", "blobs/" + digest_of(b"x"), "pull"),
        ("HEAD", "blobs/" + digest_of(b"x"), "pull"),
        ("DELETE", "blobs/" + digest_of(b"x"), "delete"),
        ("POST", "blobs/uploads/", "pull,push"),
        ("POST", "blobs/uploads/?digest=" + digest_of(b"x"), "pull,push"),
        ("PATCH", "blobs/uploads/some-upload", "pull,push"),
        ("PUT", "blobs/uploads/some-upload?digest=" + digest_of(b"x"), "pull,push"),
        ("GET", "tags/list", "pull"),
        ("GET", "referrers/" + digest_of(b"x"), "pull"),
    ],
)
@pytest.mark.parametrize("credentials", ["none", "unknown key"])
@pytest_twisted.ensureDeferred
async def test_challenge_names_the_token_endpoint_and_the_scope(env, method, what, scope, credentials):
    name = f"{env.keys.a}/app"
    value = None if credentials == "none" else basic(unknown_key())
    body = b"x" if method in ("PATCH", "PUT", "POST") else None
    response, body = await env.server.request(method, f"/v2/{name}/{what}", body=body, headers=auth(value))
    assert response.code == 401, body
    assert header(response, "WWW-Authenticate") == (
        f'Bearer realm="http://127.0.0.1:{env.server.url.rsplit(":", 1)[1]}/v2/token",'
        f'service="izreg",scope="repository:{name}:{scope}"'
    )


@pytest.mark.parametrize("path, scope", [("/v2/", None), ("/v2/_catalog", "registry:catalog:*")])
@pytest_twisted.ensureDeferred
async def test_challenge_of_base_and_catalog(env, path, scope):
    response, _ = await env.server.request("GET", path)
    assert response.code == 401
    expected = f'Bearer realm="{env.realm}",service="izreg"'
    if scope:
        expected += f',scope="{scope}"'
    assert header(response, "WWW-Authenticate") == expected


@pytest_twisted.ensureDeferred
async def test_challenge_realm_follows_the_host_the_client_used(env):
    port = env.server.url.rsplit(":", 1)[1]
    response, _ = await env.server.request("GET", "/v2/", headers={"Host": f"registry.example:{port}"})
    assert header(response, "WWW-Authenticate").startswith(f'Bearer realm="http://registry.example:{port}/v2/token"')


# The token endpoint ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_token_with_basic(env):
    name = f"{env.keys.a}/app"
    before = env.server.service.reactor.seconds()
    query = urlencode({"service": "izreg", "scope": pull_push(name), "offline_token": "true",
                       "client_id": "docker", "account": "KEY"})
    response, body = await env.server.request("GET", f"/v2/token?{query}", headers=auth(basic(env.keys.a_key)))
    assert response.code == 200, body
    assert header(response, "Content-Type") == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}  # no refresh_token
    assert answer["token"] == answer["access_token"]
    assert isinstance(answer["expires_in"], int) and answer["expires_in"] >= 60
    issued = datetime.datetime.strptime(answer["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs(issued.timestamp() - before) < 5
    assert claims(answer["token"])["s"] == [f"repository:{name}:pull,push,delete"]
    assert env.keys.a_key not in body.decode()


@pytest_twisted.ensureDeferred
async def test_post_password_grant(env):
    name = env.repo()
    form = urlencode({"grant_type": "password", "username": "KEY", "password": env.keys.a_key,
                      "service": "izreg", "scope": pull_push(name), "client_id": "oras"}).encode()
    response, body = await env.server.request("POST", "/v2/token", body=form, headers=FORM)
    assert response.code == 200, body
    answer = json.loads(body)
    assert "refresh_token" not in answer
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] >= 60
    # and the token pushes
    digest = digest_of(b"posted")
    response, _ = await env.server.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", body=b"posted",
                                           headers=auth(bearer(answer["token"])))
    assert response.code == 201


@pytest_twisted.ensureDeferred
async def test_a_token_form_over_8_kib_is_refused_and_only_8_kib_reserved(env):
    """
    What docker, oras and helm POST (grant_type, service, scope, a refresh token or a password) is a few
    hundred bytes: a form is kept up to 8 KiB, refused 413 past it, at the headers (Content-Length) or as a
    chunked body passes it; a chunked one reserves 8 KiB of body_memory, not 64 KiB, before anyone is
    authenticated. (Up to 64 KiB were kept and reserved.)
    """
    server, budget = env.server, env.server.api.budget
    head = "POST /v2/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    status, headers, body = await answer_before_body(server, f"{head}Content-Length: 8193\r\n\r\n".encode())
    assert (status, error_of(body)["code"]) == (413, "SIZE_INVALID") and headers["connection"] == "close"
    chunked = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
    client = await connect(server, chunked + b"%x\r\n%s\r\n" % (100, b"s" * 100))
    try:
        await until(lambda: budget.used > 0, "the chunked form's first bytes kept")
        assert budget.used == 8 * 1024
        client.transport.write(b"%x\r\n%s\r\n" % (8192, b"s" * 8192))
        status, _, body = parse_raw(await client.done.addTimeout(20, reactor))
        assert (status, error_of(body)["code"]) == (413, "SIZE_INVALID")
    finally:
        client.transport.abortConnection()
    await until(lambda: budget.used == 0, "the form's memory given back")
    form = urlencode({"grant_type": "password", "username": "KEY", "password": env.keys.a_key, "service": "izreg",
                      "scope": pull_push(env.repo()), "pad": "p" * 7000}).encode()
    assert len(form) < 8192
    response, body = await server.request("POST", "/v2/token", body=form, headers=FORM)
    assert response.code == 200, body


@pytest_twisted.ensureDeferred
async def test_post_with_space_separated_scopes(env):
    one, two = env.repo(), env.repo()
    form = urlencode({"grant_type": "password", "username": "KEY", "password": env.keys.a_key,
                      "scope": f"repository:{one}:pull repository:{two}:pull,push"}).encode()
    response, body = await env.server.request("POST", "/v2/token", body=form, headers=FORM)
    assert response.code == 200
    assert sorted(claims(json.loads(body)["token"])["s"]) == sorted(
        [f"repository:{one}:pull,push,delete", f"repository:{two}:pull,push,delete"])


@pytest.mark.parametrize(
    "form, headers",
    [
        ({"grant_type": "password", "username": "KEY", "password": "wrong"}, {}),
        ({"grant_type": "password", "username": "KEY", "password": unknown_key()}, {}),
        ({"grant_type": "password", "username": "KEY", "password": ""}, {}),
        ({"grant_type": "password", "username": "KEY"}, {}),
        ({"grant_type": "password", "username": "bob", "password": "A_KEY"}, {}),
        ({"grant_type": "password", "username": "KEY", "password": "REVOKED"}, {}),
        ({"grant_type": "refresh_token", "refresh_token": "A_KEY"}, {}),
        ({"grant_type": "refresh_token", "refresh_token": "x"}, {"Authorization": "A_BASIC"}),
        ({"scope": "repository:x/y:pull"}, {}),
        ({}, {}),
    ],
    ids=["wrong password", "unknown key", "empty password", "no password", "wrong username", "revoked",
         "refresh grant", "refresh grant with basic", "no credentials", "empty form"],
)
@pytest_twisted.ensureDeferred
async def test_post_without_valid_credentials_is_401_never_an_anonymous_token(env, form, headers):
    keys = env.keys
    subst = {"A_KEY": keys.a_key, "REVOKED": keys.a_revoked, "A_BASIC": basic(keys.a_key)}
    form = {k: subst.get(v, v) for k, v in form.items()}
    headers = {k: subst.get(v, v) for k, v in headers.items()}
    form.setdefault("scope", pull_push(f"{keys.a}/app"))
    response, body = await env.server.request("POST", "/v2/token", body=urlencode(form).encode(),
                                              headers={**FORM, **headers})
    assert response.code == 401, body
    assert error_of(body)["code"] == "UNAUTHORIZED"
    assert header(response, "WWW-Authenticate") == BASIC_CHALLENGE
    assert b"token" not in body.replace(b"refresh tokens", b"").replace(b"refresh_token", b"")


@pytest.mark.parametrize(
    "value",
    [None, "Basic " + base64.b64encode(b"KEY:wrong").decode(), "WRONG_USER", "REVOKED", "BEARER_KEY", "Basic !!"],
    ids=["none", "wrong key", "wrong username", "revoked", "bearer key", "garbage"],
)
@pytest_twisted.ensureDeferred
async def test_get_without_valid_basic_credentials_is_401(env, value):
    keys = env.keys
    value = {"WRONG_USER": basic(keys.a_key, user="bob"), "REVOKED": basic(keys.a_revoked),
             "BEARER_KEY": bearer(keys.a_key)}.get(value, value)
    response, body = await env.server.request("GET", f"/v2/token?scope={pull_push(keys.a + '/app')}", headers=auth(value))
    assert response.code == 401, body
    assert header(response, "WWW-Authenticate") == BASIC_CHALLENGE
    assert "token" not in json.loads(body) and "access_token" not in json.loads(body)


@pytest_twisted.ensureDeferred
async def test_wrong_username_message_says_key(env):
    response, body = await env.server.request("GET", "/v2/token", headers=auth(basic(env.keys.a_key, user="bob")))
    assert response.code == 401
    assert "username must be KEY" in error_of(body)["message"]


@pytest_twisted.ensureDeferred
async def test_docker_login_flow(env):
    """docker login: anonymous /v2/ -> Bearer challenge -> token without scope -> /v2/ with it is 200."""
    response, _ = await env.server.request("GET", "/v2/")
    assert response.code == 401
    assert header(response, "WWW-Authenticate") == f'Bearer realm="{env.realm}",service="izreg"'
    query = urlencode({"account": "KEY", "client_id": "docker", "offline_token": "true", "service": "izreg"})
    response, body = await env.server.request("GET", f"/v2/token?{query}", headers=auth(basic(env.keys.a_key)))
    assert response.code == 200
    answer = json.loads(body)
    assert "refresh_token" not in answer  # or docker would drop the key for it
    assert claims(answer["access_token"])["s"] == []
    response, _ = await env.server.request("GET", "/v2/", headers=auth(bearer(answer["access_token"])))
    assert response.code == 200
    # a token with no scope opens nothing else
    response, _ = await env.server.request("GET", f"/v2/{env.keys.a}/app/tags/list", headers=auth(bearer(answer["token"])))
    assert response.code == 401


# What a token may do ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_pushes_and_pulls_its_scope(env):
    name = env.repo()
    token = await env.token(env.keys.a_key, pull_push(name))
    headers = auth(bearer(token))
    config, layer = b'{"token": true}', b"pushed with a token"
    for data in (config, layer):
        digest = digest_of(data)
        response, _ = await env.server.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", body=data, headers=headers)
        assert response.code == 201
    manifest = image_manifest(config, layer)
    response, _ = await env.server.request("PUT", f"/v2/{name}/manifests/v1", body=manifest,
                                           headers={**headers, "Content-Type": OCI_MANIFEST})
    assert response.code == 201
    response, body = await env.server.request("GET", f"/v2/{name}/manifests/v1", headers={**headers, "Accept": OCI_MANIFEST})
    assert (response.code, body) == (200, manifest)
    response, body = await env.server.request("GET", f"/v2/{name}/tags/list", headers=headers)
    assert json.loads(body) == {"name": name, "tags": ["v1"]}
    # chunked too: POST, PATCH, PUT
    location = (await env.server.request("POST", f"/v2/{name}/blobs/uploads/", headers=headers))[0]
    location = header(location, "Location")
    response, _ = await env.server.request("PATCH", location, body=b"chunk", headers=headers)
    assert response.code == 202
    response, _ = await env.server.request("PUT", f"{location}?digest={digest_of(b'chunk')}", headers=headers)
    assert response.code == 201
    # and delete: the grant is everything the key may do on the repository
    response, body = await env.server.request("DELETE", f"/v2/{name}/manifests/v1", headers=headers)
    assert response.code == 202


@pytest_twisted.ensureDeferred
async def test_pull_token_also_pushes_as_its_key_may(env):
    """oras-py asks for pull first (HEAD blob) and reuses that token for its push."""
    name = env.repo()
    await push_image(env.server, name, env.keys.a_key, name)
    token = await env.token(env.keys.a_key, f"repository:{name}:pull")
    headers = auth(bearer(token))
    response, _ = await env.server.request("GET", f"/v2/{name}/manifests/v1", headers={**headers, "Accept": OCI_MANIFEST})
    assert response.code == 200
    location = await start_upload(env.server, name, env.keys.a_key)
    for method, path, body in [
        ("POST", f"/v2/{name}/blobs/uploads/", None),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={digest_of(b'y')}", b"y"),
        ("PATCH", location, b"y"),
        ("PUT", f"{location}?digest={digest_of(b'y')}", b"y"),
        ("PUT", f"/v2/{name}/manifests/v2", b"{}"),
    ]:
        response, content = await env.server.request(method, path, body=body, headers=headers)
        assert response.code not in (401, 403), (method, path, content)


@pytest_twisted.ensureDeferred
async def test_token_for_one_repository_does_not_open_another(env):
    name, other = env.repo(), env.repo()
    await push_image(env.server, other, env.keys.a_key, other)
    token = await env.token(env.keys.a_key, pull_push(name))
    response, _ = await env.server.request("GET", f"/v2/{other}/manifests/v1", headers=auth(bearer(token)))
    assert response.code == 401
    assert f'scope="repository:{other}:pull",error="insufficient_scope"' in header(response, "WWW-Authenticate")


@pytest_twisted.ensureDeferred
async def test_star_scope_grants_everything_the_key_may(env):
    name = env.repo()
    await push_image(env.server, name, env.keys.a_key, name)
    token = await env.token(env.keys.a_key, f"repository:{name}:*")
    assert claims(token)["s"] == [f"repository:{name}:pull,push,delete"]
    response, _ = await env.server.request("DELETE", f"/v2/{name}/manifests/v1", headers=auth(bearer(token)))
    assert response.code == 202


@pytest_twisted.ensureDeferred
async def test_raw_key_stays_accepted_as_bearer(env):
    name = env.repo()
    digest = digest_of(b"raw bearer")
    response, _ = await env.server.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", body=b"raw bearer",
                                           headers=auth(bearer(env.keys.a_key)))
    assert response.code == 201
    response, _ = await env.server.request("DELETE", f"/v2/{name}/blobs/{digest}", headers=auth(bearer(env.keys.a_key)))
    assert response.code == 202
    # and Basic still works on every route with the token service on
    response, _ = await env.server.request("GET", "/v2/_catalog", headers=auth(basic(env.keys.a_key)))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_token_of_a_revoked_key_stops_working(env):
    store, now = env.keys.store, env.server.service.reactor.seconds()
    record, key = store.create_key(env.keys.a, now, name="soon revoked")
    name = env.repo()
    token = await env.token(key.reveal(), pull_push(name))
    response, _ = await env.server.request("GET", "/v2/", headers=auth(bearer(token)))
    assert response.code == 200
    store.revoke_key(record.key_id, now)
    for path in ("/v2/", f"/v2/{name}/tags/list"):
        response, body = await env.server.request("GET", path, headers=auth(bearer(token)))
        assert response.code == 401
        assert "revoked" in error_of(body)["message"]
    await env.token(key.reveal(), pull_push(name), expect=401)


@pytest_twisted.ensureDeferred
async def test_scopes_of_another_account_are_not_granted(env):
    keys = env.keys
    b_repo, a_repo = env.repo(keys.b), env.repo()
    await push_image(env.server, b_repo, keys.b_key, b_repo)
    token = await env.token(keys.a_key, pull_push(b_repo), f"repository:{b_repo}:*", f"repository:{a_repo}:pull")
    assert claims(token)["s"] == [f"repository:{a_repo}:pull,push,delete"]
    headers = auth(bearer(token))
    for method, what in [("GET", "manifests/v1"), ("GET", "tags/list"), ("DELETE", "manifests/v1"),
                         ("POST", f"blobs/uploads/?digest={digest_of(b'z')}")]:
        response, body = await env.server.request(method, f"/v2/{b_repo}/{what}", headers=headers,
                                                  body=b"z" if method == "POST" else None)
        assert (response.code, error_of(body)["code"]) == (403, "DENIED"), (method, what)
    # a token asked only for another account grants nothing, and opens nothing
    token = await env.token(keys.a_key, pull_push(b_repo))
    assert claims(token)["s"] == []
    response, _ = await env.server.request("GET", f"/v2/{b_repo}/tags/list", headers=auth(bearer(token)))
    assert response.code == 403


@pytest_twisted.ensureDeferred
async def test_read_only_key_gets_pull_only(env):
    name = env.repo()
    await push_image(env.server, name, env.keys.a_key, name)
    token = await env.token(env.keys.a_ro, f"repository:{name}:pull,push,delete")
    assert claims(token)["s"] == [f"repository:{name}:pull"]
    response, _ = await env.server.request("GET", f"/v2/{name}/manifests/v1", headers=auth(bearer(token)))
    assert response.code == 200
    response, body = await env.server.request("DELETE", f"/v2/{name}/manifests/v1", headers=auth(bearer(token)))
    assert (response.code, error_of(body)["code"]) == (403, "DENIED")


@pytest_twisted.ensureDeferred
async def test_catalog_needs_the_catalog_scope(env):
    keys = env.keys
    await push_blob(env.server, env.repo(), b"for the catalog", keys.a_key)
    await push_blob(env.server, env.repo(keys.b), b"B's, not listed", keys.b_key)
    token = await env.token(keys.a_key, pull_push(env.repo()))
    response, body = await env.server.request("GET", "/v2/_catalog", headers=auth(bearer(token)))
    assert response.code == 401
    assert header(response, "WWW-Authenticate") == (
        f'Bearer realm="{env.realm}",service="izreg",scope="registry:catalog:*",error="insufficient_scope"')
    token = await env.token(keys.a_key, "registry:catalog:*")
    response, body = await env.server.request("GET", "/v2/_catalog", headers=auth(bearer(token)))
    assert response.code == 200
    names = json.loads(body)["repositories"]
    assert names and all(n.startswith(keys.a + "/") for n in names)


@pytest_twisted.ensureDeferred
async def test_forged_expired_and_tampered_tokens_are_refused(env):
    keys = env.keys
    name = env.repo()
    now = env.server.service.reactor.seconds()
    signer = env.server.api.tokens.authenticator.signer()  # the running server's own secret
    scope = (parse_scope(f"repository:{name}:pull"),)
    good = await env.token(keys.a_key, f"repository:{name}:pull")
    body, _, mac = good.partition(".")
    bad = {
        "expired": signer.sign(tokens.TokenClaims(keys.a_key_id, keys.a, False, scope, now - 7200, now - 1)),
        "other secret": tokens.Signer(b"\x01" * 32).sign(
            tokens.TokenClaims(keys.a_key_id, keys.a, False, scope, now, now + 600)),
        "account not the key's": signer.sign(tokens.TokenClaims(keys.a_key_id, keys.b, False, scope, now, now + 600)),
        "unknown key id": signer.sign(tokens.TokenClaims("0123456789abcdef", keys.a, False, scope, now, now + 600)),
        "tampered mac": body + "." + ("A" if mac[0] != "A" else "B") + mac[1:],
        "no mac": body,
        "truncated": good[:-3],
        # claims nested too deeply for json, read before the signature is checked: a 500 (RecursionError)
        "nested claims": tokens.PREFIX + base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=") + "." + mac,
    }
    for what, token in bad.items():
        response, content = await env.server.request("GET", f"/v2/{name}/tags/list", headers=auth(bearer(token)))
        assert response.code == 401, what
        assert error_of(content)["code"] == "UNAUTHORIZED"
        assert header(response, "WWW-Authenticate").startswith(f'Bearer realm="{env.realm}"')


# oras (Python) against the token service ---------------------------------------------------


@pytest.fixture
def oras_client(monkeypatch, tmp_path):
    """Make an oras client that reads no docker config and never sleeps in its retry loop."""
    oras_client_module = pytest.importorskip("oras.client")
    import oras.decorator

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))

    def no_sleep(seconds):
        raise AssertionError(f"oras retried after an error (it would sleep {seconds} s)")

    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=no_sleep))

    def make(server):
        host = server.url.split("//", 1)[1]
        return host, oras_client_module.OrasClient(hostname=host, insecure=True)

    return make


@pytest_twisted.ensureDeferred
async def test_oras_pulls_with_a_token_from_basic_credentials(env, oras_client, tmp_path):
    """oras's default token backend: 401 -> GET /v2/token with Basic KEY:<key> -> Bearer; a byte-identical pull."""
    name = env.repo()
    data = b"chart bytes \x00\x01 from izreg\n"
    config = b"{}"
    await push_blob(env.server, name, data, env.keys.a_key)
    await push_blob(env.server, name, config, env.keys.a_key)
    manifest = json.loads(image_manifest(config, data))
    manifest["layers"][0]["annotations"] = {"org.opencontainers.image.title": "chart.tgz"}
    response, _ = await env.server.request("PUT", f"/v2/{name}/manifests/1.0.0", body=json.dumps(manifest).encode(),
                                           headers={**auth(basic(env.keys.a_key)), "Content-Type": OCI_MANIFEST})
    assert response.code == 201
    host, client = oras_client(env.server)
    client.auth.set_basic_auth("KEY", env.keys.a_key)
    out = tmp_path / "out"

    def pull():
        files = client.pull(target=f"{host}/{name}:1.0.0", outdir=str(out))
        return files, client.get_tags(f"{host}/{name}"), client.auth.token

    files, tags, token = await threads.deferToThread(pull)
    assert [os.path.basename(f) for f in files] == ["chart.tgz"]
    assert (out / "chart.tgz").read_bytes() == data
    assert tags == ["1.0.0"]
    assert token.startswith(tokens.PREFIX)  # it really went through /v2/token
    assert claims(token)["s"] == [f"repository:{name}:pull,push,delete"]


@pytest_twisted.ensureDeferred
async def test_oras_push_and_pull_with_the_raw_key_as_bearer(env, oras_client, tmp_path):
    """oras with the access key set as its token: every request carries Bearer <key>; push then pull."""
    name = env.repo()
    artifact = tmp_path / "artifact.txt"
    artifact.write_bytes(b"pushed by oras with a raw key\n")
    host, client = oras_client(env.server)
    client.auth.set_token_auth(env.keys.a_key)

    def push_pull():
        response = client.push(target=f"{host}/{name}:v1", files=[str(artifact)], disable_path_validation=True)
        files = client.pull(target=f"{host}/{name}:v1", outdir=str(tmp_path / "out"))
        return response.status_code, files

    status, files = await threads.deferToThread(push_pull)
    assert status == 201
    assert [open(f, "rb").read() for f in files] == [artifact.read_bytes()]
    response, body = await env.server.request("GET", f"/v2/{name}/tags/list", headers=auth(basic(env.keys.a_ro)))
    assert json.loads(body) == {"name": name, "tags": ["v1"]}


@pytest_twisted.ensureDeferred
async def test_oras_with_a_wrong_key_gets_no_token(env, oras_client, tmp_path, monkeypatch):
    name = env.repo()
    await push_image(env.server, name, env.keys.a_key, name)
    host, client = oras_client(env.server)
    client.auth.set_basic_auth("KEY", unknown_key())
    import oras.decorator

    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # it retries

    def pull():
        with pytest.raises(ValueError):
            client.pull(target=f"{host}/{name}:v1", outdir=str(tmp_path / "out"))
        return client.auth.token

    assert await threads.deferToThread(pull) is None
