"""Manifest parsing and validation (izreg.core.manifest)."""

from __future__ import annotations

import copy
import json

import pytest

from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import EMPTY_JSON, EMPTY_JSON_DIGEST, Descriptor, parse_manifest, referrers_index

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
D1, D2, D3 = (Digest.of(x) for x in (b"one", b"two", b"three"))


def desc(media_type: str, digest: Digest, size: int, **extra) -> dict:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def image(media_type: str | None = mt.OCI_MANIFEST, **extra) -> dict:
    doc = {
        "schemaVersion": 2,
        "config": desc(CONFIG_TYPE, D1, 3),
        "layers": [desc(LAYER_TYPE, D2, 3), desc(LAYER_TYPE, D3, 5)],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(extra)
    return doc


def index(media_type: str | None = mt.OCI_INDEX, **extra) -> dict:
    doc = {
        "schemaVersion": 2,
        "manifests": [
            desc(mt.OCI_MANIFEST, D1, 100, platform={"os": "linux", "architecture": "amd64"}),
            desc(mt.OCI_MANIFEST, D2, 200),
        ],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(extra)
    return doc


def raw(doc) -> bytes:
    return json.dumps(doc).encode()


def invalid(data: bytes, content_type=None) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_manifest(data, content_type)
    assert info.value.code is ErrorCode.MANIFEST_INVALID
    assert isinstance(info.value.detail["reason"], str)
    return info.value


# -- media type: body, header, shape --------------------------------------------------


@pytest.mark.parametrize(
    "doc, content_type, expected",
    [
        (image(), None, mt.OCI_MANIFEST),
        (image(), mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (image(), f"{mt.OCI_MANIFEST}; charset=utf-8", mt.OCI_MANIFEST),
        (image(), mt.OCI_MANIFEST.upper(), mt.OCI_MANIFEST),
        (image(), mt.OCI_MANIFEST.encode(), mt.OCI_MANIFEST),
        (image(), "application/json", mt.OCI_MANIFEST),
        (image(), "application/octet-stream", mt.OCI_MANIFEST),
        (image(mt.DOCKER_MANIFEST), mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST),
        (image(mt.DOCKER_MANIFEST), None, mt.DOCKER_MANIFEST),
        (index(), mt.OCI_INDEX, mt.OCI_INDEX),
        (index(mt.DOCKER_LIST), mt.DOCKER_LIST, mt.DOCKER_LIST),
        (index(mt.DOCKER_LIST), "", mt.DOCKER_LIST),
        # no mediaType field: the header says what it is (image-spec 1.0, Helm 3.0-3.6)
        (image(None), mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (image(None), mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST),
        (index(None), mt.OCI_INDEX, mt.OCI_INDEX),
        (index(None), f"{mt.DOCKER_LIST};q=1", mt.DOCKER_LIST),
        # no mediaType and a generic header: the shape decides
        (image(None), None, mt.OCI_MANIFEST),
        (image(None), "application/json", mt.OCI_MANIFEST),
        (image(None), "text/plain", mt.OCI_MANIFEST),
        (index(None), None, mt.OCI_INDEX),
        (index(None), "application/octet-stream", mt.OCI_INDEX),
    ],
)
def test_effective_media_type(doc, content_type, expected):
    assert parse_manifest(raw(doc), content_type).media_type == expected


@pytest.mark.parametrize(
    "doc, content_type",
    [
        (image(mt.OCI_MANIFEST), mt.DOCKER_MANIFEST),
        (image(mt.DOCKER_MANIFEST), mt.OCI_MANIFEST),
        (image(mt.OCI_MANIFEST), mt.OCI_INDEX),
        (index(mt.OCI_INDEX), mt.DOCKER_LIST),
        (index(mt.DOCKER_LIST), f"{mt.OCI_INDEX}; charset=utf-8"),
    ],
)
def test_media_type_mismatch_rejected(doc, content_type):
    error = invalid(raw(doc), content_type)
    assert error.detail["mediaType"] == doc["mediaType"]


@pytest.mark.parametrize(
    "data, content_type",
    [
        (raw({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}), None),
        (raw({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}), mt.DOCKER_SCHEMA1_SIGNED),
        (raw(image(mt.DOCKER_SCHEMA1)), None),
        (raw(image(mt.DOCKER_SCHEMA1_SIGNED)), None),
        (raw(image(None)), mt.DOCKER_SCHEMA1),
        (raw(image(None)), mt.DOCKER_SCHEMA1_SIGNED),
    ],
)
def test_schema1_rejected(data, content_type):
    assert "schema 1" in invalid(data, content_type).detail["reason"]


@pytest.mark.parametrize(
    "media_type",
    [CONFIG_TYPE, "application/json", "application/vnd.oci.artifact.manifest.v1+json", mt.OCI_MANIFEST.upper()],
)
def test_unsupported_body_media_type(media_type):
    invalid(raw(image(media_type)))


def test_untyped_shapeless_document_rejected():
    invalid(raw({"schemaVersion": 2, "layers": []}), "application/json")


# -- structure -------------------------------------------------------------------


def test_oci_image_manifest():
    m = parse_manifest(raw(image(annotations={"a": "b"})), mt.OCI_MANIFEST)
    assert m.config == Descriptor(CONFIG_TYPE, D1, 3)
    assert m.layers == (Descriptor(LAYER_TYPE, D2, 3), Descriptor(LAYER_TYPE, D3, 5))
    assert m.children == ()
    assert m.subject is None
    assert not m.is_index
    assert m.annotations == {"a": "b"}
    assert m.required_blobs() == (m.config,) + m.layers


def test_image_index():
    m = parse_manifest(raw(index()), None)
    assert m.is_index
    assert m.config is None and m.layers == ()
    assert [c.digest for c in m.children] == [D1, D2]
    assert m.children[0].platform == {"os": "linux", "architecture": "amd64"}
    assert m.required_blobs() == ()
    assert m.artifact_type is None


def test_docker_list_is_an_index():
    assert parse_manifest(raw(index(mt.DOCKER_LIST)), None).is_index


def test_helm_3_0_manifest_without_media_type():
    doc = {
        "schemaVersion": 2,
        "config": desc(HELM_CONFIG, D1, 3),
        "layers": [desc("application/tar+gzip", D2, 3)],
    }
    m = parse_manifest(raw(doc), mt.OCI_MANIFEST)
    assert m.media_type == mt.OCI_MANIFEST
    assert m.artifact_type == HELM_CONFIG


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({}, CONFIG_TYPE),  # falls back to the config's media type
        ({"artifactType": "application/vnd.example.sbom"}, "application/vnd.example.sbom"),
    ],
)
def test_artifact_type(extra, expected):
    assert parse_manifest(raw(image(**extra)), None).artifact_type == expected


def test_index_artifact_type_is_kept():
    assert parse_manifest(raw(index(artifactType="application/x")), None).artifact_type == "application/x"


def test_oci_manifest_layers_may_be_absent_but_docker_needs_them():
    doc = image()
    del doc["layers"]
    assert parse_manifest(raw(doc), None).layers == ()
    docker = image(mt.DOCKER_MANIFEST)
    del docker["layers"]
    invalid(raw(docker))


def test_empty_layers_list():
    assert parse_manifest(raw(image(layers=[])), None).layers == ()


@pytest.mark.parametrize(
    "urls, foreign",
    [
        (None, False),
        ([], False),
        (["https://example.com/layer"], True),
        (["https://a", "https://b"], True),
    ],
)
def test_foreign_layers_are_not_required(urls, foreign):
    extra = {} if urls is None else {"urls": urls}
    layer = desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", D3, 7, **extra)
    m = parse_manifest(raw(image(layers=[desc(LAYER_TYPE, D2, 3), layer])), None)
    assert m.layers[1].foreign is foreign
    expected = (m.config, m.layers[0]) + (() if foreign else (m.layers[1],))
    assert m.required_blobs() == expected


def test_subject_and_referrer_descriptor():
    subject = desc(mt.OCI_MANIFEST, D3, 99)
    doc = image(subject=subject, artifactType="application/vnd.example.sig", annotations={"k": "v"})
    m = parse_manifest(raw(doc), None)
    assert m.subject == Descriptor(mt.OCI_MANIFEST, D3, 99)
    own = Digest.of(raw(doc))
    ref = m.referrer_descriptor(own, 1234)
    assert ref.to_json() == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": str(own),
        "size": 1234,
        "artifactType": "application/vnd.example.sig",
        "annotations": {"k": "v"},
    }


def test_referrer_descriptor_of_plain_image_uses_config_type():
    m = parse_manifest(raw(image(subject=desc(mt.OCI_MANIFEST, D3, 1))), None)
    assert m.referrer_descriptor(D1, 5).to_json()["artifactType"] == CONFIG_TYPE


def test_index_with_subject():
    m = parse_manifest(raw(index(subject=desc(mt.OCI_MANIFEST, D3, 1))), None)
    assert m.subject.digest == D3
    assert "artifactType" not in m.referrer_descriptor(D1, 5).to_json()


def test_null_subject_is_no_subject():
    assert parse_manifest(raw(image(subject=None)), None).subject is None


@pytest.mark.parametrize(
    "descriptor, expected",
    [
        (Descriptor(LAYER_TYPE, D1, 0), {"mediaType": LAYER_TYPE, "digest": str(D1), "size": 0}),
        (Descriptor(LAYER_TYPE, D1, 1, annotations={}), {"mediaType": LAYER_TYPE, "digest": str(D1), "size": 1}),
        (
            Descriptor(LAYER_TYPE, D1, 1, "x/y", {"a": "b"}),
            {"mediaType": LAYER_TYPE, "digest": str(D1), "size": 1, "artifactType": "x/y", "annotations": {"a": "b"}},
        ),
    ],
)
def test_descriptor_to_json(descriptor, expected):
    assert descriptor.to_json() == expected


def test_empty_json_constant():
    assert EMPTY_JSON == b"{}"
    assert str(EMPTY_JSON_DIGEST) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_referrers_index():
    entries = [Descriptor(mt.OCI_MANIFEST, D1, 1).to_json()]
    assert referrers_index(entries) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    assert referrers_index([]) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}


# -- invalid documents -------------------------------------------------------------


def _mutated(base: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(base)
    target = doc
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()

INVALID_MUTATIONS = [
    # top level
    (("schemaVersion",), _DELETE),
    (("schemaVersion",), 3),
    (("schemaVersion",), "2"),
    (("schemaVersion",), True),
    (("schemaVersion",), None),
    (("mediaType",), ""),
    (("mediaType",), 5),
    (("artifactType",), ["x"]),
    (("annotations",), ["a"]),
    (("annotations",), {"a": 1}),
    (("annotations",), "a=b"),
    (("subject",), "sha256:x"),
    (("subject",), {"mediaType": mt.OCI_MANIFEST}),
    # config
    (("config",), _DELETE),
    (("config",), None),
    (("config",), []),
    (("config",), "sha256:x"),
    (("config", "mediaType"), _DELETE),
    (("config", "mediaType"), ""),
    (("config", "digest"), _DELETE),
    (("config", "digest"), 12),
    (("config", "digest"), str(D1).upper()),
    (("config", "digest"), str(D1)[:-1]),
    (("config", "digest"), "md5:d41d8cd98f00b204e9800998ecf8427e"),
    (("config", "size"), _DELETE),
    (("config", "size"), -1),
    (("config", "size"), "3"),
    (("config", "size"), 3.5),
    (("config", "size"), 3.0),
    (("config", "size"), True),
    (("config", "size"), None),
    # layers
    (("layers",), {}),
    (("layers",), "x"),
    (("layers", 0), "sha256:x"),
    (("layers", 1, "size"), -5),
    (("layers", 1, "urls"), "https://a"),
    (("layers", 1, "urls"), [1]),
    (("layers", 1, "platform"), "linux/amd64"),
    (("layers", 1, "annotations"), {"a": None}),
    (("layers", 1, "artifactType"), 1),
]


@pytest.mark.parametrize("path, value", INVALID_MUTATIONS, ids=lambda x: repr(x) if not x is _DELETE else "delete")
def test_invalid_image(path, value):
    invalid(raw(_mutated(image(), path, value)))


@pytest.mark.parametrize(
    "path, value",
    [
        (("manifests",), _DELETE),
        (("manifests",), None),
        (("manifests",), {}),
        (("manifests", 0, "digest"), "sha256:short"),
        (("manifests", 1, "size"), -1),
        (("manifests", 0, "platform"), ["linux"]),
    ],
    ids=repr,
)
def test_invalid_index(path, value):
    invalid(raw(_mutated(index(), path, value)))


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b"\xff\xfe\x00", b"[]", b"null", b"2", b'"manifest"', b"{}"],
)
def test_not_a_manifest(data):
    invalid(data)


def test_invalid_descriptor_names_its_place():
    doc = _mutated(image(), ("layers", 1, "size"), -5)
    assert "layers[1]" in invalid(raw(doc)).detail["reason"]


def test_invalid_digest_detail_is_bounded():
    doc = _mutated(image(), ("config", "digest"), "sha256:" + "z" * 1000)
    detail = invalid(raw(doc)).detail
    assert len(detail["digest"]) == 200
