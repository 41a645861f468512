"""
The JSON answers izreg makes itself (errors, listings, health) end in a
newline, as CNCF distribution's do (Go's C{json.Encoder}), counted in their
Content-Length on GET and HEAD alike; ``GET /v2/`` stays distribution's C{{}};
a manifest is served as pushed, byte for byte.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from izreg.http.plain import ON_TLS_ANSWER
from tests.http.helpers import content_length, digest_of, header, parse_raw, push_image, raw_http, repo

pytestmark = pytest.mark.socket  # the connection-level refusals need a real connection

NAME = repo("newline/app")


def assert_one_json_line(body: bytes) -> None:
    assert body.endswith(b"}\n") and body.count(b"\n") == 1, body[-40:]
    json.loads(body)


@pytest_twisted.ensureDeferred
async def test_generated_json_ends_in_a_newline_and_stored_content_does_not_change(server):
    digest, data = await push_image(server, NAME, "v1")
    assert not data.endswith(b"\n")

    answers = {
        "error": ("GET", f"/v2/{NAME}/manifests/missing", 404),
        "error of a HEAD": ("HEAD", f"/v2/{NAME}/manifests/missing", 404),
        "tags list": ("GET", f"/v2/{NAME}/tags/list", 200),
        "tags list HEAD": ("HEAD", f"/v2/{NAME}/tags/list", 200),
        "catalog page": ("GET", "/v2/_catalog?n=1", 200),
        "referrers": ("GET", f"/v2/{NAME}/referrers/{digest}", 200),
        "healthz": ("GET", "/healthz", 200),
        "healthz HEAD": ("HEAD", "/healthz", 200),
    }
    lengths = {}
    for what, (method, path, status) in answers.items():
        response, body = await server.request(method, path)
        assert response.code == status, (what, response.code, body)
        if method == "GET":
            assert_one_json_line(body)
            assert content_length(response) == str(len(body)), what
        else:
            assert body == b""
        lengths[method, path] = content_length(response)
    for method, path in lengths:
        if method == "HEAD":  # the same length as the GET's body, newline included
            assert lengths[method, path] == lengths["GET", path], path

    for reference in ("v1", digest):
        for method in ("GET", "HEAD"):
            response, body = await server.request(method, f"/v2/{NAME}/manifests/{reference}")
            assert response.code == 200
            assert body == (data if method == "GET" else b"")
            assert content_length(response) == str(len(data))
            assert header(response, "Docker-Content-Digest") == digest == digest_of(data)

    response, body = await server.request("GET", "/v2/")
    assert (response.code, body) == (200, b"{}")  # distribution's apiBase: no newline


@pytest_twisted.ensureDeferred
async def test_a_refusal_before_a_request_ends_in_a_newline_too(server):
    status, headers, body = parse_raw(await raw_http(server, b"GET /v2/" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n"))
    assert status == 414
    assert_one_json_line(body)
    assert headers["content-length"] == str(len(body))
    status, headers, body = parse_raw(ON_TLS_ANSWER)
    assert status == 400
    assert_one_json_line(body)
    assert headers["content-length"] == str(len(body))
