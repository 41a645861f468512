"""
Who may call what: every /v2 endpoint against every kind of caller, over
the in-process server with the real L{izreg.http.guard.AccessGuard}.

One server serves the whole matrix (the failure limit is set out of reach so
the many refused requests do not trip it); each case prepares its own
repository, so no case sees another's writes. Every mutating case also
checks, afterwards and with A's key, that a refused request changed nothing
and that an allowed one did what it says.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import pytest
import pytest_twisted

from izreg.core.digest import Digest
from izreg.core.names import Repository
from tests.http.authhelpers import (
    BASIC_CHALLENGE,
    BEARER_INVALID,
    OCI_INDEX,
    OCI_MANIFEST,
    Keys,
    auth,
    basic,
    bearer,
    digest_of,
    error_of,
    image_manifest,
    keyed_server,
    other_secret,
    push_blob,
    push_blobs_for,
    push_image,
    start_upload,
    unknown_key,
)
from tests.http.conftest import header, start_server

# The callers ------------------------------------------------------------------------

UNAUTHENTICATED = ["none", "wrong_user", "wrong_key", "wrong_secret", "garbage", "revoked"]
CALLERS = UNAUTHENTICATED + ["read_only", "b_key", "a_key"]

#: what the 401 message must say, per caller
MESSAGES = {
    "none": "docker login <registry host> -u KEY",
    "wrong_user": "username must be KEY",
    "wrong_key": "invalid access key",
    "wrong_secret": "invalid access key",
    "garbage": "malformed Basic credentials",
    "revoked": "revoked",
}


def authorization(keys: Keys, caller: str) -> str | None:
    return {
        "none": None,
        "wrong_user": basic(keys.a_key, user="bob"),
        "wrong_key": basic(unknown_key()),
        "wrong_secret": basic(other_secret(keys.a_key)),
        "garbage": "Basic %%% this is not base64 %%%",
        "revoked": basic(keys.a_revoked),
        "read_only": basic(keys.a_ro),
        "b_key": basic(keys.b_key),
        "a_key": basic(keys.a_key),
    }[caller]


# The endpoints ----------------------------------------------------------------------


@dataclass
class Ctx:
    server: object
    keys: Keys
    counter: itertools.count = field(default_factory=itertools.count)
    caller: str = ""

    def repo(self, account: str | None = None) -> str:
        return f"{account or self.keys.a}/m{next(self.counter)}"

    async def as_a(self, method: str, path: str, **kw):
        headers = {**kw.pop("headers", {}), **auth(basic(self.keys.a_key))}
        return await self.server.request(method, path, headers=headers, **kw)

    def upload_count(self) -> int:
        return len(list(self.server.registry.index.list_uploads()))


@dataclass
class Prepared:
    method: str
    path: str
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    #: after(ctx, allowed, response, body): check the state the request left
    after: Callable[..., Awaitable[None]] | None = None


@dataclass
class Endpoint:
    name: str
    action: str  # "base", "catalog", "pull", "push", "delete"
    status: int  # A's answer
    prepare: Callable[[Ctx], Awaitable[Prepared]]
    a_error: str | None = None  # the OCI code of A's answer, when A is refused too

    def __str__(self) -> str:
        return self.name


def base(method):
    async def prepare(ctx):
        async def after(ctx, allowed, response, body):
            if allowed and method == "GET":
                assert json.loads(body) == {}

        return Prepared(method, "/v2/", after=after)

    return prepare


def get_manifest(method, by_digest):
    async def prepare(ctx):
        repo = ctx.repo()
        digest, manifest = await push_image(ctx.server, repo, ctx.keys.a_key, repo)

        async def after(ctx, allowed, response, body):
            if allowed:
                assert header(response, "Docker-Content-Digest") == digest
                assert body == (manifest if method == "GET" else b"")

        reference = digest if by_digest else "v1"
        return Prepared(method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}, after=after)

    return prepare


def put_manifest(by_digest):
    async def prepare(ctx):
        repo = ctx.repo()
        manifest = await push_blobs_for(ctx.server, repo, ctx.keys.a_key, repo)
        digest = digest_of(manifest)
        reference = digest if by_digest else "v1"

        async def after(ctx, allowed, response, body):
            got, _ = await ctx.as_a("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
            assert got.code == (200 if allowed else 404)
            if allowed:
                assert header(response, "Docker-Content-Digest") == digest

        return Prepared("PUT", f"/v2/{repo}/manifests/{reference}", body=manifest,
                        headers={"Content-Type": OCI_MANIFEST}, after=after)

    return prepare


def delete_manifest(by_digest):
    async def prepare(ctx):
        repo = ctx.repo()
        digest, _ = await push_image(ctx.server, repo, ctx.keys.a_key, repo)
        reference = digest if by_digest else "v1"

        async def after(ctx, allowed, response, body):
            got, _ = await ctx.as_a("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
            assert got.code == (404 if allowed else 200)

        return Prepared("DELETE", f"/v2/{repo}/manifests/{reference}", after=after)

    return prepare


def get_blob(method):
    async def prepare(ctx):
        repo = ctx.repo()
        data = f"blob of {repo}".encode()
        digest = await push_blob(ctx.server, repo, data, ctx.keys.a_key)

        async def after(ctx, allowed, response, body):
            if allowed:
                assert header(response, "Docker-Content-Digest") == digest
                assert body == (data if method == "GET" else b"")

        return Prepared(method, f"/v2/{repo}/blobs/{digest}", after=after)

    return prepare


async def delete_blob(ctx):
    repo = ctx.repo()
    digest = await push_blob(ctx.server, repo, f"blob of {repo}".encode(), ctx.keys.a_key)

    async def after(ctx, allowed, response, body):
        got, _ = await ctx.as_a("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert got.code == (404 if allowed else 200)

    return Prepared("DELETE", f"/v2/{repo}/blobs/{digest}", after=after)


async def post_upload(ctx):
    repo = ctx.repo()
    before = ctx.upload_count()

    async def after(ctx, allowed, response, body):
        assert ctx.upload_count() == before + (1 if allowed else 0)
        if allowed:
            location = header(response, "Location")
            assert location.startswith(f"/v2/{repo}/blobs/uploads/")
            got, _ = await ctx.as_a("GET", location)
            assert got.code == 204

    return Prepared("POST", f"/v2/{repo}/blobs/uploads/", after=after)


async def post_monolithic(ctx):
    repo = ctx.repo()
    data = f"monolithic {repo}".encode()
    digest = digest_of(data)
    before = ctx.upload_count()

    async def after(ctx, allowed, response, body):
        got, _ = await ctx.as_a("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert got.code == (200 if allowed else 404)
        assert ctx.upload_count() == before
        if allowed:
            assert header(response, "Location") == f"/v2/{repo}/blobs/{digest}"

    return Prepared("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data,
                    headers={"Content-Type": "application/octet-stream"}, after=after)


def mount(source_account: str):
    async def prepare(ctx):
        keys = ctx.keys
        source = ctx.repo(keys.a if source_account == "a" else keys.b)
        source_key = keys.a_key if source_account == "a" else keys.b_key
        digest = await push_blob(ctx.server, source, f"mountable {source}".encode(), source_key)
        target = ctx.repo()
        before = ctx.upload_count()

        async def after(ctx, allowed, response, body):
            got, _ = await ctx.as_a("HEAD", f"/v2/{target}/blobs/{digest}")
            assert got.code == (200 if response.code == 201 else 404)
            # a blob it may not read is not mounted: a new session instead (202); a refused POST starts none
            assert ctx.upload_count() == before + (response.code == 202)

        return Prepared("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}", after=after)

    return prepare


def upload_session(method):
    async def prepare(ctx):
        repo = ctx.repo()
        location = await start_upload(ctx.server, repo, ctx.keys.a_key)
        data = f"chunk of {repo}".encode()
        digest = digest_of(data)
        path, body, headers = location, None, {}
        if method == "PATCH":
            body = data
            headers = {"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(data) - 1}"}
        elif method == "PUT":
            path, body = f"{location}?digest={digest}", data
            headers = {"Content-Type": "application/octet-stream"}

        async def after(ctx, allowed, response, body):
            status, _ = await ctx.as_a("GET", location)
            blob, _ = await ctx.as_a("HEAD", f"/v2/{repo}/blobs/{digest}")
            if method == "PATCH":
                assert status.code == 204
                assert header(status, "Range") == (f"0-{len(data) - 1}" if allowed else "0-0")
            elif method == "PUT":
                assert status.code == (404 if allowed else 204)
                assert blob.code == (200 if allowed else 404)
            elif method == "DELETE":
                assert status.code == (404 if allowed else 204)
            else:
                assert status.code == 204
                if allowed:
                    assert header(response, "Location") == location
                    assert header(response, "Range") == "0-0"

        return Prepared(method, path, body=body, headers=headers, after=after)

    return prepare


async def tags_list(ctx):
    repo = ctx.repo()
    await push_image(ctx.server, repo, ctx.keys.a_key, repo, tag="v1")

    async def after(ctx, allowed, response, body):
        if allowed:
            assert json.loads(body) == {"name": repo, "tags": ["v1"]}

    return Prepared("GET", f"/v2/{repo}/tags/list", after=after)


async def referrers(ctx):
    repo = ctx.repo()
    subject, manifest = await push_image(ctx.server, repo, ctx.keys.a_key, repo)
    # a referrer of it
    config, layer = b'{"sig": 1}', f"signature of {repo}".encode()
    await push_blob(ctx.server, repo, config, ctx.keys.a_key)
    await push_blob(ctx.server, repo, layer, ctx.keys.a_key)
    referrer = image_manifest(config, layer, subject=(subject, len(manifest)))
    response, _ = await ctx.as_a("PUT", f"/v2/{repo}/manifests/{digest_of(referrer)}", body=referrer,
                                 headers={"Content-Type": OCI_MANIFEST})
    assert response.code == 201

    async def after(ctx, allowed, response, body):
        if allowed:
            assert header(response, "Content-Type") == OCI_INDEX
            assert [m["digest"] for m in json.loads(body)["manifests"]] == [digest_of(referrer)]

    return Prepared("GET", f"/v2/{repo}/referrers/{subject}", after=after)


async def catalog(ctx):
    async def after(ctx, allowed, response, body):
        if allowed:
            names = json.loads(body)["repositories"]
            assert names, "each account has repositories by now"
            account = ctx.keys.b if ctx.caller == "b_key" else ctx.keys.a
            assert all(name.startswith(account + "/") for name in names), names
            assert names == sorted(names)

    return Prepared("GET", "/v2/_catalog", after=after)


ENDPOINTS = [
    Endpoint("GET /v2/", "base", 200, base("GET")),
    Endpoint("HEAD /v2/", "base", 200, base("HEAD")),
    Endpoint("GET manifest by tag", "pull", 200, get_manifest("GET", False)),
    Endpoint("HEAD manifest by tag", "pull", 200, get_manifest("HEAD", False)),
    Endpoint("GET manifest by digest", "pull", 200, get_manifest("GET", True)),
    Endpoint("HEAD manifest by digest", "pull", 200, get_manifest("HEAD", True)),
    Endpoint("PUT manifest by tag", "push", 201, put_manifest(False)),
    Endpoint("PUT manifest by digest", "push", 201, put_manifest(True)),
    Endpoint("DELETE manifest by tag", "delete", 202, delete_manifest(False)),
    Endpoint("DELETE manifest by digest", "delete", 202, delete_manifest(True)),
    Endpoint("GET blob", "pull", 200, get_blob("GET")),
    Endpoint("HEAD blob", "pull", 200, get_blob("HEAD")),
    Endpoint("DELETE blob", "delete", 202, delete_blob),
    Endpoint("POST upload", "push", 202, post_upload),
    Endpoint("POST monolithic upload", "push", 201, post_monolithic),
    Endpoint("POST mount from A's repo", "push", 201, mount("a")),
    Endpoint("POST mount from B's repo", "push", 202, mount("b")),
    Endpoint("PATCH upload session", "push", 202, upload_session("PATCH")),
    Endpoint("PUT upload session", "push", 201, upload_session("PUT")),
    Endpoint("GET upload session", "push", 204, upload_session("GET")),
    Endpoint("DELETE upload session", "push", 204, upload_session("DELETE")),
    Endpoint("GET tags list", "pull", 200, tags_list),
    Endpoint("GET referrers", "pull", 200, referrers),
    Endpoint("GET _catalog", "catalog", 200, catalog),
]


def expected(endpoint: Endpoint, caller: str) -> tuple[int, str | None]:
    """(status, OCI error code or None) the server must answer."""
    if caller in UNAUTHENTICATED:
        return 401, "UNAUTHORIZED"
    if endpoint.action in ("base", "catalog"):
        return endpoint.status, None
    if caller == "b_key":
        if endpoint.name == "HEAD blob":  # no body to say why: "not there", so clients go on to a refusal that says it
            return 404, "BLOB_UNKNOWN"
        return 403, "DENIED"
    if caller == "read_only" and endpoint.action != "pull":
        return 403, "DENIED"
    return endpoint.status, endpoint.a_error


# The server -------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture(scope="module", params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def matrix(request, tmp_path_factory):
    """The matrix's server; on PostgreSQL its keys are read off the reactor, as on a node of a cluster."""
    server, keys, db = await keyed_server(tmp_path_factory.mktemp("matrix"), request.param, request,
                                          auth_failure_limit=10**9)
    ctx = Ctx(server, keys)
    # B has a repository too, so the catalog must leave something out
    await push_blob(server, f"{keys.b}/own", b"B's own blob", keys.b_key)
    yield ctx
    await server.service.stopService()
    if db is not None:
        db.close()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
@pytest_twisted.ensureDeferred
async def test_matrix(matrix, endpoint, caller):
    ctx = matrix
    ctx.caller = caller
    prepared = await endpoint.prepare(ctx)
    credentials = authorization(ctx.keys, caller)
    response, body = await ctx.server.request(
        prepared.method, prepared.path, body=prepared.body, headers={**prepared.headers, **auth(credentials)})
    status, code = expected(endpoint, caller)
    assert response.code == status, (response.code, body)
    if prepared.method == "HEAD":
        assert body == b""
    elif code is not None:
        assert error_of(body)["code"] == code
    if status == 401:
        assert header(response, "WWW-Authenticate") == BASIC_CHALLENGE
        if prepared.method != "HEAD":
            assert MESSAGES[caller] in error_of(body)["message"]
    else:
        assert header(response, "WWW-Authenticate") is None
    if credentials is not None:
        assert credentials.split(" ", 1)[1].encode() not in body  # never echoed
    if prepared.after is not None:
        await prepared.after(ctx, status < 300, response, body)


# Around the matrix -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Basic",
        "Basic    ",
        "Basic !!!",
        "Basic " + "a2V5b25seQ==",  # "keyonly": no colon
        "Basic " + "S0VZOg==",  # "KEY:" and an empty key
        "Basic " + "S0VZOm5vdC1hLWtleQ==",  # "KEY:not-a-key"
        "Digest username=KEY",
        "Bearer nonsense",
        "Bearer izt_eyJrIjoiMDAwMCJ9.c2lnbmF0dXJl",  # a token, but the service is off
        "izr_0123456789abcdef_" + "A" * 43,  # a key with no scheme
        "Basic " + "x" * 8000,  # long, but under twisted.web's 16 KiB header cap
    ],
    ids=lambda v: v[:40],
)
@pytest_twisted.ensureDeferred
async def test_malformed_authorization_is_a_401(matrix, value):
    response, body = await matrix.server.request("GET", f"/v2/{matrix.keys.a}/x/tags/list", headers=auth(value))
    assert response.code == 401, body
    assert error_of(body)["code"] == "UNAUTHORIZED"
    expected = BEARER_INVALID if value.startswith("Bearer ") else BASIC_CHALLENGE
    assert header(response, "WWW-Authenticate") == expected


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
@pytest_twisted.ensureDeferred
async def test_scheme_is_case_insensitive(matrix, scheme):
    value = basic(matrix.keys.a_key).replace("Basic", scheme)
    response, _ = await matrix.server.request("GET", "/v2/", headers=auth(value))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_raw_key_is_accepted_as_bearer(matrix):
    keys = matrix.keys
    repo = matrix.repo()
    digest = digest_of(b"bearer push")
    response, _ = await matrix.server.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=b"bearer push", headers=auth(bearer(keys.a_key)))
    assert response.code == 201
    response, _ = await matrix.server.request("GET", f"/v2/{repo}/blobs/{digest}", headers=auth(bearer(keys.b_key)))
    assert response.code == 403
    response, _ = await matrix.server.request("GET", "/v2/", headers=auth(bearer(keys.a_revoked)))
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_token_endpoint_is_off_without_the_token_service(matrix):
    response, body = await matrix.server.request("GET", "/v2/token", headers=auth(basic(matrix.keys.a_key)))
    assert response.code == 404
    assert error_of(body)["code"] == "UNSUPPORTED"


@pytest.mark.parametrize(
    "caller, method, what",
    [
        ("b_key", "GET", "manifests/v1"),
        ("b_key", "HEAD", "manifests/v1"),
        ("b_key", "GET", "tags/list"),
        ("b_key", "GET", "blobs/" + digest_of(b"x")),
        ("b_key", "HEAD", "blobs/" + digest_of(b"x")),
        ("b_key", "DELETE", "blobs/" + digest_of(b"x")),
        ("read_only", "DELETE", "manifests/v1"),
        ("read_only", "DELETE", "blobs/" + digest_of(b"x")),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_do_not_tell_whether_a_thing_exists(matrix, caller, method, what):
    """The same 403 whether A's repository (and the manifest or blob) exists or not."""
    existing = matrix.repo()
    await push_image(matrix.server, existing, matrix.keys.a_key, existing)
    await push_blob(matrix.server, existing, b"x", matrix.keys.a_key)
    missing = matrix.repo()
    answers = []
    for repo in (existing, missing):
        response, body = await matrix.server.request(
            method, f"/v2/{repo}/{what}", headers=auth(authorization(matrix.keys, caller)))
        if method == "HEAD":
            answers.append((response.code, body))
            continue
        document = error_of(body)
        detail = {k: v for k, v in (document["detail"] or {}).items() if k != "name"}
        answers.append((response.code, document["code"], document["message"], detail))
    assert answers[0] == answers[1]
    assert answers[0][0] == (404 if (method, what[:6]) == ("HEAD", "blobs/") else 403)


@pytest_twisted.ensureDeferred
async def test_cross_mount_from_another_account_never_leaks_blob_existence(matrix):
    keys = matrix.keys
    b_repo = matrix.repo(keys.b)
    present = await push_blob(matrix.server, b_repo, b"B's secret layer", keys.b_key)
    absent = digest_of(b"nobody has this")
    target = matrix.repo()
    answers = []
    for digest, source in [(present, b_repo), (absent, b_repo), (present, f"{keys.b}/no-such-repo")]:
        response, body = await matrix.server.request(
            "POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}", headers=auth(basic(keys.a_key)))
        location = header(response, "Location")
        # the spec's "unable to mount": a new session of the target, whatever B has (OCI v1.1, end-11)
        answers.append((response.code, body, header(response, "Range"), location.rsplit("/", 1)[0]))
    assert answers == [(202, b"", "0-0", f"/v2/{target}/blobs/uploads")] * 3
    response, _ = await matrix.server.request("HEAD", f"/v2/{target}/blobs/{present}", headers=auth(basic(keys.a_key)))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_mount_without_from_never_takes_another_accounts_blob(matrix):
    """A mount with no C{from} looks only in the caller's account: a session starts (202), nothing is linked."""
    keys = matrix.keys
    digest = await push_blob(matrix.server, matrix.repo(keys.b), b"only B has this", keys.b_key)
    target = matrix.repo()
    response, _ = await matrix.server.request(
        "POST", f"/v2/{target}/blobs/uploads/?mount={digest}", headers=auth(basic(keys.a_key)))
    assert response.code == 202
    response, _ = await matrix.server.request("HEAD", f"/v2/{target}/blobs/{digest}", headers=auth(basic(keys.a_key)))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_b_cannot_mount_from_a_into_its_own_repository(matrix):
    keys = matrix.keys
    source = matrix.repo()
    digest = await push_blob(matrix.server, source, b"A's layer to steal", keys.a_key)
    target = matrix.repo(keys.b)
    response, body = await matrix.server.request(
        "POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}", headers=auth(basic(keys.b_key)))
    assert response.code == 202  # a new upload session of B's: nothing of A's is linked
    assert header(response, "Location").startswith(f"/v2/{target}/blobs/uploads/")
    response, _ = await matrix.server.request("HEAD", f"/v2/{target}/blobs/{digest}", headers=auth(basic(keys.b_key)))
    assert response.code == 404


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_b_cannot_use_an_upload_id_of_a_through_its_own_repository(matrix, method):
    """An upload id is bound to its repository: B naming A's session under B's repository finds nothing."""
    keys = matrix.keys
    a_repo = matrix.repo()
    location = await start_upload(matrix.server, a_repo, keys.a_key)
    first = b"A's first bytes"
    response, _ = await matrix.server.request("PATCH", location, body=first, headers=auth(basic(keys.a_key)))
    assert response.code == 202
    upload_id = location.rsplit("/", 1)[1]
    b_path = f"/v2/{matrix.repo(keys.b)}/blobs/uploads/{upload_id}"
    if method == "PUT":
        b_path += "?digest=" + digest_of(first)
    response, body = await matrix.server.request(method, b_path, headers=auth(basic(keys.b_key)),
                                                 body=b"B's bytes" if method == "PATCH" else None)
    assert (response.code, error_of(body)["code"]) == (404, "BLOB_UPLOAD_UNKNOWN")
    response, _ = await matrix.server.request("GET", location, headers=auth(basic(keys.a_key)))
    assert (response.code, header(response, "Range")) == (204, f"0-{len(first) - 1}")


@pytest_twisted.ensureDeferred
async def test_b_cannot_read_a_blob_of_a_through_its_own_repository(matrix):
    """Blobs are shared on disk, but a repository reads only what was pushed or mounted into it."""
    keys = matrix.keys
    digest = await push_blob(matrix.server, matrix.repo(), b"A's private layer", keys.a_key)
    b_repo = matrix.repo(keys.b)
    await push_blob(matrix.server, b_repo, b"B has a repository", keys.b_key)
    for method in ("GET", "HEAD"):
        response, body = await matrix.server.request(method, f"/v2/{b_repo}/blobs/{digest}", headers=auth(basic(keys.b_key)))
        assert response.code == 404
        if method == "GET":
            assert error_of(body)["code"] == "BLOB_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_b_cannot_claim_a_blob_of_a_by_its_digest_alone(matrix):
    """A monolithic POST or a PUT with ?digest= and no body does not link a blob someone else pushed."""
    keys = matrix.keys
    digest = await push_blob(matrix.server, matrix.repo(), b"A's layer, claimed by digest", keys.a_key)
    b_repo = matrix.repo(keys.b)
    headers = auth(basic(keys.b_key))
    response, body = await matrix.server.request("POST", f"/v2/{b_repo}/blobs/uploads/?digest={digest}", headers=headers)
    assert response.code == 400, body
    assert error_of(body)["code"] == "DIGEST_INVALID"
    location = await start_upload(matrix.server, b_repo, keys.b_key)
    response, body = await matrix.server.request("PUT", f"{location}?digest={digest}", headers=headers)
    assert (response.code, error_of(body)["code"]) == (400, "DIGEST_INVALID")
    response, _ = await matrix.server.request("HEAD", f"/v2/{b_repo}/blobs/{digest}", headers=headers)
    assert response.code == 404


# Catalog and tags, exactly --------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def small(tmp_path):
    server = await start_server(tmp_path)
    keys = Keys.make(server)
    yield server, keys
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_catalog_lists_only_the_callers_account(small):
    server, keys = small
    for name in ("zeta", "alpha/one"):
        await push_blob(server, f"{keys.a}/{name}", name.encode(), keys.a_key)
    for name in ("beta", "gamma"):
        await push_blob(server, f"{keys.b}/{name}", name.encode(), keys.b_key)
    answers = {}
    for caller, key in [("a", keys.a_key), ("ro", keys.a_ro), ("b", keys.b_key)]:
        response, body = await server.request("GET", "/v2/_catalog", headers=auth(basic(key)))
        assert response.code == 200
        answers[caller] = json.loads(body)["repositories"]
    assert answers["a"] == answers["ro"] == [f"{keys.a}/alpha/one", f"{keys.a}/zeta"]
    assert answers["b"] == [f"{keys.b}/beta", f"{keys.b}/gamma"]
    # paging never walks out of the account, whatever "last" says
    response, body = await server.request("GET", f"/v2/_catalog?n=1&last={keys.a}/alpha/one",
                                          headers=auth(basic(keys.a_key)))
    assert json.loads(body)["repositories"] == [f"{keys.a}/zeta"]
    for last in ("", "0", "z", f"{keys.a}/zeta"):
        response, body = await server.request("GET", f"/v2/_catalog?n=5&last={last}", headers=auth(basic(keys.a_key)))
        assert all(n.startswith(keys.a) for n in json.loads(body)["repositories"]), (last, body)


@pytest_twisted.ensureDeferred
async def test_tags_of_a_repository_without_tags_is_an_empty_list(small):
    server, keys = small
    untagged = f"{keys.a}/untagged"
    await push_image(server, untagged, keys.a_key, "u", tag=None)
    blobs_only = f"{keys.a}/blobs-only"
    await push_blob(server, blobs_only, b"lonely", keys.a_key)
    for repo in (untagged, blobs_only):
        for key in (keys.a_key, keys.a_ro):
            response, body = await server.request("GET", f"/v2/{repo}/tags/list", headers=auth(basic(key)))
            assert response.code == 200, body
            assert json.loads(body) == {"name": repo, "tags": []}


@pytest_twisted.ensureDeferred
async def test_tags_after_the_last_tag_is_deleted(small):
    server, keys = small
    repo = f"{keys.a}/retagged"
    await push_image(server, repo, keys.a_key, "r", tag="v1")
    response, _ = await server.request("DELETE", f"/v2/{repo}/manifests/v1", headers=auth(basic(keys.a_key)))
    assert response.code == 202
    response, body = await server.request("GET", f"/v2/{repo}/tags/list", headers=auth(basic(keys.a_key)))
    assert (response.code, json.loads(body)) == (200, {"name": repo, "tags": []})


@pytest_twisted.ensureDeferred
async def test_tags_of_a_repository_that_does_not_exist(small):
    """Decided by the server: NAME_UNKNOWN for A's key, the same DENIED as ever for B's."""
    server, keys = small
    repo = f"{keys.a}/never-pushed"
    response, body = await server.request("GET", f"/v2/{repo}/tags/list", headers=auth(basic(keys.a_key)))
    assert (response.code, error_of(body)["code"]) == (404, "NAME_UNKNOWN")
    response, body = await server.request("GET", f"/v2/{repo}/tags/list", headers=auth(basic(keys.b_key)))
    assert (response.code, error_of(body)["code"]) == (403, "DENIED")


# Revocation ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_revocation_takes_effect_on_the_next_request(small):
    server, keys = small
    repo = f"{keys.a}/app"
    headers = auth(basic(keys.a_key))
    digest = await push_blob(server, repo, b"before revocation", keys.a_key)
    location = await start_upload(server, repo, keys.a_key)
    response, _ = await server.request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers)
    assert response.code == 200
    keys.store.revoke_key(keys.a_key_id, server.service.reactor.seconds())
    for method, path in [("GET", f"/v2/{repo}/blobs/{digest}"), ("GET", "/v2/"), ("GET", location),
                         ("PATCH", location), ("GET", "/v2/_catalog")]:
        response, body = await server.request(method, path, headers=headers, body=b"x" if method == "PATCH" else None)
        assert response.code == 401, (method, path)
        assert "revoked" in error_of(body)["message"]
        assert header(response, "WWW-Authenticate") == BASIC_CHALLENGE
    # the other keys of the account are untouched
    response, _ = await server.request("GET", f"/v2/{repo}/blobs/{digest}", headers=auth(basic(keys.a_ro)))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_a_new_key_works_at_once(small):
    server, keys = small
    _, key = keys.store.create_key(keys.a, server.service.reactor.seconds(), name="fresh")
    response, _ = await server.request("GET", "/v2/", headers=auth(basic(key.reveal())))
    assert response.code == 200


# Rate limit ----------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def limited(tmp_path):
    server = await start_server(tmp_path, auth_failure_limit=3)
    keys = Keys.make(server)
    yield server, keys
    await server.service.stopService()


async def _assert_blocked(server, keys, method="GET", path="/v2/", body=None):
    response, content = await server.request(method, path, body=body, headers=auth(basic(unknown_key())))
    assert response.code == 429, content
    assert response.phrase == b"Too Many Requests"  # (twisted.web's table has no 429: "Unknown Status")
    assert error_of(content)["code"] == "TOOMANYREQUESTS"
    retry_after = int(header(response, "Retry-After"))
    assert 1 <= retry_after <= 60


@pytest_twisted.ensureDeferred
async def test_fourth_failure_is_429_with_retry_after(limited):
    server, keys = limited
    for _ in range(3):
        response, _ = await server.request("GET", "/v2/", headers=auth(basic(unknown_key())))
        assert response.code == 401
    await _assert_blocked(server, keys)
    # a valid key is never refused for the failures of others from the same address
    response, body = await server.request("GET", "/v2/", headers=auth(basic(keys.a_key)))
    assert response.code == 200
    # and anonymous requests are still just asked to log in (docker login starts with one)
    response, _ = await server.request("GET", "/v2/")
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_guessing_one_key_is_braked_for_that_key_from_that_address(limited):
    """Wrong secrets for one key id: that key id is refused from there, before its secret is checked."""
    server, keys = limited
    for _ in range(3):
        response, _ = await server.request("GET", "/v2/", headers=auth(basic(other_secret(keys.a_key))))
        assert response.code == 401
    response, content = await server.request("GET", "/v2/", headers=auth(basic(keys.a_key)))
    assert response.code == 429 and "with this key" in error_of(content)["message"]
    for other in (keys.a_ro, keys.b_key):
        response, _ = await server.request("GET", "/v2/", headers=auth(basic(other)))
        assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_requests_without_credentials_do_not_count(limited):
    server, keys = limited
    for _ in range(6):
        response, _ = await server.request("GET", "/v2/")
        assert response.code == 401
    response, _ = await server.request("GET", "/v2/", headers=auth(basic(keys.a_key)))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_successes_and_refusals_do_not_count(limited):
    """Only failed authentication counts: a 403 (authenticated, not allowed) is no guess."""
    server, keys = limited
    for _ in range(5):
        response, _ = await server.request("GET", f"/v2/{keys.a}/x/tags/list", headers=auth(basic(keys.b_key)))
        assert response.code == 403
        response, _ = await server.request("GET", "/v2/", headers=auth(basic(keys.a_key)))
        assert response.code == 200


@pytest.mark.parametrize("kind", ["PATCH", "PUT", "POST monolithic"])
@pytest_twisted.ensureDeferred
async def test_a_failed_upload_with_a_body_counts_once(limited, kind):
    """The early check when the body starts and the handler's check are one failure, not two."""
    server, keys = limited
    repo = f"{keys.a}/app"
    location = await start_upload(server, repo, keys.a_key)
    data = b"x" * 1000
    digest = digest_of(data)
    method, path = {
        "PATCH": ("PATCH", location),
        "PUT": ("PUT", f"{location}?digest={digest}"),
        "POST monolithic": ("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}"),
    }[kind]
    for attempt in range(3):
        response, body = await server.request(method, path, body=data, headers=auth(basic(unknown_key())))
        assert response.code == 401, (attempt, response.code, body)
    await _assert_blocked(server, keys, method, path, data)
    # the refused requests wrote nothing (asked of the registry: the address is blocked)
    assert (await server.registry.upload(Repository.parse(repo), location.rsplit("/", 1)[1])).offset == 0
    assert server.registry.index.blob_size(repo, Digest.parse(digest)) is None


@pytest_twisted.ensureDeferred
async def test_the_token_endpoint_counts_failures_too(tmp_path):
    server = await start_server(tmp_path, auth_failure_limit=3, token_service=True)
    try:
        for _ in range(3):
            response, _ = await server.request("GET", "/v2/token", headers=auth(basic(unknown_key())))
            assert response.code == 401
        response, body = await server.request("GET", "/v2/token", headers=auth(basic(unknown_key())))
        assert response.code == 429
        assert header(response, "Retry-After") is not None
        response, _ = await server.request("GET", "/v2/", headers=auth(basic(unknown_key())))
        assert response.code == 429
    finally:
        await server.service.stopService()
