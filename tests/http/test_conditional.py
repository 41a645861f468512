"""Conditional GET and HEAD of blobs and manifests (RFC 9110 13): If-Match (412), If-None-Match (304), If-Range; a malformed one is 400."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.conditional import check_preconditions, not_modified, parse_precondition, range_applies
from tests.http.helpers import OCI_MANIFEST, content_length, digest_of, header, push_blob, push_image, repo

DATA = bytes(range(256)) * 4
NAME = repo("conditional/app")
TAG = '"sha256:' + "a" * 64 + '"'


@pytest.mark.parametrize(
    "value, matches",
    [
        (None, False),
        (TAG, True),
        ("*", True),
        (" * ", True),
        ("W/" + TAG, True),  # If-None-Match compares weakly
        (TAG[1:-1], True),  # a digest left unquoted: as distribution, its quoted tag
        (f'"other", {TAG[1:-1]}', True),
        (f'"other", {TAG}', True),
        (f'"other",{TAG} ', True),
        ('"other"', False),
    ],
)
def test_if_none_match(value, matches):
    expect = parse_precondition(None, None if value is None else [value])
    assert not_modified(expect, TAG[1:-1]) is matches


#: neither * nor a list of quoted entity-tags
MALFORMED = [f"{TAG}, garbage", "", f"*, {TAG}", '"unterminated', "W/" + TAG[1:-1], f"{TAG[1:-1]} x", "latest"]


@pytest.mark.parametrize("value", MALFORMED)
@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
def test_a_malformed_header_is_invalid_not_a_condition_that_fails(header, value):
    with pytest.raises(RegistryError) as info:
        parse_precondition(*(([value], None) if header == "If-Match" else (None, [value])))
    assert info.value.code is ErrorCode.PRECONDITION_INVALID and info.value.code.status == 400


@pytest.mark.parametrize(
    "value, applies",
    [
        (None, True),
        (TAG, True),
        (f" {TAG} ", True),
        ("W/" + TAG, False),  # If-Range compares strongly
        ('"other"', False),
        ("Wed, 02 Dec 2026 15:28:05 GMT", False),  # no Last-Modified: a date never matches
    ],
)
def test_if_range(value, applies):
    assert range_applies(value, TAG) is applies


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_a_blob_the_client_has_is_304(server, method):
    digest = await push_blob(server, NAME, DATA)
    for given in (f'"{digest}"', "*", f'"sha256:{"0" * 64}", "{digest}"'):
        response, body = await server.request(method, f"/v2/{NAME}/blobs/{digest}", headers={"If-None-Match": given})
        assert response.code == 304, given
        assert body == b"" and header(response, "ETag") == f'"{digest}"'
        assert header(response, "Docker-Content-Digest") == digest
    response, body = await server.request(method, f"/v2/{NAME}/blobs/{digest}",
                                          headers={"If-None-Match": f'"sha256:{"0" * 64}"'})
    assert response.code == 200 and content_length(response) == str(len(DATA))
    assert body == (DATA if method == "GET" else b"")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_a_manifest_the_client_has_is_304(server, method):
    digest, manifest = await push_image(server, NAME, "v1")
    for reference in ("v1", digest):
        response, body = await server.request(method, f"/v2/{NAME}/manifests/{reference}",
                                              headers={"If-None-Match": f'"{digest}"'})
        assert response.code == 304 and body == b""
        assert header(response, "ETag") == f'"{digest}"' and header(response, "Docker-Content-Digest") == digest
    response, body = await server.request(method, f"/v2/{NAME}/manifests/v1", headers={"If-None-Match": '"other"'})
    assert response.code == 200 and body == (manifest if method == "GET" else b"")


@pytest_twisted.ensureDeferred
async def test_a_range_under_another_if_range_is_the_whole_blob(server):
    digest = await push_blob(server, NAME, DATA)
    path = f"/v2/{NAME}/blobs/{digest}"
    response, body = await server.request("GET", path, headers={"Range": "bytes=5-9", "If-Range": f'"{digest}"'})
    assert response.code == 206 and body == DATA[5:10]
    for other in ('"sha256:' + "0" * 64 + '"', f'W/"{digest}"', "Wed, 02 Dec 2026 15:28:05 GMT"):
        response, body = await server.request("GET", path, headers={"Range": "bytes=5-9", "If-Range": other})
        assert response.code == 200 and body == DATA, other
        assert header(response, "Content-Range") is None
    # an unsatisfiable range that is not to be applied is no 416 either
    response, body = await server.request("GET", path, headers={"Range": "bytes=5000-", "If-Range": '"other"'})
    assert response.code == 200 and body == DATA
    assert digest == digest_of(DATA)


@pytest.mark.parametrize(
    "value, holds",
    [
        (None, True),
        ("*", True),
        (TAG, True),
        (f'"other", {TAG}', True),
        ("W/" + TAG, False),  # If-Match compares strongly
        ('"other"', False),
        (TAG[1:-1], True),  # unquoted, as distribution takes it
        ("sha256:" + "0" * 64, False),
    ],
)
def test_if_match(value, holds):
    expect = parse_precondition(None if value is None else [value], None)
    if holds:
        check_preconditions(expect, TAG[1:-1])
    else:
        with pytest.raises(RegistryError) as info:
            check_preconditions(expect, TAG[1:-1])
        assert info.value.code is ErrorCode.PRECONDITION_FAILED and info.value.headers == {"ETag": TAG}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_if_match_another_digest_is_412(server, method):
    """A tag fetched only while it still names the manifest the client knows; a blob likewise."""
    digest, manifest = await push_image(server, NAME, "v2")
    other = f'"sha256:{"0" * 64}"'
    response, body = await server.request(method, f"/v2/{NAME}/manifests/v2", headers={"If-Match": other})
    assert response.code == 412 and header(response, "ETag") == f'"{digest}"'
    if method == "GET":
        assert b'"UNSUPPORTED"' in body and b"If-Match" in body
    for given in (f'"{digest}"', "*", f'{other}, "{digest}"'):
        response, body = await server.request(method, f"/v2/{NAME}/manifests/v2", headers={"If-Match": given})
        assert response.code == 200 and body == (manifest if method == "GET" else b""), given
    blob = await push_blob(server, NAME, DATA)
    response, _ = await server.request(method, f"/v2/{NAME}/blobs/{blob}", headers={"If-Match": other})
    assert response.code == 412
    response, body = await server.request(method, f"/v2/{NAME}/blobs/{blob}", headers={"If-Match": f'"{blob}"'})
    assert response.code == 200 and body == (DATA if method == "GET" else b"")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_header_is_400_as_for_a_put(server, method):
    """
    A malformed If-Match was a 412 (as if the tag had moved) and a malformed If-None-Match was ignored on a
    GET or HEAD, while a PUT or DELETE answers 400: now every method answers 400 (docs/api.rst).
    """
    digest, _ = await push_image(server, NAME, "v3")
    blob = await push_blob(server, NAME, DATA)
    paths = [f"/v2/{NAME}/manifests/v3", f"/v2/{NAME}/manifests/{digest}", f"/v2/{NAME}/blobs/{blob}",
             f"/v2/{NAME}/manifests/absent"]  # 400 before the look-up, as a PUT's
    for value in ("v3", f'"{digest}", garbage', ""):  # a tag is not an entity-tag: the mistake a 412 hid
        for name in ("If-Match", "If-None-Match"):
            for path in paths:
                response, body = await server.request(method, path, headers={name: value})
                assert response.code == 400, (name, value, path)
                if method == "GET":
                    error = json.loads(body)["errors"][0]
                    assert error["code"] == "UNSUPPORTED" and error["detail"] == {"header": name, "value": value}
                    assert error["message"] == f'{name} is neither * nor a list of quoted entity-tags ("<digest>")'


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_an_unquoted_digest_is_its_entity_tag(server, method):
    """
    CNCF distribution compares If-None-Match with the digest quoted or not; a client written against it
    that sends the bare digest gets its 304 here too (and If-Match, on a pull or a tag write, alike).
    """
    digest, manifest = await push_image(server, NAME, "v4")
    blob = await push_blob(server, NAME, DATA)
    for path, named in ((f"/v2/{NAME}/manifests/v4", digest), (f"/v2/{NAME}/manifests/{digest}", digest),
                        (f"/v2/{NAME}/blobs/{blob}", blob)):
        response, body = await server.request(method, path, headers={"If-None-Match": named})
        assert response.code == 304 and body == b"", path
        response, _ = await server.request(method, path, headers={"If-Match": named})
        assert response.code == 200, path
        response, _ = await server.request(method, path, headers={"If-Match": "sha256:" + "0" * 64})
        assert response.code == 412, path
    if method == "GET":  # a guarded tag write with the bare digest of what the tag names
        put = f"/v2/{NAME}/manifests/v4"
        response, _ = await server.request("PUT", put, body=manifest, headers={"Content-Type": OCI_MANIFEST, "If-Match": digest})
        assert response.code == 201
        response, _ = await server.request("PUT", put, body=manifest, headers={"Content-Type": OCI_MANIFEST, "If-None-Match": digest})
        assert response.code == 412
