"""Splitting /v2/ paths into repository and endpoint (izreg.core.routes)."""

from __future__ import annotations

import pytest

from izreg.core import routes
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import OutsideNamespaces

A = "0123456789abcdef0123456789abcdef"
DIG = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "path, endpoint, name, argument",
    [
        (f"{A}/x/manifests/v1", routes.MANIFEST, f"{A}/x", "v1"),
        (f"{A}/x/manifests/{DIG}", routes.MANIFEST, f"{A}/x", DIG),
        (f"{A}/x/y/z/manifests/latest", routes.MANIFEST, f"{A}/x/y/z", "latest"),
        # greedy: the endpoint is the last suffix that fits
        (f"{A}/x/manifests/manifests/v1", routes.MANIFEST, f"{A}/x/manifests", "v1"),
        (f"{A}/manifests/manifests/manifests/manifests", routes.MANIFEST, f"{A}/manifests/manifests", "manifests"),
        (f"{A}/x/blobs/manifests/v1", routes.MANIFEST, f"{A}/x/blobs", "v1"),
        (f"{A}/x/blobs/{DIG}", routes.BLOB, f"{A}/x", DIG),
        (f"{A}/x/blobs/blobs/{DIG}", routes.BLOB, f"{A}/x/blobs", DIG),
        (f"{A}/x/manifests/blobs/{DIG}", routes.BLOB, f"{A}/x/manifests", DIG),
        (f"{A}/x/blobs/uploads/", routes.UPLOADS, f"{A}/x", None),
        (f"{A}/x/blobs/uploads", routes.UPLOADS, f"{A}/x", None),
        (f"{A}/x/blobs/uploads/abc-123", routes.UPLOAD, f"{A}/x", "abc-123"),
        (f"{A}/blobs/blobs/uploads/u1", routes.UPLOAD, f"{A}/blobs", "u1"),
        (f"{A}/x/blobs/uploads/blobs/uploads/", routes.UPLOADS, f"{A}/x/blobs/uploads", None),
        (f"{A}/x/tags/list", routes.TAGS, f"{A}/x", None),
        (f"{A}/x/tags/list/", routes.TAGS, f"{A}/x", None),
        (f"{A}/tags/tags/list", routes.TAGS, f"{A}/tags", None),
        (f"{A}/x/referrers/{DIG}", routes.REFERRERS, f"{A}/x", DIG),
        (f"{A}/referrers/referrers/{DIG}", routes.REFERRERS, f"{A}/referrers", DIG),
        # the argument is passed on as is (its own parser validates it)
        (f"{A}/x/manifests/not a tag!", routes.MANIFEST, f"{A}/x", "not a tag!"),
        (f"{A}/x/blobs/nodigest", routes.BLOB, f"{A}/x", "nodigest"),
    ],
)
def test_match(path, endpoint, name, argument):
    route = routes.match(path)
    assert (route.endpoint, route.repository.name, route.argument) == (endpoint, name, argument)


@pytest.mark.parametrize(
    "path",
    [
        # fits an endpoint, but the name is bad: 400, not 404
        f"{A}/X/manifests/v1",
        f"{A}/a__b/manifests/v1",
        f"{A}/a--b/blobs/{DIG}",
        f"{A.upper()}/x/tags/list",
        f"{A[:-1]}/x/blobs/uploads/",
        "library/ubuntu/manifests/latest",
        "x/manifests/v1",
        f"{A}/manifests/v1",  # account alone is no repository
        f"{A}//x/manifests/v1",
        f"{A}/x//manifests/v1",
        f"{A}/{'a' * 223}/manifests/v1",  # 256-char name
    ],
)
def test_name_invalid(path):
    with pytest.raises(RegistryError) as info:
        routes.match(path)
    assert info.value.code is ErrorCode.NAME_INVALID


@pytest.mark.parametrize(
    "path",
    [
        "",
        f"{A}/x",
        f"{A}/x/",
        f"{A}/x/manifests",
        f"{A}/x/manifests/",
        f"{A}/x/manifests/v1/",
        f"{A}/x/manifests/a/b",
        f"{A}/x/blobs",
        f"{A}/x/blobs/",
        f"{A}/x/blobs/uploads/a/b",
        f"{A}/x/tags",
        f"{A}/x/tags/",
        f"{A}/x/tags/lists",
        f"{A}/x/referrers",
        f"{A}/x/referrers/",
        f"{A}/x/unknown/v1",
        "manifests/v1",
        "/manifests/v1",
        "_catalog",
    ],
)
def test_not_found(path):
    with pytest.raises(RegistryError) as info:
        routes.match(path)
    assert info.value.code is ErrorCode.NOT_FOUND
    assert info.value.code.status == 404


def test_longest_valid_name():
    name = f"{A}/{'a' * 222}"
    assert routes.match(f"{name}/tags/list").repository.name == name


@pytest.mark.parametrize(
    "path, endpoint",
    [
        ("app/manifests/v1", routes.MANIFEST),
        ("library/ubuntu/blobs/" + DIG, routes.BLOB),
        ("app/blobs/uploads/", routes.UPLOADS),
        ("app/blobs/uploads/0f0f", routes.UPLOAD),
        ("app/tags/list", routes.TAGS),
        ("app/referrers/" + DIG, routes.REFERRERS),
        ("app/_izreg/manifests", routes.BROWSE),
        (f"{A}/a__b/manifests/v1", routes.MANIFEST),
    ],
)
def test_a_name_outside_every_account_names_its_endpoint(path, endpoint):
    """So the router can authenticate the caller first and answer DENIED (izreg.http.routing)."""
    with pytest.raises(OutsideNamespaces) as info:
        routes.match(path)
    assert info.value.code is ErrorCode.NAME_INVALID
    assert info.value.endpoint == endpoint
