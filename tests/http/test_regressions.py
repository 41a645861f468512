"""
Regression tests for server bugs found while writing the API tests (all fixed).

1. ``?n=0`` on a non-empty tags list or catalog is a 500 (IndexError).
2. ``?n=²`` (a Unicode digit ``str.isdigit`` accepts but ``int`` does not) is a 500
   (fixed on main by 2c9c8fa; kept as a regression test).
3. A deeply nested JSON manifest body is a 500 (RecursionError escapes the parser).
4. GET/HEAD of an index *by digest* with an Accept list without index types answers
   another manifest (the linux/amd64 child) under a different digest.
5. Non-UTF-8 bytes in the path get Klein's plain-text 400, not an OCI error body.
6. A chunked (no Content-Length) PATCH whose Content-Range says more bytes than it
   carries is accepted (202) instead of 400.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.http.helpers import (
    API_VERSION,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    StreamBody,
    digest_of,
    header,
    index_manifest,
    parse_raw,
    push_image,
    put_manifest,
    raw_get,
    raw_http,
    repo,
    start_upload,
)

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

NAME = repo("bugs/app")


async def two_tags(server):
    digest, data = await push_image(server, NAME, "a")
    await put_manifest(server, NAME, "b", data)


@pytest.mark.parametrize("listing", ["tags", "catalog"])
@pytest_twisted.ensureDeferred
async def test_bug1_n_zero_is_an_empty_page_without_link(server, listing):
    """
    GET /v2/<name>/tags/list?n=0 (and /v2/_catalog?n=0) on a non-empty list.
    Expected: 200, empty list, no Link (spec end-8b). Actual: 500.
    Index.list_tags/list_repos return ([], more=True) for limit 0; the handler then
    builds the Link from tags[-1] / names[-1] (app.py list_tags, catalog -> IndexError).
    """
    await two_tags(server)
    path = f"/v2/{NAME}/tags/list?n=0" if listing == "tags" else "/v2/_catalog?n=0"
    response, body = await server.request("GET", path)
    assert response.code == 200
    assert json.loads(body)["tags" if listing == "tags" else "repositories"] == []
    assert header(response, "Link") is None


@pytest.mark.parametrize("n", ["%C2%B2", "%E2%91%A0"])  # "²", "①"
@pytest_twisted.ensureDeferred
async def test_bug2_unicode_digit_n_is_400(server, n):
    """
    GET /v2/<name>/tags/list?n=² . Expected: 400 PAGINATION_NUMBER_INVALID. Actual: 500.
    app.py _page checks n.isdigit(), which is true for "²", then int("²") raises ValueError.
    (Check with a regex ``[0-9]+`` or ``n.isascii() and n.isdigit()``.)
    """
    await two_tags(server)
    for path in (f"/v2/{NAME}/tags/list?n={n}", f"/v2/_catalog?n={n}"):
        status, code, _ = await server.error("GET", path)
        assert (status, code) == (400, "PAGINATION_NUMBER_INVALID")


@pytest_twisted.ensureDeferred
async def test_bug3_deeply_nested_manifest_is_400(server):
    """
    PUT /v2/<name>/manifests/x with body "[[[[...]]]]" (100000 levels).
    Expected: 400 MANIFEST_INVALID. Actual: 500 (RecursionError from json.loads:
    core/manifest.py parse_manifest only catches ValueError/UnicodeDecodeError).
    """
    body = b"[" * 100000 + b"]" * 100000
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/x", body=body,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_INVALID")
    nested = b'{"schemaVersion":2,"annotations":' + b'{"a":' * 50000 + b"1" + b"}" * 50001
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/y", body=nested,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_INVALID")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_bug4_index_by_digest_is_never_swapped_for_a_child(server, method):
    """
    Push an OCI index (one linux/amd64 child), then GET /v2/<name>/manifests/<index digest>
    with Accept: application/vnd.docker.distribution.manifest.v2+json.
    Expected: the index itself (its digest is what was asked for; content addressing), or
    an error; never other bytes. Actual: 200 with the child's bytes and
    Docker-Content-Digest = child digest. registry.py get_manifest applies the
    default-platform fallback for any reference; distribution does it only for tags.
    """
    amd_digest, amd = await push_image(server, NAME, "amd64")
    data = index_manifest([(amd, OCI_MANIFEST, {"os": "linux", "architecture": "amd64"})])
    response, _ = await put_manifest(server, NAME, "multi", data, OCI_INDEX)
    assert response.code == 201
    index_digest = digest_of(data)
    response, body = await server.request(method, f"/v2/{NAME}/manifests/{index_digest}",
                                          headers={"Accept": DOCKER_MANIFEST})
    if response.code == 200:
        assert header(response, "Docker-Content-Digest") == index_digest
        if method == "GET":
            assert body == data
    else:
        assert 400 <= response.code < 500


@pytest.mark.parametrize("path", [b"/v2/%ff/tags/list", b"/v2/" + NAME.encode() + b"/manifests/%ff"])
@pytest_twisted.ensureDeferred
async def test_bug5_non_utf8_path_gets_an_oci_error_body(server, path):
    """
    GET /v2/%ff/tags/list. Expected: 4xx with the OCI {"errors":[{code,message,detail}]}
    JSON body (every error body has one). Actual: 400, Content-Type text/html, body
    "Non-UTF-8 encoding in URL." (klein/_resource.py render, before any app error handler).
    """
    status, headers, body = parse_raw(await raw_http(server, raw_get(path)))
    assert 400 <= status < 500
    assert headers.get("docker-distribution-api-version") == API_VERSION
    assert headers.get("content-type") == "application/json"
    error = json.loads(body)["errors"][0]
    assert set(error) == {"code", "message", "detail"}


@pytest_twisted.ensureDeferred
async def test_bug6_chunked_patch_shorter_than_its_content_range_is_400(server):
    """
    PATCH <upload> with Content-Range: 0-99 and a chunked body (no Content-Length) of 50 bytes.
    Expected: 400 (SIZE_INVALID), the upload left at 0 bytes, as for the same request with
    Content-Length. Actual: 202 with Range: 0-49. app.py _chunk_sink compares the range
    with Content-Length only; nothing checks the bytes received against the range.
    """
    location = await start_upload(server, NAME)
    response, _ = await server.request("PATCH", location, body=StreamBody(b"x" * 50), headers={"Content-Range": "0-99"})
    assert response.code == 400
    response, _ = await server.request("GET", location)
    assert header(response, "Range") == "0-0"


@pytest.mark.parametrize("method, target, extra", [
    (b"GET", "blob", b"Range: bytes=\xff\r\n"),
    (b"HEAD", "blob", b"Range: \xff\r\n"),
    (b"PATCH", "upload", b"Content-Range: 0-\xff\r\nContent-Length: 1\r\n"),
    (b"PUT", "manifest", b"Content-Type: application/\xff\r\nContent-Length: 2\r\n"),
    (b"DELETE", "manifest", b"Izreg-Force-Delete: \xff\r\n"),
])
@pytest_twisted.ensureDeferred
async def test_bug7_non_utf8_header_values_are_client_errors(server, method, target, extra):
    """
    A header value that is not UTF-8 (Range, Content-Range, Content-Type,
    Izreg-Force-Delete). Expected: a 4xx or the request served. Actual: 500
    and a traceback (Twisted decodes str-named headers as UTF-8).
    """
    digest, _ = await push_image(server, NAME, "t7")
    paths = {
        "blob": f"/v2/{NAME}/blobs/{digest_of(b'layer-one')}",
        "upload": await start_upload(server, NAME),
        "manifest": f"/v2/{NAME}/manifests/t7",
    }
    body = {b"PATCH": b"x", b"PUT": b"{}"}.get(method, b"")
    status, _, _ = parse_raw(await raw_http(server, raw_get(paths[target].encode(), method, extra) + body))
    assert status < 500, status
