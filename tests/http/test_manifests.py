"""Manifests: push, pull, validation, Accept negotiation and deletes (end-3, end-7, end-9)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.http.helpers import (
    API_VERSION,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    EMPTY_JSON_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    content_length,
    descriptor,
    digest_of,
    dumps,
    header,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    repo,
)

NAME = repo("man/app")
LINUX_AMD64 = {"os": "linux", "architecture": "amd64"}
LINUX_ARM64 = {"os": "linux", "architecture": "arm64"}


async def assert_manifest(server, name, reference, data, media_type):
    digest = digest_of(data)
    for method in ("GET", "HEAD"):
        response, body = await server.request(method, f"/v2/{name}/manifests/{reference}")
        assert response.code == 200, (method, response.code)
        assert body == (data if method == "GET" else b"")
        assert header(response, "Content-Type") == media_type
        assert header(response, "Docker-Content-Digest") == digest
        assert content_length(response) == str(len(data))
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest_twisted.ensureDeferred
async def test_put_by_tag_and_pull_by_tag_and_digest(server):
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    response, body = await put_manifest(server, NAME, "v1", data)
    digest = digest_of(data)
    assert response.code == 201
    assert header(response, "Location") == f"/v2/{NAME}/manifests/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "OCI-Subject") is None
    await assert_manifest(server, NAME, "v1", data, OCI_MANIFEST)
    await assert_manifest(server, NAME, digest, data, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_bytes_are_kept_exactly(server):
    config, layer = b"{}" + b" ", b"x"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    # odd whitespace, key order and a unicode escape: not re-serialised
    document = (
        '{\n  "schemaVersion" :2 ,"mediaType":"application/vnd.oci.image.manifest.v1+json",\t'
        f'"layers":[{json.dumps(descriptor("application/octet-stream", layer))}],'
        f'"config": {json.dumps(descriptor("application/vnd.oci.image.config.v1+json", config))},'
        '"annotations":{"note":"caf\\u00e9 \u00e9"}   }\n\n'
    ).encode()
    response, _ = await put_manifest(server, NAME, "exact", document)
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest_of(document)
    await assert_manifest(server, NAME, "exact", document, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_put_by_digest(server):
    config, layer = b'{"a":1}', b"L"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    digest = digest_of(data)
    response, _ = await put_manifest(server, NAME, digest, data)
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assert_manifest(server, NAME, digest, data, OCI_MANIFEST)
    response, body = await server.request("GET", f"/v2/{NAME}/tags/list")
    assert json.loads(body)["tags"] == []


@pytest_twisted.ensureDeferred
async def test_put_by_sha512_digest(server):
    config, layer = b'{"a":1}', b"L"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    digest = digest_of(data, "sha512")
    response, _ = await put_manifest(server, NAME, digest, data)
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Location") == f"/v2/{NAME}/manifests/{digest}"
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/{digest}")
    assert response.code == 200 and body == data
    assert header(response, "Docker-Content-Digest") == digest


@pytest_twisted.ensureDeferred
async def test_put_by_digest_mismatch_is_400(server):
    config, layer = b'{"a":1}', b"L"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    wrong = digest_of(data + b" ")
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/{wrong}", body=data,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "DIGEST_INVALID")
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/{wrong}")
    assert status == 404
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/{digest_of(data)}")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_docker_schema2_manifest(server):
    digest, data = await push_image(server, NAME, "docker", media_type=DOCKER_MANIFEST)
    await assert_manifest(server, NAME, "docker", data, DOCKER_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_manifest_without_media_type_takes_content_type(server):
    digest, data = await push_image(server, NAME, "plain-oci", media_type=None, content_type=OCI_MANIFEST)
    assert b"mediaType\": \"application/vnd.oci.image.manifest" not in data
    await assert_manifest(server, NAME, "plain-oci", data, OCI_MANIFEST)
    digest, data = await push_image(server, NAME, "plain-docker", media_type=None, content_type=DOCKER_MANIFEST,
                                    layers=(b"docker layer",))
    await assert_manifest(server, NAME, "plain-docker", data, DOCKER_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_content_type_parameters_are_ignored(server):
    digest, data = await push_image(server, NAME, "params", content_type=OCI_MANIFEST + "; charset=utf-8")
    await assert_manifest(server, NAME, "params", data, OCI_MANIFEST)


async def push_platform_images(server, name, media_type=OCI_MANIFEST):
    amd = await push_image(server, name, "amd64", config=b'{"architecture":"amd64","os":"linux"}',
                           layers=(b"amd64 layer",), media_type=media_type)
    arm = await push_image(server, name, "arm64", config=b'{"architecture":"arm64","os":"linux"}',
                           layers=(b"arm64 layer",), media_type=media_type)
    return amd, arm


@pytest.mark.parametrize("index_type, child_type", [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)])
@pytest_twisted.ensureDeferred
async def test_index_and_manifest_list(server, index_type, child_type):
    (amd_digest, amd), (arm_digest, arm) = await push_platform_images(server, NAME, child_type)
    data = index_manifest([(arm, child_type, LINUX_ARM64), (amd, child_type, LINUX_AMD64)], index_type)
    response, _ = await put_manifest(server, NAME, "multi", data, index_type)
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest_of(data)
    await assert_manifest(server, NAME, "multi", data, index_type)
    await assert_manifest(server, NAME, digest_of(data), data, index_type)


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_LIST])
@pytest_twisted.ensureDeferred
async def test_index_with_missing_child_is_400(server, index_type):
    (_, amd), _ = await push_platform_images(server, NAME)
    missing = image_manifest(b'{"never":"pushed"}', (b"nope",))
    data = index_manifest([(amd, OCI_MANIFEST, LINUX_AMD64), (missing, OCI_MANIFEST, LINUX_ARM64)], index_type)
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/multi", body=data,
                                         headers={"Content-Type": index_type})
    assert (status, code) == (400, "MANIFEST_BLOB_UNKNOWN")
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/multi")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_index_child_in_another_repository_is_unknown(server):
    (_, amd), _ = await push_platform_images(server, repo("elsewhere"))
    data = index_manifest([(amd, OCI_MANIFEST, LINUX_AMD64)])
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/multi", body=data,
                                         headers={"Content-Type": OCI_INDEX})
    assert (status, code) == (400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_artifact_with_empty_config_never_pushed(server):
    layer = b"signature payload"
    await push_blob(server, NAME, layer)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [descriptor("application/vnd.example.payload", layer)],
    }
    assert digest_of(b"{}") == EMPTY_JSON_DIGEST
    data = dumps(document)
    response, _ = await put_manifest(server, NAME, "artifact", data)
    assert response.code == 201
    await assert_manifest(server, NAME, "artifact", data, OCI_MANIFEST)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{EMPTY_JSON_DIGEST}")
    assert response.code == 200 and body == b"{}"


@pytest_twisted.ensureDeferred
async def test_empty_config_with_wrong_size_is_not_free(server):
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 3},
        "layers": [],
    }
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/x", body=dumps(document),
                                         headers={"Content-Type": OCI_MANIFEST})
    assert status == 400 and code in ("MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_missing_layer_is_400(server):
    config = b'{"a":1}'
    await push_blob(server, NAME, config)
    data = image_manifest(config, (b"never pushed",))
    status, code, response = await server.error("PUT", f"/v2/{NAME}/manifests/v1", body=data,
                                                 headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest_twisted.ensureDeferred
async def test_missing_config_is_400(server):
    layer = b"layer"
    await push_blob(server, NAME, layer)
    data = image_manifest(b'{"not":"pushed"}', (layer,))
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/v1", body=data,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_layer_of_another_repository_is_unknown(server):
    config, layer = b'{"a":1}', b"elsewhere"
    await push_blob(server, NAME, config)
    await push_blob(server, repo("other"), layer)
    data = image_manifest(config, (layer,))
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/v1", body=data,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_foreign_layer_with_urls_need_not_exist(server):
    config = b'{"a":1}'
    await push_blob(server, NAME, config)
    document = json.loads(image_manifest(config, (), media_type=DOCKER_MANIFEST))
    document["layers"] = [descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"windows base",
                                     urls=["https://example.com/layer"])]
    data = dumps(document)
    response, _ = await put_manifest(server, NAME, "foreign", data, DOCKER_MANIFEST)
    assert response.code == 201


@pytest_twisted.ensureDeferred
async def test_descriptor_size_mismatch_is_400(server):
    config, layer = b'{"a":1}', b"layer bytes"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    document = json.loads(image_manifest(config, (layer,)))
    document["layers"][0]["size"] += 1
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/v1", body=dumps(document),
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_INVALID")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{",
        b"[]",
        b'"string"',
        b"\xff\xfe{}",
        b"",
        b'{"schemaVersion": 3, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"digest": "x"}}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": {}}',
        b'{"schemaVersion": 2, "mediaType": "text/html", "config": {}}',
        b'{"schemaVersion": true}',
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_manifest_is_400(server, body):
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/bad", body=body,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_content_type_contradicting_media_type_is_400(server):
    config, layer = b'{"a":1}', b"L"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/v1", body=data,
                                         headers={"Content-Type": DOCKER_MANIFEST})
    assert (status, code) == (400, "MANIFEST_INVALID")


@pytest.mark.parametrize("content_type", [DOCKER_SCHEMA1, "application/vnd.docker.distribution.manifest.v1+json"])
@pytest_twisted.ensureDeferred
async def test_schema1_is_rejected(server, content_type):
    schema1 = dumps({"schemaVersion": 1, "name": NAME, "tag": "old", "architecture": "amd64",
                     "fsLayers": [], "history": [], "signatures": []})
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/old", body=schema1,
                                         headers={"Content-Type": content_type})
    assert (status, code) == (400, "MANIFEST_INVALID")
    with_type = dumps({"schemaVersion": 2, "mediaType": content_type, "config": {}, "layers": []})
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/old", body=with_type,
                                         headers={"Content-Type": content_type})
    assert (status, code) == (400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_large_manifest_limits(server):
    config, layer = b'{"a":1}', b"L"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    limit = 4 * 1024 * 1024
    base = image_manifest(config, (layer,), annotations={"pad": ""})
    data = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (limit - len(base)) + b'"')
    assert len(data) == limit
    response, _ = await put_manifest(server, NAME, "big", data)
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest_of(data)
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/big")
    assert response.code == 200 and body == data
    too_big = data.replace(b'"pad": "', b'"pad": "y')
    assert len(too_big) == limit + 1
    status, _, response = await server.error("PUT", f"/v2/{NAME}/manifests/toobig", body=too_big,
                                             headers={"Content-Type": OCI_MANIFEST})
    assert status == 413
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/toobig")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_manifest_limit_is_configurable(tmp_path):
    from tests.helpers.openguard import OpenGuard
    from tests.http.conftest import start_server

    srv = await start_server(tmp_path, OpenGuard(), max_manifest_size=300)
    try:
        status, _, _ = await srv.error("PUT", f"/v2/{NAME}/manifests/x", body=b"{" + b" " * 400 + b"}",
                                       headers={"Content-Type": OCI_MANIFEST})
        assert status == 413
    finally:
        await srv.service.stopService()


@pytest_twisted.ensureDeferred
async def test_subject_that_does_not_exist_is_accepted(server):
    subject = image_manifest(b'{"not":"here"}', (b"nor this",))
    subject_digest = digest_of(subject)
    layer = b"sbom"
    await push_blob(server, NAME, layer)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": [descriptor("application/spdx+json", layer)],
        "subject": descriptor(OCI_MANIFEST, subject),
    }
    data = dumps(document)
    response, _ = await put_manifest(server, NAME, digest_of(data), data)
    assert response.code == 201
    assert header(response, "OCI-Subject") == subject_digest
    await assert_manifest(server, NAME, digest_of(data), data, OCI_MANIFEST)


@pytest.mark.parametrize("tag", ["-leading-dash", ".dot", "a" * 129, "has+plus", "sp%20ace", "%00"])
@pytest_twisted.ensureDeferred
async def test_bad_tag_is_400_on_put_and_404_on_lookups(server, tag):
    digest, data = await push_image(server, NAME, "good")
    status, code, _ = await server.error("PUT", f"/v2/{NAME}/manifests/{tag}", body=data,
                                         headers={"Content-Type": OCI_MANIFEST})
    assert (status, code) == (400, "TAG_INVALID")
    # a lookup of a reference that cannot exist is a 404 (OCI conformance v1.1.1)
    for method in ("GET", "HEAD", "DELETE"):
        status, code, _ = await server.error(method, f"/v2/{NAME}/manifests/{tag}")
        assert (status, code) == (404, None if method == "HEAD" else "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("tag", ["_underscore", "A" * 128, "v1.2.3-rc_1", "UPPER"])
@pytest_twisted.ensureDeferred
async def test_good_tags(server, tag):
    digest, data = await push_image(server, NAME, tag)
    await assert_manifest(server, NAME, tag, data, OCI_MANIFEST)


@pytest.mark.parametrize("reference", ["sha256:nothex", "sha256:" + "0" * 63, "md5:" + "0" * 32])
@pytest_twisted.ensureDeferred
async def test_bad_digest_reference_is_400(server, reference):
    await push_image(server, NAME)
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/{reference}")
    assert (status, code) == (400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_unknown_tag_and_digest_are_404(server):
    await push_image(server, NAME)
    for reference in ("nope", digest_of(b"nothing")):
        status, code, response = await server.error("GET", f"/v2/{NAME}/manifests/{reference}")
        assert (status, code) == (404, "MANIFEST_UNKNOWN")
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION
        status, _, _ = await server.error("HEAD", f"/v2/{NAME}/manifests/{reference}")
        assert status == 404
        status, code, _ = await server.error("DELETE", f"/v2/{NAME}/manifests/{reference}")
        assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_unknown_repository_is_404_name_unknown(server):
    for reference in ("latest", digest_of(b"nothing")):
        status, code, _ = await server.error("GET", f"/v2/{repo('never')}/manifests/{reference}")
        assert (status, code) == (404, "NAME_UNKNOWN")
        status, code, _ = await server.error("DELETE", f"/v2/{repo('never')}/manifests/{reference}")
        assert (status, code) == (404, "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_manifest_of_one_repository_is_not_in_another(server):
    digest, _ = await push_image(server, NAME)
    await push_image(server, repo("other"), "x", layers=(b"other",))
    status, code, _ = await server.error("GET", f"/v2/{repo('other')}/manifests/{digest}")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")
    status, code, _ = await server.error("GET", f"/v2/{repo('other')}/manifests/latest")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_retag_moves_tag(server):
    first, _ = await push_image(server, NAME, "moving", layers=(b"one",))
    second, data = await push_image(server, NAME, "moving", layers=(b"two",))
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/moving")
    assert body == data and header(response, "Docker-Content-Digest") == second
    response, _ = await server.request("GET", f"/v2/{NAME}/manifests/{first}")
    assert response.code == 200


@pytest.mark.parametrize("accept", [
    DOCKER_MANIFEST,
    f"{DOCKER_MANIFEST}, {OCI_MANIFEST}",
    f"{DOCKER_MANIFEST};q=0.9",
])
@pytest_twisted.ensureDeferred
async def test_accept_without_index_gets_linux_amd64_child(server, accept):
    (amd_digest, amd), (arm_digest, arm) = await push_platform_images(server, NAME)
    data = index_manifest([(arm, OCI_MANIFEST, LINUX_ARM64), (amd, OCI_MANIFEST, LINUX_AMD64)])
    response, _ = await put_manifest(server, NAME, "multi", data, OCI_INDEX)
    assert response.code == 201
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/multi", headers={"Accept": accept})
    assert response.code == 200
    assert body == amd
    assert header(response, "Docker-Content-Digest") == amd_digest
    assert header(response, "Content-Type") == OCI_MANIFEST
    response, _ = await server.request("HEAD", f"/v2/{NAME}/manifests/multi", headers={"Accept": accept})
    assert header(response, "Docker-Content-Digest") == amd_digest


@pytest.mark.parametrize("accept", [None, OCI_INDEX, f"{DOCKER_MANIFEST}, {OCI_INDEX}", "*/*", "application/*"])
@pytest_twisted.ensureDeferred
async def test_accept_with_index_gets_index(server, accept):
    (_, amd), (_, arm) = await push_platform_images(server, NAME)
    data = index_manifest([(arm, OCI_MANIFEST, LINUX_ARM64), (amd, OCI_MANIFEST, LINUX_AMD64)])
    await put_manifest(server, NAME, "multi", data, OCI_INDEX)
    headers = {"Accept": accept} if accept else {}
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/multi", headers=headers)
    assert response.code == 200 and body == data
    assert header(response, "Content-Type") == OCI_INDEX


@pytest_twisted.ensureDeferred
async def test_accept_without_index_and_no_amd64_child_gets_index(server):
    (_, amd), (_, arm) = await push_platform_images(server, NAME)
    data = index_manifest([(arm, OCI_MANIFEST, LINUX_ARM64)])
    await put_manifest(server, NAME, "armonly", data, OCI_INDEX)
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/armonly", headers={"Accept": DOCKER_MANIFEST})
    assert response.code == 200 and body == data


@pytest_twisted.ensureDeferred
async def test_delete_by_tag_removes_only_the_tag(server):
    digest, data = await push_image(server, NAME, "one")
    response, _ = await put_manifest(server, NAME, "two", data)
    assert response.code == 201
    response, body = await server.request("DELETE", f"/v2/{NAME}/manifests/one")
    assert response.code == 202
    # no body, said so (not an empty chunked text/html one)
    assert (body, content_length(response), header(response, "Content-Type")) == (b"", "0", None)
    status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/one")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")
    await assert_manifest(server, NAME, "two", data, OCI_MANIFEST)
    await assert_manifest(server, NAME, digest, data, OCI_MANIFEST)
    status, code, _ = await server.error("DELETE", f"/v2/{NAME}/manifests/one")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_by_digest_removes_manifest_and_tags(server):
    digest, data = await push_image(server, NAME, "one")
    await put_manifest(server, NAME, "two", data)
    other, _ = await push_image(server, NAME, "keep", layers=(b"keep",))
    response, _ = await server.request("DELETE", f"/v2/{NAME}/manifests/{digest}")
    assert response.code == 202
    for reference in ("one", "two", digest):
        status, code, _ = await server.error("GET", f"/v2/{NAME}/manifests/{reference}")
        assert (status, code) == (404, "MANIFEST_UNKNOWN")
    status, code, _ = await server.error("GET", f"/v2/{NAME}/blobs/{digest}")
    assert (status, code) == (404, "BLOB_UNKNOWN")
    response, body = await server.request("GET", f"/v2/{NAME}/tags/list")
    assert json.loads(body)["tags"] == ["keep"]
    status, code, _ = await server.error("DELETE", f"/v2/{NAME}/manifests/{digest}")
    assert (status, code) == (404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_manifest_disabled_is_405(tmp_path):
    from tests.helpers.openguard import OpenGuard
    from tests.http.conftest import start_server

    srv = await start_server(tmp_path, OpenGuard(), delete_enabled=False)
    try:
        digest, data = await push_image(srv, NAME, "one")
        for reference in ("one", digest):
            status, code, response = await srv.error("DELETE", f"/v2/{NAME}/manifests/{reference}")
            assert (status, code) == (405, "UNSUPPORTED")
            assert header(response, "Allow") == "GET, HEAD, PUT"  # RFC 9110 15.5.6: a 405 says what is allowed
            # disabled whatever the conditional headers: not a 400 for a malformed one, nor a 412
            for headers in ({"If-Match": "not quoted"}, {"If-Match": '"sha256:' + "0" * 64 + '"'}):
                status, code, _ = await srv.error("DELETE", f"/v2/{NAME}/manifests/{reference}", headers=headers)
                assert (status, code) == (405, "UNSUPPORTED"), headers
        response, body = await srv.request("GET", f"/v2/{NAME}/manifests/one")
        assert response.code == 200 and body == data
    finally:
        await srv.service.stopService()


@pytest_twisted.ensureDeferred
async def test_put_manifest_chunked_body(server):
    """A manifest body with no Content-Length (chunked transfer-encoding) is read whole."""
    from tests.http.helpers import StreamBody

    config, layer = b'{"c":1}', b"chunky"
    await push_blob(server, NAME, config)
    await push_blob(server, NAME, layer)
    data = image_manifest(config, (layer,))
    response, _ = await server.request("PUT", f"/v2/{NAME}/manifests/chunked", body=StreamBody(data[:50], data[50:]),
                                       headers={"Content-Type": OCI_MANIFEST})
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest_of(data)
    await assert_manifest(server, NAME, "chunked", data, OCI_MANIFEST)
