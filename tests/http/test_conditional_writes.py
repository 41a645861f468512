"""
Conditional manifest PUT and DELETE (RFC 9110 13.1.1, 13.1.2): If-Match and
If-None-Match guard a tag against a concurrent mover; a refused write is a
412 that stores nothing, a malformed header a 400. The race itself:
tests/storage/test_index.py (both index backends) and
tests/e2e/test_tag_preconditions.py (a real twistd izreg).
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import ANY, Precondition
from izreg.http.conditional import parse_precondition
from tests.http.helpers import (
    EMPTY_JSON_DIGEST,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    dumps,
    header,
    image_manifest,
    push_blob,
    push_image,
    repo,
)

NAME = repo("conditional-writes/app")
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.mark.parametrize(
    "if_match, if_none_match, expected",
    [
        (None, None, None),
        (["*"], None, Precondition(ANY, None)),
        ([" * "], None, Precondition(ANY, None)),
        ([f'"{D1}"'], None, Precondition(frozenset({D1}), None)),
        ([f'"{D1}", "{D2}"'], None, Precondition(frozenset({D1, D2}), None)),
        ([f'"{D1}"', f'"{D2}"'], None, Precondition(frozenset({D1, D2}), None)),  # two lines: one list
        ([f'W/"{D1}"'], None, Precondition(frozenset(), None)),  # weak: never a strong match
        ([f'W/"{D1}", "{D2}"'], None, Precondition(frozenset({D2}), None)),
        (None, ["*"], Precondition(None, ANY)),
        (None, [f'W/"{D1}"'], Precondition(None, frozenset({D1}))),  # If-None-Match compares weakly
        ([f'"{D1}"', ""], None, Precondition(frozenset({D1}), None)),  # an empty line: an empty element
        ([f', "{D1}" , ,"{D2}",'], None, Precondition(frozenset({D1, D2}), None)),  # RFC 9110 5.6.1
        (None, [f'"{D1}",'], Precondition(None, frozenset({D1}))),
        ([f'"{D1}"'], ["*"], Precondition(frozenset({D1}), ANY)),
        ([D1], None, Precondition(frozenset({D1}), None)),  # a digest left unquoted: as distribution takes it
        (None, [f'{D1}, "{D2}"'], Precondition(None, frozenset({D1, D2}))),
    ],
)
def test_parse_precondition(if_match, if_none_match, expected):
    assert parse_precondition(if_match, if_none_match) == expected


@pytest.mark.parametrize(
    "if_match, if_none_match",
    [
        (["latest"], None),  # a tag is not an entity-tag
        ([f"W/{D1}"], None),  # weak, not quoted
        ([""], None),
        (["  "], None),
        ([", ,"], None),  # only empty elements: no entity-tag to compare
        (None, [","]),
        ([f'"{D1}", garbage'], None),
        ([f'*, "{D1}"'], None),
        (['"unterminated'], None),
        (None, ["**"]),
        (None, [f"{D1} x"]),
    ],
)
def test_a_malformed_write_precondition_is_400(if_match, if_none_match):
    with pytest.raises(RegistryError) as info:
        parse_precondition(if_match, if_none_match)
    assert info.value.code is ErrorCode.PRECONDITION_INVALID and info.value.code.status == 400


async def _pushed(server, name: str, layer: bytes) -> bytes:
    """An image manifest whose blobs are in C{name}, not yet pushed."""
    config = b'{"architecture":"amd64","os":"linux"}'
    for blob in (config, layer):
        await push_blob(server, name, blob)
    return image_manifest(config, (layer,))


async def _put(server, name: str, reference: str, data: bytes, **conditions):
    headers = {"Content-Type": OCI_MANIFEST, **{k.replace("_", "-"): v for k, v in conditions.items()}}
    return await server.request("PUT", f"/v2/{name}/manifests/{reference}", body=data, headers=headers)


async def _tag(server, name: str, tag: str) -> str | None:
    response, _ = await server.request("HEAD", f"/v2/{name}/manifests/{tag}")
    return header(response, "Docker-Content-Digest") if response.code == 200 else None


@pytest_twisted.ensureDeferred
async def test_if_match_moves_a_tag_only_from_what_it_names(any_server):
    server = any_server
    first, _ = await push_image(server, NAME, "latest")
    second = await _pushed(server, NAME, b"layer-two")
    response, body = await _put(server, NAME, "latest", second, If_Match=f'"{D1}"')
    assert response.code == 412
    document = json.loads(body)["errors"][0]
    assert document["code"] == "UNSUPPORTED" and "precondition failed" in document["message"]
    assert document["detail"] == {"if_match": [D1]}
    assert header(response, "ETag") is None  # what the tag names is not told: a push-only token may not read it
    assert await _tag(server, NAME, "latest") == first
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/{digest_of(second)}")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")  # nothing stored, not even untagged
    for weak in (f'W/"{first}"', f'W/"{first}", "{D1}"'):  # RFC 9110 13.1.1: strong comparison
        response, _ = await _put(server, NAME, "latest", second, If_Match=weak)
        assert response.code == 412, weak
    response, body = await _put(server, NAME, "latest", second, If_Match=f'"{D1}", "{first}"')
    assert response.code == 201, body
    assert header(response, "ETag") == f'"{digest_of(second)}"'  # chained: the next If-Match
    assert await _tag(server, NAME, "latest") == digest_of(second)
    response, _ = await _put(server, NAME, "latest", second, If_Match=f'"{first}"')
    assert response.code == 412  # the tag moved on: a client that still thinks it names `first` is refused
    response, _ = await _put(server, NAME, "latest", second, If_Match="*")
    assert response.code == 201
    response, _ = await _put(server, NAME, "never", second, If_Match="*")
    assert response.code == 412  # `*`: only a tag that exists
    assert await _tag(server, NAME, "never") is None


@pytest_twisted.ensureDeferred
async def test_if_none_match_star_creates_a_tag_once(server):
    data = await _pushed(server, NAME, b"release")
    response, _ = await _put(server, NAME, "v1.0.0", data, If_None_Match="*")
    assert response.code == 201 and header(response, "ETag") == f'"{digest_of(data)}"'
    other = await _pushed(server, NAME, b"release, rebuilt")
    for same in (data, other):
        response, body = await _put(server, NAME, "v1.0.0", same, If_None_Match="*")
        assert response.code == 412, body
        assert json.loads(body)["errors"][0]["detail"] == {"if_none_match": "*"}
    assert await _tag(server, NAME, "v1.0.0") == digest_of(data)
    response, _ = await _put(server, NAME, "v1.0.0", other, If_None_Match=f'"{digest_of(other)}"')
    assert response.code == 201  # it names another digest than the one listed: moved


@pytest_twisted.ensureDeferred
async def test_a_refused_put_links_not_even_the_empty_config(server):
    """An artifact over the OCI empty config: the config is linked on a push, not on a refused one."""
    name = repo("conditional-writes/artifact")
    await push_image(server, name, "latest")
    layer = b"artifact layer"
    await push_blob(server, name, layer)
    artifact = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-test",
                      "config": {**descriptor("application/vnd.oci.empty.v1+json", b"{}")},
                      "layers": [descriptor("application/octet-stream", layer)]})
    response, _ = await _put(server, name, "latest", artifact, If_Match=f'"{D1}"')
    assert response.code == 412
    response, _ = await server.request("HEAD", f"/v2/{name}/blobs/{EMPTY_JSON_DIGEST}")
    assert response.code == 404
    response, _ = await _put(server, name, "latest", artifact, If_Match="*")
    assert response.code == 201
    response, _ = await server.request("HEAD", f"/v2/{name}/blobs/{EMPTY_JSON_DIGEST}")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_put_by_digest_if_none_match_star_only_if_new(server):
    data = await _pushed(server, NAME, b"by digest")
    digest = digest_of(data)
    response, _ = await _put(server, NAME, digest, data, If_None_Match="*")
    assert response.code == 201 and header(response, "ETag") == f'"{digest}"'
    response, _ = await _put(server, NAME, digest, data, If_None_Match="*")
    assert response.code == 412
    response, _ = await _put(server, NAME, digest, data, If_Match=f'"{digest}"')
    assert response.code == 201
    response, _ = await _put(server, NAME, digest, data)
    assert response.code == 201  # unconditioned: as idempotent as ever


@pytest.mark.parametrize("value", ["malformed", '"x", garbage', f'*, "{D1}"', ""])
@pytest_twisted.ensureDeferred
async def test_a_malformed_header_is_400_and_stores_nothing(server, value):
    first, _ = await push_image(server, NAME, "malformed")
    data = await _pushed(server, NAME, b"malformed")
    for name in ("If-Match", "If-None-Match"):
        status, code, response = await server.error("PUT", f"/v2/{NAME}/manifests/malformed", body=data,
                                                    headers={"Content-Type": OCI_MANIFEST, name: value})
        assert (status, code) == (400, "UNSUPPORTED"), name
        status, code, _ = await server.error("DELETE", f"/v2/{NAME}/manifests/malformed", headers={name: value})
        assert (status, code) == (400, "UNSUPPORTED"), name
    assert await _tag(server, NAME, "malformed") == first
    status, _, _ = await server.error("GET", f"/v2/{NAME}/manifests/{digest_of(data)}")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_delete_tag_if_match(server):
    first, _ = await push_image(server, NAME, "doomed")
    path = f"/v2/{NAME}/manifests/doomed"
    for refused in ({"If-Match": f'"{D1}"'}, {"If-Match": f'W/"{first}"'}, {"If-None-Match": "*"}):
        status, code, _ = await server.error("DELETE", path, headers=refused)
        assert (status, code) == (412, "UNSUPPORTED"), refused
    assert await _tag(server, NAME, "doomed") == first
    response, _ = await server.request("DELETE", path, headers={"If-Match": f'"{first}"'})
    assert response.code == 202
    assert await _tag(server, NAME, "doomed") is None
    status, code, _ = await server.error("DELETE", path, headers={"If-Match": f'"{first}"'})
    assert (status, code) == (404, "MANIFEST_UNKNOWN")  # no tag: what it would have been without the header


@pytest_twisted.ensureDeferred
async def test_delete_by_digest_if_match(server):
    name = repo("conditional-writes/by-digest")
    digest, _ = await push_image(server, name, "x")
    status, code, _ = await server.error("DELETE", f"/v2/{name}/manifests/{digest}", headers={"If-Match": f'"{D1}"'})
    assert (status, code) == (412, "UNSUPPORTED")
    response, _ = await server.request("DELETE", f"/v2/{name}/manifests/{digest}", headers={"If-Match": f'"{digest}"'})
    assert response.code == 202
