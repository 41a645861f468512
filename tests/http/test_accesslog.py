"""Route templates for the access log and the metrics: never a raw path."""

from __future__ import annotations

import pytest

from izreg.http.accesslog import new_request_id, route_of

NAME = "0123456789abcdef0123456789abcdef/app/x"
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("path, route, repository", [
    (f"/v2/{NAME}/manifests/v1", "/v2/{name}/manifests/{reference}", NAME),
    (f"/v2/{NAME}/manifests/{DIGEST}", "/v2/{name}/manifests/{reference}", NAME),
    (f"/v2/{NAME}/blobs/{DIGEST}", "/v2/{name}/blobs/{digest}", NAME),
    (f"/v2/{NAME}/blobs/uploads/", "/v2/{name}/blobs/uploads/", NAME),
    (f"/v2/{NAME}/blobs/uploads/0f0f", "/v2/{name}/blobs/uploads/{uuid}", NAME),
    (f"/v2/{NAME}/tags/list", "/v2/{name}/tags/list", NAME),
    (f"/v2/{NAME}/referrers/{DIGEST}", "/v2/{name}/referrers/{digest}", NAME),
    (f"/v2/{NAME}/_izreg/manifests", "/v2/{name}/_izreg/manifests", NAME),
    ("/v2/", "/v2/", None), ("/v2/_catalog", "/v2/_catalog", None), ("/readyz", "/readyz", None),
    ("/ui/app.js", "/ui/{file}", None), ("/ui/", "/ui/", None),
    ("/v2/nope", "other", None), ("/etc/passwd", "other", None), ("/v2/%ff", "other", None),
    (f"/v2/{NAME}/manifests/v1/extra", "other", None),
])
def test_route_of(path, route, repository):
    assert route_of(path.encode()) == (route, repository)


def test_request_ids():
    assert len(new_request_id(None)) == 24
    assert new_request_id(b"proxy-id-12345678") == "proxy-id-12345678"
    assert new_request_id(b"bad id\n{json}") != "bad id\n{json}"


def test_our_request_ids_are_unique():
    ids = {new_request_id(None) for _ in range(10000)}
    assert len(ids) == 10000 and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
