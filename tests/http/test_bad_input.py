"""
Classes of bad input a client can send: each gets a JSON OCI error with a
4xx status, never a 500, and never a traceback in the log.
"""

from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.http.conftest import ACCOUNT, OTHER_ACCOUNT, start_server
from tests.http.helpers import (
    OCI_MANIFEST,
    digest_of,
    dumps,
    image_manifest,
    parse_raw,
    push_blob,
    put_manifest,
    raw_answer,
    repo,
)

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

NAME = repo("app")


@pytest.fixture
def no_tracebacks():
    """Fails the test if anything is logged with a traceback (log.failure) while it runs."""
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)
    assert not failures, [str(e.get("log_failure")) for e in failures][:3]


async def _raw(server, method: bytes, path: bytes, headers: bytes = b"Host: localhost\r\n", body: bytes = b""):
    head = method + b" " + path + b" HTTP/1.1\r\n" + headers + b"Connection: close\r\n"
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return parse_raw(await raw_answer(server, head + b"\r\n" + body, head=method == b"HEAD"))


def _oci_error(status: int, headers: dict, body: bytes, method: bytes = b"GET") -> str:
    assert 400 <= status < 500, (status, body[:300])
    if method == b"HEAD":
        return ""
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    error = json.loads(body)["errors"][0]
    assert set(error) == {"code", "message", "detail"}
    return error["code"]


#: names of the Host syntax (RFC 3986 3.2.2 reg-name) that IDNA cannot encode, or no DNS name could be
HOSTS = [b"a" * 64 + b".example", b"a..b", b"-..-", b"." * 300, b"xn--a", b"", b"[fe80::1%25eth0]:5000", b"x:"]
#: not host[:port] at all: RFC 9112 3.2, a 400
BAD_HOSTS = [b"a b", b"\xff", b"xn--\xff", b"x:-1", b"[::1", b"[::1]x", b"x:80:80", b"a/b", b"user@host", b"a\x01b"]


@pytest_twisted.ensureDeferred
async def test_a_malformed_host_is_no_500(server, no_tracebacks):
    for host in HOSTS:
        status, _, body = await _raw(server, b"GET", b"/v2/", b"Host: " + host + b"\r\n")
        assert status == 200, (host, body)
        status, headers, body = await _raw(server, b"GET", f"/v2/{NAME}/tags/list".encode(), b"Host: " + host + b"\r\n")
        assert _oci_error(status, headers, body) == "NAME_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_a_host_that_is_not_host_and_port_is_a_400(server, no_tracebacks):
    """RFC 9112 3.2: a Host header with an invalid value is a 400 (with a body too: refused at the headers)."""
    for host in BAD_HOSTS:
        for method, body in ((b"GET", b""), (b"PUT", b"{}")):
            path = b"/v2/" if method == b"GET" else f"/v2/{NAME}/manifests/v1".encode()
            status, headers, content = await _raw(server, method, path, b"Host: " + host + b"\r\n", body=body)
            assert (status, _oci_error(status, headers, content)) == (400, "UNSUPPORTED"), (host, content[:200])
            assert "not a host[:port]" in json.loads(content)["errors"][0]["message"], host
    # an absolute-form target's host likewise, whatever the Host header says
    for target in (b"http://[::1/v2/", b"http://a%2x/v2/", b"http://x:-1/v2/", b"https://user@[::1/v2/"):
        status, headers, content = await _raw(server, b"GET", target)
        assert (status, _oci_error(status, headers, content)) == (400, "UNSUPPORTED"), (target, content[:200])
        assert "not a host[:port]" in json.loads(content)["errors"][0]["message"], target
    status, _, _ = await _raw(server, b"GET", b"http://[::1]:5000/v2/")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_an_http_1_0_request_needs_no_host(server, no_tracebacks):
    """RFC 9112 3.2 asks a Host of HTTP/1.1 requests only: an HTTP/1.0 client's request without one is served."""
    status, _, body = parse_raw(await raw_answer(server, b"GET /v2/ HTTP/1.0\r\n\r\n"))
    assert (status, body) == (200, b"{}")
    status, headers, content = await _raw(server, b"GET", b"/v2/", b"")
    assert status == 400 and "needs a Host header" in content.decode()


EMPTY_SEGMENTS = [
    b"/v2//x", b"/v2//tags/list", b"/v2///", b"/v2//manifests/v1", b"/v2//blobs/uploads/",
    f"/v2/{ACCOUNT}//app/tags/list".encode(), f"/v2/{ACCOUNT}/app//manifests/v1".encode(),
    f"/v2/{ACCOUNT}/app/manifests/".encode(), f"/v2/{ACCOUNT}/app/blobs/".encode(), b"/v2/_catalog/",
]


@pytest_twisted.ensureDeferred
async def test_empty_name_segments_are_4xx(server, no_tracebacks):
    for path in EMPTY_SEGMENTS:
        for method in (b"GET", b"HEAD", b"PUT", b"POST", b"PATCH", b"DELETE"):
            body = b"{}" if method in (b"PUT", b"POST", b"PATCH") else b""
            status, headers, content = await _raw(server, method, path, body=body)
            code = _oci_error(status, headers, content, method)
            assert code in ("", "NAME_INVALID", "UNSUPPORTED", "DIGEST_INVALID"), (method, path, code)


@pytest_twisted.ensureDeferred
async def test_keys_from_the_longest_names_and_sha512_digests_fit(server, no_tracebacks):
    """A 255-character repository name, sha512 subject and referrer: the referrers key is bounded by design."""
    name = f"{ACCOUNT}/" + "a" * (255 - 33)
    config, layer = b'{"os":"linux"}', b"layer"
    for blob in (config, layer):
        await push_blob(server, name, blob, "sha512")
    document = json.loads(image_manifest(config, (layer,)))
    for d, data in ((document["config"], config), (document["layers"][0], layer)):
        d["digest"] = digest_of(data, "sha512")
    subject = dumps(document)
    response, _ = await put_manifest(server, name, digest_of(subject, "sha512"), subject)
    assert response.code == 201
    referrer_doc = dict(document, subject={"mediaType": OCI_MANIFEST, "digest": digest_of(subject, "sha512"),
                                           "size": len(subject)}, artifactType="application/x-test")
    referrer = dumps(referrer_doc)
    response, _ = await put_manifest(server, name, digest_of(referrer, "sha512"), referrer)
    assert response.code == 201
    response, body = await server.request("GET", f"/v2/{name}/referrers/{digest_of(subject, 'sha512')}")
    assert response.code == 200
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [digest_of(referrer, "sha512")]
    response, _ = await server.request("DELETE", f"/v2/{name}/manifests/{digest_of(referrer, 'sha512')}")
    assert response.code == 202
    response, body = await server.request("GET", f"/v2/{name}/referrers/{digest_of(subject, 'sha512')}")
    assert json.loads(body)["manifests"] == []


@pytest.mark.parametrize("path", [
    f"/v2/{NAME}/tags/list?n=1&last=" + "z" * 10000,
    "/v2/_catalog?n=1&last=" + "z" * 10000,
    f"/v2/{NAME}/blobs/uploads/" + "0" * 600,
])
@pytest_twisted.ensureDeferred
async def test_long_values_from_the_request_never_reach_lmdb_unbounded(server, no_tracebacks, path):
    await push_blob(server, NAME, b"x")
    response, body = await server.request("GET", path)
    assert response.code in (200, 404), body[:300]


@pytest_twisted.ensureDeferred
async def test_pagination_after_a_long_last_is_exact(server):
    config, layer = b'{"os":"linux"}', b"layer"
    for blob in (config, layer):
        await push_blob(server, NAME, blob)
    data = image_manifest(config, (layer,))
    for tag in ("a", "b" * 128, "c"):
        response, _ = await put_manifest(server, NAME, tag, data)
        assert response.code == 201
    response, body = await server.request("GET", f"/v2/{NAME}/tags/list?n=10&last=" + "b" * 128 + "z" * 1000)
    assert json.loads(body)["tags"] == ["c"]


@pytest.mark.parametrize("data", [
    '{"schemaVersion": 2}'.encode("utf-16"),
    '{"schemaVersion": 2}'.encode("utf-32"),
    b'\xef\xbb\xbf{"schemaVersion": 2}',
    b'{"schemaVersion": 2, "x": NaN}',
    b'{"schemaVersion": 2, "x": -Infinity}',
    b'{"schemaVersion": 2, "annotations": {"a": "\\ud800"}}',
    b'{"schemaVersion": 2, "annotations": {"\\udfff": "a"}}',
    b'{"schemaVersion": 2, "x": "\xff"}',
])
@pytest_twisted.ensureDeferred
async def test_a_manifest_that_is_not_utf8_json_is_refused(server, no_tracebacks, data):
    response, body = await put_manifest(server, NAME, "v1", data)
    assert response.code == 400 and json.loads(body)["errors"][0]["code"] == "MANIFEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_open_upload_sessions_are_capped_per_account(tmp_path, no_tracebacks):
    from tests.helpers.openguard import OpenGuard

    server = await start_server(tmp_path, OpenGuard(), socket=True, max_open_uploads=3)
    try:
        locations = []
        for _ in range(3):
            response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
            assert response.code == 202
            locations.append(response.headers.getRawHeaders("Location")[0])
        response, body = await server.request("POST", f"/v2/{repo('other')}/blobs/uploads/")
        error = json.loads(body)["errors"][0]
        assert response.code == 429 and error["code"] == "TOOMANYREQUESTS"
        assert "max_open_per_account" in error["message"]
        # another account is not affected; an ended session frees a place
        response, _ = await server.request("POST", f"/v2/{repo('app', OTHER_ACCOUNT)}/blobs/uploads/")
        assert response.code == 202
        response, _ = await server.request("DELETE", locations[0])
        assert response.code == 204
        response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
        assert response.code == 202
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_random_requests_get_oci_errors_not_500s(server, no_tracebacks):
    """A seeded fuzz of request lines over the route grammar: every answer is a 2xx-4xx."""
    rng = random.Random(8)
    parts = ["v2", ACCOUNT, "app", "", "manifests", "blobs", "uploads", "tags", "list", "referrers", "_catalog",
             "sha256:" + "0" * 64, "sha512:" + "0" * 12, "%ff", "%00", "..", "_izreg", "a" * 300, "UPPER", "token"]
    methods = [b"GET", b"HEAD", b"PUT", b"POST", b"PATCH", b"DELETE", b"OPTIONS"]
    for _ in range(150):
        path = "/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 7)))
        if rng.random() < 0.3:
            path += "?" + rng.choice(["n=-1", "n=99999999999", "last=%ff", "digest=x", "mount=&from=", "n=1&last="])
        method = rng.choice(methods)
        status, headers, body = await _raw(server, method, path.encode(), body=b"{}" if method in (b"PUT", b"PATCH") else b"")
        assert status < 500, (method, path, status, body[:300])


@pytest.mark.parametrize("body", [b"zz\r\n", b"3\r\nabcXY", b"-1\r\n"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_chunked_body_is_logged_as_the_400_it_got(server, no_tracebacks, body):
    """The 400 carries the request id and is the one access event of its request (not a 499 'client gone')."""
    events = []

    def observe(event):
        if event.get("log_namespace") == "izreg.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        head = (f"PUT /v2/{NAME}/manifests/v1 HTTP/1.1\r\nHost: localhost\r\n"
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        status, headers, content = parse_raw(await raw_answer(server, head + body))
        assert _oci_error(status, headers, content, b"PUT") == "UNSUPPORTED" and status == 400
        request_id = headers["x-request-id"]
        # another request on a new connection: by its answer the first connection's close was seen
        status, _, _ = await _raw(server, b"GET", b"/v2/")
        assert status == 200
    finally:
        globalLogPublisher.removeObserver(observe)
    first = [e for e in events if e["request_id"] == request_id]
    assert [(e["method"], e["status"]) for e in first] == [("PUT", 400)]


@pytest_twisted.ensureDeferred
async def test_methods_are_case_sensitive(server, no_tracebacks):
    """RFC 9110 9.1: "get" is not GET: 501, never routed as GET (nor "delete" as DELETE), with a body or without."""
    status, headers, body = await _raw(server, b"GET", f"/v2/{NAME}/tags/list".encode())
    assert _oci_error(status, headers, body) == "NAME_UNKNOWN"  # routed
    for method, path in ((b"get", f"/v2/{NAME}/tags/list"), (b"Get", f"/v2/{NAME}/manifests/v1"),
                         (b"delete", f"/v2/{NAME}/manifests/v1"), (b"head", f"/v2/{NAME}/blobs/sha256:" + "0" * 64),
                         (b"get", "/v2/"), (b"get", "/v2/_catalog"), (b"put", f"/v2/{NAME}/manifests/v1")):
        status, headers, content = await _raw(server, method, path.encode(), body=b"{}" if method == b"put" else b"")
        assert status == 501, (method, path, status, content[:200])
        assert json.loads(content)["errors"][0]["code"] == "UNSUPPORTED", (method, content[:200])


@pytest_twisted.ensureDeferred
async def test_absolute_form_targets_are_served(server, no_tracebacks):
    """RFC 9112 3.2.2: a server must accept "GET http://host/path": the path is served, the target's host is Host."""
    status, _, body = await _raw(server, b"GET", b"http://registry.example:5000/v2/", b"Host: other.example\r\n")
    assert (status, body) == (200, b"{}")
    for target in (f"HTTP://registry.example/v2/{NAME}/tags/list", f"https://user@registry.example/v2/{NAME}/tags/list?n=5"):
        status, headers, content = await _raw(server, b"GET", target.encode())
        assert _oci_error(status, headers, content) == "NAME_UNKNOWN", (target, content[:200])  # routed to the name
    # with a body: routed at the headers, before the body is read, as in origin form
    status, headers, content = await _raw(server, b"PUT", f"http://registry.example/v2/{NAME}/manifests/v1".encode(),
                                          body=b"{}")
    assert _oci_error(status, headers, content) == "MANIFEST_INVALID", content[:200]
    # the Host rules still hold: an HTTP/1.1 request needs one
    status, headers, content = await _raw(server, b"GET", b"http://registry.example/v2/", b"")
    assert status == 400, content[:200]


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_target_with_an_empty_host_is_refused(server, no_tracebacks):
    """RFC 9110 4.2.1: an http URI with an empty host is invalid (the Host header does not stand in): 400."""
    for target in (b"http:///v2/", b"https://user@/v2/", b"http://?x"):
        for method, body in ((b"GET", b""), (b"PUT", b"{}")):
            status, headers, content = await _raw(server, method, target, body=body)
            assert (status, _oci_error(status, headers, content)) == (400, "UNSUPPORTED"), (target, content[:200])
            assert "empty host" in json.loads(content)["errors"][0]["message"]
    status, headers, content = await _raw(server, b"GET", b"http:///v2/", b"")
    assert status == 400 and "needs a Host header" in content.decode()  # the Host rules first, as for any target
