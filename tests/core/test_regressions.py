"""Regression tests for bugs found while writing the core tests (all fixed)."""

from __future__ import annotations

import json

import pytest

from izreg.core import mediatypes as mt
from izreg.core import routes
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import parse_manifest
from izreg.core.ranges import parse_content_range, parse_range

A = "0123456789abcdef0123456789abcdef"


# Bug 1: ranges.py _RANGE / _CONTENT_RANGE use \d on str, which matches every
# Unicode decimal digit; int() then converts them. RFC 9110 DIGIT is ASCII only.
# izreg.http.app._header decodes headers as UTF-8, so these reach the parser.
@pytest.mark.parametrize("header", ["bytes=\u0660-\u0663", "bytes=\uff11-\uff12", "bytes=-\u0663", "bytes=\u0969-"])
def test_range_with_non_ascii_digits_is_ignored(header):
    assert parse_range(header, 10) is None


@pytest.mark.parametrize("header", ["\u0660-\u0663", "\uff10-\uff19", "bytes \u0660-9"])
def test_content_range_with_non_ascii_digits_is_invalid(header):
    with pytest.raises(RegistryError) as info:
        parse_content_range(header)
    assert info.value.code is ErrorCode.RANGE_INVALID


# Bug 2: routes.py `(?P<uploads>blobs/uploads)/?(?P<upload>[^/]*)`: the slash is
# optional, so ".../blobs/uploadsXYZ" is read as the upload session "XYZ".
@pytest.mark.parametrize("tail", ["uploadsabc", "uploads-123", "uploadsx"])
def test_blobs_uploads_prefix_is_not_an_upload(tail):
    try:
        route = routes.match(f"{A}/x/blobs/{tail}")
    except RegistryError as e:
        assert e.code is ErrorCode.NOT_FOUND
    else:
        assert (route.endpoint, route.argument) == (routes.BLOB, tail)


# Bug 3: routes.py `(?P<name>.+)`: '.' does not match a newline, so a path that
# fits an endpoint but whose name holds a newline (URL-encoded %0A, unquoted by
# the app) is a 404 (no such route), not the 400 NAME_INVALID the module promises.
@pytest.mark.parametrize("path", [f"{A}/x\n/manifests/v1", f"{A}/x\ny/tags/list", f"\n{A}/x/blobs/uploads/"])
def test_name_with_newline_is_name_invalid(path):
    with pytest.raises(RegistryError) as info:
        routes.match(path)
    assert info.value.code is ErrorCode.NAME_INVALID


# Bug 4: manifest.py `if schema != 2 or isinstance(schema, bool)`: 2.0 == 2, so a
# float schemaVersion passes; the image-spec says it is the integer 2.
def test_float_schema_version_rejected():
    doc = {"schemaVersion": 2.0, "mediaType": mt.OCI_INDEX, "manifests": []}
    with pytest.raises(RegistryError) as info:
        parse_manifest(json.dumps(doc).encode(), mt.OCI_INDEX)
    assert info.value.code is ErrorCode.MANIFEST_INVALID


# Bug 5 (low; a judgement call): manifest.py _effective_type only compares the
# header to the body's mediaType when the header is one of the four manifest
# types, so a body saying OCI image manifest is accepted under a schema-1
# Content-Type (which is rejected when the body has no mediaType).
@pytest.mark.parametrize("content_type", [mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED])
def test_schema1_content_type_with_oci_body_rejected(content_type):
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"c")), "size": 1},
        "layers": [],
    }
    with pytest.raises(RegistryError) as info:
        parse_manifest(json.dumps(doc).encode(), content_type)
    assert info.value.code is ErrorCode.MANIFEST_INVALID
