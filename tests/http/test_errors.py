"""Error answers: invalid names, unknown routes, wrong methods, the error envelope, garbage input."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.http.helpers import (
    ACCOUNT,
    API_VERSION,
    digest_of,
    header,
    parse_raw,
    push_blob,
    push_image,
    raw_get,
    raw_http,
    repo,
    start_upload,
)

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

NAME = repo("err/app")
DIGEST = digest_of(b"some blob")
UPLOAD_ID = "00000000-0000-0000-0000-000000000000"

BAD_NAMES = [
    f"{ACCOUNT}/App",  # uppercase
    f"{ACCOUNT}/a__b",  # double underscore
    f"{ACCOUNT}/a--b",
    f"{ACCOUNT}/a/",
    f"{ACCOUNT}/-a",
    f"{ACCOUNT}//a",
    "app",  # no account
    "library/app",  # account is not hex
    f"{ACCOUNT[:31]}/app",  # 31 hex
    f"{ACCOUNT}0/app",  # 33 hex
    f"{ACCOUNT.upper()}/app",
    f"{ACCOUNT}/" + "a" * 250,  # longer than 255
    f"{ACCOUNT}",  # account only
]

ENDPOINTS = [
    ("GET", "{name}/tags/list"),
    ("GET", "{name}/manifests/latest"),
    ("HEAD", "{name}/manifests/latest"),
    ("PUT", "{name}/manifests/latest"),
    ("DELETE", "{name}/manifests/latest"),
    ("GET", "{name}/blobs/" + DIGEST),
    ("HEAD", "{name}/blobs/" + DIGEST),
    ("DELETE", "{name}/blobs/" + DIGEST),
    ("POST", "{name}/blobs/uploads/"),
    ("POST", "{name}/blobs/uploads/?digest=" + DIGEST),
    ("GET", "{name}/blobs/uploads/" + UPLOAD_ID),
    ("PATCH", "{name}/blobs/uploads/" + UPLOAD_ID),
    ("PUT", "{name}/blobs/uploads/" + UPLOAD_ID + "?digest=" + DIGEST),
    ("DELETE", "{name}/blobs/uploads/" + UPLOAD_ID),
    ("GET", "{name}/referrers/" + DIGEST),
]


def assert_envelope(body: bytes) -> dict:
    document = json.loads(body)
    assert list(document) == ["errors"]
    assert len(document["errors"]) >= 1
    for error in document["errors"]:
        assert set(error) == {"code", "message", "detail"}
        assert isinstance(error["code"], str) and error["code"] == error["code"].upper()
        assert isinstance(error["message"], str) and error["message"]
    return document["errors"][0]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest_twisted.ensureDeferred
async def test_invalid_names_are_400_name_invalid(server, name):
    for method, template in ENDPOINTS:
        body = b"body" if method in ("PUT", "PATCH", "POST") else None
        status, code, response = await server.error(method, "/v2/" + template.format(name=name), body=body)
        assert status == 400, (method, template, status)
        if method != "HEAD":
            assert code == "NAME_INVALID", (method, template, code)
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest.mark.parametrize(
    "path",
    [
        "/v1/",  # "/" leads to the browse page (tests/http/test_ui.py)
        "/v3/",
        "/v2/foo",
        "/v2/_oci",
        f"/v2/{NAME}",
        f"/v2/{NAME}/",
        f"/v2/{NAME}/unknown",
        f"/v2/{NAME}/tags",
        f"/v2/{NAME}/manifests",
        f"/v2/{NAME}/manifests/",
        f"/v2/{NAME}/blobs/",
        f"/v2/{NAME}/referrers/",
        f"/v2/{NAME}/manifests/latest/extra",
        f"/v2/{NAME}/blobs/uploads/{UPLOAD_ID}/extra",
        "/v2/tags/list",
        "/favicon.ico",
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_routes_are_404_with_oci_body(server, path):
    response, body = await server.request("GET", path)
    assert response.code == 404
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    assert_envelope(body)
    response, body = await server.request("HEAD", path)
    assert response.code == 404 and body == b""
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v2/"),
        ("PUT", "/v2/"),
        ("DELETE", "/v2/"),
        ("POST", "/v2/_catalog"),
        ("DELETE", "/v2/_catalog"),
        ("PUT", f"/v2/{NAME}/tags/list"),
        ("DELETE", f"/v2/{NAME}/tags/list"),
        ("POST", f"/v2/{NAME}/manifests/latest"),
        ("PATCH", f"/v2/{NAME}/manifests/latest"),
        ("PUT", f"/v2/{NAME}/blobs/{DIGEST}"),
        ("POST", f"/v2/{NAME}/blobs/{DIGEST}"),
        ("PATCH", f"/v2/{NAME}/blobs/{DIGEST}"),
        ("GET", f"/v2/{NAME}/blobs/uploads/"),
        ("PATCH", f"/v2/{NAME}/blobs/uploads/"),
        ("PUT", f"/v2/{NAME}/blobs/uploads/"),
        ("DELETE", f"/v2/{NAME}/blobs/uploads/"),
        ("POST", f"/v2/{NAME}/blobs/uploads/{UPLOAD_ID}"),
        ("PUT", f"/v2/{NAME}/referrers/{DIGEST}"),
        ("DELETE", f"/v2/{NAME}/referrers/{DIGEST}"),
        ("OPTIONS", "/v2/"),
        ("FOO", f"/v2/{NAME}/tags/list"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_unsupported(server, method, path):
    status, code, response = await server.error(method, path)
    assert (status, code) == (405, "UNSUPPORTED")
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    allow = header(response, "Allow")
    assert allow and method not in [m.strip() for m in allow.split(",")]


@pytest_twisted.ensureDeferred
async def test_error_responses_are_json_with_api_version(server):
    for method, path in [
        ("GET", f"/v2/{NAME}/blobs/{DIGEST}"),
        ("GET", f"/v2/{NAME}/manifests/latest"),
        ("GET", f"/v2/{NAME}/tags/list"),
        ("GET", f"/v2/{NAME}/blobs/uploads/{UPLOAD_ID}"),
        ("PUT", f"/v2/{NAME}/manifests/latest"),
    ]:
        response, body = await server.request(method, path, body=b"{}" if method == "PUT" else None)
        assert response.code >= 400
        assert header(response, "Content-Type") == "application/json"
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION
        assert_envelope(body)


@pytest_twisted.ensureDeferred
async def test_api_version_on_success_responses(server):
    location = await start_upload(server, NAME)
    digest, _ = await push_image(server, NAME)
    for method, path in [
        ("GET", "/v2/"),
        ("GET", "/v2/_catalog"),
        ("GET", f"/v2/{NAME}/tags/list"),
        ("GET", f"/v2/{NAME}/manifests/latest"),
        ("HEAD", f"/v2/{NAME}/manifests/{digest}"),
        ("GET", location),
        ("GET", f"/v2/{NAME}/referrers/{digest}"),
        ("DELETE", location),
    ]:
        response, _ = await server.request(method, path)
        assert response.code < 300, (method, path, response.code)
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION


# -- garbage -------------------------------------------------------------------------------------


GARBAGE = [
    ("GET", f"/v2/{NAME}/manifests/a%00b", None, {}),
    ("GET", f"/v2/{NAME}%00/tags/list", None, {}),
    ("GET", "/v2/%00/tags/list", None, {}),
    ("GET", f"/v2/{NAME}/blobs/sha256:%00", None, {}),
    ("GET", f"/v2/{NAME}/blobs/uploads/%00", None, {}),
    ("PATCH", f"/v2/{NAME}/blobs/uploads/%00", b"x", {}),
    ("GET", f"/v2/{NAME}/blobs/uploads/" + "a" * 2000, None, {}),
    ("PATCH", f"/v2/{NAME}/blobs/uploads/" + "a" * 2000, b"x", {}),
    ("PUT", f"/v2/{NAME}/blobs/uploads/" + "a" * 2000 + "?digest=" + DIGEST, b"x", {}),
    ("DELETE", f"/v2/{NAME}/blobs/uploads/" + "a" * 2000, None, {}),
    ("GET", f"/v2/{NAME}/manifests/" + "a" * 2000, None, {}),
    ("GET", f"/v2/{NAME}/manifests/sha256:" + "a" * 2000, None, {}),
    ("GET", f"/v2/{NAME}/tags/list?last=" + "a" * 2000, None, {}),
    ("GET", f"/v2/{NAME}/tags/list?last=%00%ff", None, {}),
    ("GET", f"/v2/{NAME}/tags/list?n=99999999999999999999999999", None, {}),
    ("GET", "/v2/_catalog?last=" + "a" * 2000, None, {}),
    ("GET", "/v2/_catalog?n=99999999999999999999999999&last=%ff", None, {}),
    ("GET", f"/v2/{NAME}/referrers/{DIGEST}?artifactType=%ff%00", None, {}),
    ("POST", f"/v2/{NAME}/blobs/uploads/?digest=%ff", b"x", {}),
    ("POST", f"/v2/{NAME}/blobs/uploads/?mount=%ff&from=%00", None, {}),
    ("POST", f"/v2/{NAME}/blobs/uploads/?mount={DIGEST}&from=" + "a" * 2000, None, {}),
    ("POST", f"/v2/{NAME}/blobs/uploads/?digest=" + "sha256:" + "0" * 5000, b"x", {}),
    ("GET", f"/v2/{NAME}/blobs/{DIGEST}", None, {"Range": "bytes=99999999999999999999999999-"}),
    ("GET", f"/v2/{NAME}/blobs/{DIGEST}", None, {"Range": "bytes=\u00e9-\u00b2"}),
    ("GET", f"/v2/{NAME}/manifests/latest", None, {"Accept": ",,;;;=,*/*;q=x," * 200}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b"{}", {"Content-Type": ";;;\x01"}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b'{"schemaVersion":2,"config":[],"layers":7}', {}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b'{"schemaVersion":2,"manifests":[{"digest":5}]}', {}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b'{"schemaVersion":2,"mediaType":7}', {}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b'{"schemaVersion":2,"subject":"x","config":{}}', {}),
    ("PUT", f"/v2/{NAME}/manifests/latest", b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            b'"config":{"mediaType":"a/b","digest":"sha256:' + b"0" * 64 + b'","size":1e400},"layers":[]}', {}),
    ("GET", "/v2/%2e%2e/%2e%2e/etc/passwd", None, {}),
    ("GET", "/v2/" + "a/" * 3000 + "tags/list", None, {}),
]


@pytest.mark.parametrize("method, path, body, headers", GARBAGE)
@pytest_twisted.ensureDeferred
async def test_garbage_never_500(server, method, path, body, headers):
    await push_blob(server, NAME, b"some blob")
    response, content = await server.request(method, path, body=body, headers=headers)
    assert response.code < 500, (response.code, content[:300])
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    if response.code >= 400 and method != "HEAD":
        assert_envelope(content)


@pytest_twisted.ensureDeferred
async def test_upload_content_range_garbage(server):
    location = await start_upload(server, NAME)
    for value in ("bytes=abc", "5-1", "-", "0-99999999999999999999999", "\u00b9-\u00b2"):
        response, content = await server.request("PATCH", location, body=b"abc", headers={"Content-Range": value})
        assert 400 <= response.code < 500, (value, response.code)
        assert_envelope(content)
    # the session survived all of it
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-0"


@pytest.mark.parametrize(
    "path",
    [b"/v2/%ff/tags/list", b"/v2/" + ACCOUNT.encode() + b"/app/manifests/%c3%28", b"/v2/\xff\xfe/tags/list"],
)
@pytest_twisted.ensureDeferred
async def test_non_utf8_path_is_a_client_error(server, path):
    status, _, _ = parse_raw(await raw_http(server, raw_get(path)))
    assert 400 <= status < 500


@pytest_twisted.ensureDeferred
async def test_huge_header_never_500(server):
    answer = await raw_http(server, raw_get(b"/v2/", extra=b"X-Big: " + b"a" * 100000 + b"\r\n"))
    if answer:  # twisted may simply drop the connection
        status, _, _ = parse_raw(answer)
        assert 400 <= status < 500
    answer = await raw_http(server, raw_get(b"/v2/", extra=b"".join(b"X-H%d: 1\r\n" % i for i in range(600))))
    if answer:
        status, _, _ = parse_raw(answer)
        assert 400 <= status < 500
    # the server is still fine
    response, _ = await server.request("GET", "/v2/")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_garbage_request_line_never_500(server):
    for request in (raw_get(b"/v2/", extra=b"Range: \x00\x00\r\n"), b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\nConnection: close\r\n\r\n", b"\x16\x03\x01\x00"):
        answer = await raw_http(server, request)
        if answer:
            status, _, _ = parse_raw(answer)
            assert 400 <= status < 500
    response, _ = await server.request("GET", "/v2/")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_percent_encoded_name_is_decoded(server):
    await push_blob(server, NAME, b"some blob")
    encoded = NAME.replace("/", "%2F")
    response, body = await server.request("GET", f"/v2/{encoded}/blobs/{DIGEST}")
    assert response.code == 200 and body == b"some blob"


@pytest.mark.parametrize(
    "path, allowed",
    [
        (f"/v2/{NAME}/tags/list", {"GET", "HEAD"}),
        (f"/v2/{NAME}/blobs/uploads/{UPLOAD_ID}", {"GET", "HEAD", "PATCH", "PUT", "DELETE"}),
        (f"/v2/{NAME}/blobs/uploads/", {"POST"}),
        (f"/v2/{NAME}/manifests/latest", {"GET", "HEAD", "PUT", "DELETE"}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_options_on_a_repository_route_allows_its_own_methods(server, path, allowed):
    """RFC 9110 15.5.6: a 405's Allow lists the target's methods; OPTIONS was told every repository route's."""
    status, code, response = await server.error("OPTIONS", path)
    assert (status, code) == (405, "UNSUPPORTED")
    assert {m.strip() for m in header(response, "Allow").split(",")} == allowed
