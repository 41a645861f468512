"""Media types and Accept negotiation (izreg.core.mediatypes)."""

from __future__ import annotations

import pytest

from izreg.core import mediatypes as mt


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, ""),
        ("", ""),
        (b"", ""),
        (mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (mt.OCI_MANIFEST.encode(), mt.OCI_MANIFEST),
        ("application/json; charset=utf-8", "application/json"),
        ("Application/JSON", "application/json"),
        ("  application/json  ;q=0.5", "application/json"),
        ("application/vnd.oci.image.manifest.v1+json;charset=utf-8;x=y", mt.OCI_MANIFEST),
        (b"text/plain;\xe9", "text/plain"),  # latin-1 bytes never fail to decode
        (";param=1", ""),
    ],
)
def test_base_type(value, expected):
    assert mt.base_type(value) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        ([], set()),
        ([""], set()),
        ([mt.OCI_MANIFEST], {mt.OCI_MANIFEST}),
        ([f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX}"], {mt.OCI_MANIFEST, mt.OCI_INDEX}),
        ([mt.DOCKER_MANIFEST.encode(), f"{mt.OCI_INDEX};q=0.5"], {mt.DOCKER_MANIFEST, mt.OCI_INDEX}),
        (["*/*"], {"*/*"}),
        (["application/*;q=0.8 , ,"], {"application/*"}),
        (["Application/Vnd.OCI.Image.Manifest.v1+JSON"], {mt.OCI_MANIFEST}),
        ([mt.OCI_MANIFEST, mt.OCI_MANIFEST], {mt.OCI_MANIFEST}),
    ],
)
def test_parse_accept(values, expected):
    accepted = mt.parse_accept(values)
    assert accepted == frozenset(expected)
    assert isinstance(accepted, frozenset)


@pytest.mark.parametrize(
    "media_type, accepted, expected",
    [
        (mt.OCI_MANIFEST, frozenset(), True),  # no Accept: anything goes
        (mt.OCI_MANIFEST, {"*/*"}, True),
        (mt.OCI_MANIFEST, {mt.OCI_MANIFEST}, True),
        (mt.OCI_MANIFEST, {"application/*"}, True),
        (mt.OCI_MANIFEST, {mt.DOCKER_MANIFEST}, False),
        (mt.OCI_INDEX, {mt.OCI_MANIFEST, mt.DOCKER_MANIFEST}, False),
        (mt.OCI_INDEX, {mt.OCI_MANIFEST, mt.OCI_INDEX}, True),
        (mt.OCI_MANIFEST, {"text/*"}, False),
        (mt.OCI_MANIFEST, {"application/json"}, False),
    ],
)
def test_acceptable(media_type, accepted, expected):
    assert mt.acceptable(media_type, frozenset(accepted)) is expected


def test_type_sets():
    assert mt.IMAGE_TYPES == {mt.OCI_MANIFEST, mt.DOCKER_MANIFEST}
    assert mt.INDEX_TYPES == {mt.OCI_INDEX, mt.DOCKER_LIST}
    assert mt.MANIFEST_TYPES == mt.IMAGE_TYPES | mt.INDEX_TYPES
    assert not (mt.MANIFEST_TYPES & {mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED})
    assert not (mt.MANIFEST_TYPES & mt.GENERIC_TYPES)
    assert "" in mt.GENERIC_TYPES
