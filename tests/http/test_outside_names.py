"""
A name the distribution spec allows but that is in no account's namespace
(``docker push HOST/app:v1``): 401 to a caller not yet known (nothing said
before authentication), then ``403 DENIED`` naming the form and the
caller's own account id, on every repository route, at the headers (a body
is never read); a name that is not of the spec's grammar stays a
``400 NAME_INVALID``. A blob ``HEAD`` (no body to carry the message) is a
404, so that skopeo, podman and docker go on to the upload, where they are
told. Over the in-process server with the real guard, on
LMDB and on PostgreSQL (where the caller is read off the reactor).

docker retries a push on NAME_INVALID (about 50 s) and gives up at once on
DENIED (moby's retryOnError); tests/e2e/test_docker_engine.py measures it.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import pytest_twisted

from tests.http.authhelpers import Keys, auth, basic, bearer, error_of, keyed_server
from tests.http.conftest import header
from tests.http.test_errors import DIGEST, ENDPOINTS, UPLOAD_ID

#: names of the spec's grammar outside every account; "{a}" is the caller's account id
OUTSIDE = ["app", "library/ubuntu", "{a}", "{a31}/app", "my-app.v2/x_y", "{a}/a__b", "{a}/a--b", "{b}/x__y"]
#: not of the spec's grammar at all: refused before authentication, as before
INVALID = ["App", "{a}/-a", "{a}//a", "{a}/a/", "{a}/a___b", "a" * 256, "{a}/" + "b" * 250]


class Ctx:
    def __init__(self, server, keys: Keys) -> None:
        self.server, self.keys = server, keys

    def name(self, template: str) -> str:
        return template.format(a=self.keys.a, a31=self.keys.a[:31], b=self.keys.b)


@pytest_twisted.async_yield_fixture(scope="module", params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def ctx(request, tmp_path_factory):
    server, keys, db = await keyed_server(tmp_path_factory.mktemp("outside"), request.param, request,
                                          auth_failure_limit=10**9, token_service=True)
    yield Ctx(server, keys)
    await server.service.stopService()
    if db is not None:
        db.close()


async def _ask(ctx: Ctx, method: str, template: str, name: str, credentials: str | None):
    body = b"body" if method in ("PUT", "PATCH", "POST") else None
    return await ctx.server.request(method, "/v2/" + template.format(name=name), body=body, headers=auth(credentials))


@pytest.mark.parametrize("outside", OUTSIDE)
@pytest_twisted.ensureDeferred
async def test_an_unknown_caller_gets_401_and_nothing_more(ctx, outside):
    name = ctx.name(outside)
    for method, template in ENDPOINTS:
        for credentials in (None, basic(ctx.keys.a_revoked), "Basic !!!"):
            response, body = await _ask(ctx, method, template, name, credentials)
            assert response.code == 401, (method, template, response.code, body)
            assert header(response, "WWW-Authenticate") is not None
            assert ctx.keys.a.encode() not in body and b"<account id>" not in body


@pytest.mark.parametrize("caller, account", [("a_key", "a"), ("a_ro", "a"), ("b_key", "b")])
@pytest.mark.parametrize("outside", OUTSIDE)
@pytest_twisted.ensureDeferred
async def test_a_known_caller_is_denied_with_the_form_and_its_account(ctx, outside, caller, account):
    name = ctx.name(outside)
    own = getattr(ctx.keys, account)
    for method, template in ENDPOINTS:
        response, body = await _ask(ctx, method, template, name, basic(getattr(ctx.keys, caller)))
        assert header(response, "WWW-Authenticate") is None
        if (method, template) == ("HEAD", "{name}/blobs/" + DIGEST):
            # no body to say why: "not there", so that clients go on to the upload and are told there
            assert response.code == 404, (method, template, response.code, body)
            continue
        assert response.code == 403, (method, template, response.code, body)
        if method == "HEAD":
            continue
        error = error_of(body)
        assert error["code"] == "DENIED"
        assert error["message"].startswith("repository names are <account id>/<name>")
        assert error["detail"] == {"name": name, "expected": "<account_id: 32 hex>/<name>[/<name>...]",
                                   "account": own}
        if "__" in name or "--" in name:  # an account's form, but separators izreg does not take
            assert 'never "__" or "--"' in error["message"]
        else:
            assert f"your account id is {own}: use {own}/{name}" in error["message"], error


@pytest.mark.parametrize("invalid", INVALID)
@pytest_twisted.ensureDeferred
async def test_a_name_not_of_the_grammar_is_name_invalid_for_anyone(ctx, invalid):
    name = ctx.name(invalid)
    for credentials in (None, basic(ctx.keys.a_key)):
        for method, template in ENDPOINTS:
            response, body = await _ask(ctx, method, template, name, credentials)
            assert response.code == 400, (method, template, response.code, body)
            if method != "HEAD":
                assert error_of(body)["code"] == "NAME_INVALID"


@pytest_twisted.ensureDeferred
async def test_a_name_with_capitals_is_told_names_are_lowercase(ctx):
    """
    <account>/MyApp (docker, podman and skopeo refuse it themselves; curl, a script, a page address do not):
    NAME_INVALID on every route, the browse API's too, saying names are lowercase and the name to use.
    """
    name, lowercase = f"{ctx.keys.a}/MyApp", f"{ctx.keys.a}/myapp"
    routes = [*ENDPOINTS, ("GET", "{name}/_izreg/manifests")]
    for credentials in (None, basic(ctx.keys.a_key)):
        for method, template in routes:
            response, body = await _ask(ctx, method, template, name, credentials)
            assert response.code == 400, (method, template, response.code, body)
            if method != "HEAD":
                error = error_of(body)
                assert error["code"] == "NAME_INVALID"
                assert error["message"].startswith("invalid repository name: repository names are lowercase")
                assert error["message"].endswith(f": use {lowercase}")
                assert error["detail"] == {"name": name, "lowercase": lowercase,
                                           "expected": "<account_id: 32 hex>/<name>[/<name>...]"}


@pytest_twisted.ensureDeferred
async def test_a_token_caller_is_denied_too(ctx):
    """docker with the token service asks a token for repository:app:push,pull: granted nothing, then DENIED."""
    query = urlencode({"service": "izreg", "scope": "repository:app:pull,push"})
    response, body = await ctx.server.request("GET", f"/v2/token?{query}", headers=auth(basic(ctx.keys.a_key)))
    assert response.code == 200, body
    token = json.loads(body)["token"]
    response, body = await ctx.server.request("POST", "/v2/app/blobs/uploads/", headers=auth(bearer(token)))
    assert response.code == 403, body
    assert f"use {ctx.keys.a}/app" in error_of(body)["message"]


@pytest_twisted.ensureDeferred
async def test_the_other_routes_are_unchanged(ctx):
    """A wrong method on such a name is still 405; an unknown route 404; a real repository still works."""
    response, _ = await ctx.server.request("PATCH", "/v2/app/manifests/v1", headers=auth(basic(ctx.keys.a_key)))
    assert response.code == 405
    response, _ = await ctx.server.request("GET", "/v2/app/nothing", headers=auth(basic(ctx.keys.a_key)))
    assert response.code == 404
    response, body = await ctx.server.request("GET", f"/v2/{ctx.keys.a}/app/blobs/{DIGEST}",
                                              headers=auth(basic(ctx.keys.a_key)))
    assert response.code == 404 and error_of(body)["code"] == "BLOB_UNKNOWN"
    response, body = await ctx.server.request("GET", f"/v2/{ctx.keys.a}/app/blobs/uploads/{UPLOAD_ID}",
                                              headers=auth(basic(ctx.keys.a_key)))
    assert response.code == 404, body
