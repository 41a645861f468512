"""Blob reads and deletes: GET/HEAD, Range, cross-repository isolation, DELETE (end-2, end-10)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.http.helpers import (
    API_VERSION,
    content_length,
    digest_of,
    header,
    push_blob,
    push_image,
    repo,
)


@pytest.fixture
def server(any_server):
    """These routes run over every storage backend (filesystem, in-memory, S3)."""
    return any_server


DATA = bytes(range(256)) * 4  # 1024 bytes
NAME = repo("blobs/app")


@pytest_twisted.ensureDeferred
async def test_base_get_and_head(server):
    for method in ("GET", "HEAD"):
        response, body = await server.request(method, "/v2/")
        assert response.code == 200
        assert header(response, "Docker-Distribution-API-Version") == API_VERSION
        if method == "HEAD":
            assert body == b""
    response, _ = await server.request("GET", "/v2")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_get_blob_headers_and_body(server):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200
    assert body == DATA
    assert content_length(response) == str(len(DATA))
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Content-Type") == "application/octet-stream"
    assert header(response, "Accept-Ranges") == "bytes"
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest_twisted.ensureDeferred
async def test_head_blob_has_headers_and_no_body(server):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("HEAD", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200
    assert body == b""
    assert content_length(response) == str(len(DATA))
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Content-Type") == "application/octet-stream"
    assert header(response, "Accept-Ranges") == "bytes"


@pytest.mark.parametrize(
    "range_header, start, end",
    [
        ("bytes=0-", 0, 1023),
        ("bytes=-10", 1014, 1023),
        ("bytes=5-9", 5, 9),
        ("bytes=1000-5000", 1000, 1023),  # end past the size is clamped
        ("bytes=-5000", 0, 1023),  # suffix longer than the blob
        ("bytes=1023-1023", 1023, 1023),
    ],
)
@pytest_twisted.ensureDeferred
async def test_range_requests(server, range_header, start, end):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}", headers={"Range": range_header})
    assert response.code == 206
    assert body == DATA[start:end + 1]
    assert header(response, "Content-Range") == f"bytes {start}-{end}/{len(DATA)}"
    assert content_length(response) == str(end - start + 1)
    assert header(response, "Docker-Content-Digest") == digest


@pytest_twisted.ensureDeferred
async def test_head_with_range(server):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("HEAD", f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=5-9"})
    assert response.code == 206
    assert body == b""
    assert header(response, "Content-Range") == f"bytes 5-9/{len(DATA)}"
    assert content_length(response) == "5"


@pytest.mark.parametrize("range_header", ["bytes=1024-", "bytes=5000-6000"])
@pytest_twisted.ensureDeferred
async def test_range_start_beyond_size_is_416(server, range_header):
    digest = await push_blob(server, NAME, DATA)
    status, code, response = await server.error("GET", f"/v2/{NAME}/blobs/{digest}", headers={"Range": range_header})
    assert (status, code) == (416, "RANGE_INVALID")
    assert header(response, "Content-Range") == f"bytes */{len(DATA)}"
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest.mark.parametrize("range_header", ["bytes=abc", "items=0-5", "bytes=9-5", "bytes=0-1,5-6", "bytes=-", "garbage"])
@pytest_twisted.ensureDeferred
async def test_malformed_range_sends_whole_blob(server, range_header):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}", headers={"Range": range_header})
    assert response.code == 200
    assert body == DATA
    assert header(response, "Content-Range") is None


@pytest_twisted.ensureDeferred
async def test_unknown_blob_is_404(server):
    await push_blob(server, NAME, DATA)
    missing = digest_of(b"never pushed")
    status, code, response = await server.error("GET", f"/v2/{NAME}/blobs/{missing}")
    assert (status, code) == (404, "BLOB_UNKNOWN")
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    status, _, response = await server.error("HEAD", f"/v2/{NAME}/blobs/{missing}")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_blob_of_one_repository_is_not_readable_from_another(server):
    digest = await push_blob(server, repo("a"), DATA)
    for method in ("GET", "HEAD"):
        status, code, _ = await server.error(method, f"/v2/{repo('b')}/blobs/{digest}")
        assert status == 404
        status, code, _ = await server.error(method, f"/v2/{repo('a', 'f' * 32)}/blobs/{digest}")
        assert status == 404
    status, code, _ = await server.error("GET", f"/v2/{repo('b')}/blobs/{digest}")
    assert code == "BLOB_UNKNOWN"
    response, body = await server.request("GET", f"/v2/{repo('a')}/blobs/{digest}")
    assert response.code == 200 and body == DATA


@pytest_twisted.ensureDeferred
async def test_mounted_blob_is_readable(server):
    digest = await push_blob(server, repo("a"), DATA)
    response, _ = await server.request("POST", f"/v2/{repo('b')}/blobs/uploads/?mount={digest}&from={repo('a')}")
    assert response.code == 201
    response, body = await server.request("GET", f"/v2/{repo('b')}/blobs/{digest}")
    assert response.code == 200 and body == DATA


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha256" + "0" * 64,
        "sha512:" + "0" * 64,
        "sha256:" + "g" * 64,
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_digest_is_400(server, bad):
    status, code, response = await server.error("GET", f"/v2/{NAME}/blobs/{bad}")
    assert (status, code) == (400, "DIGEST_INVALID")
    status, code, _ = await server.error("DELETE", f"/v2/{NAME}/blobs/{bad}")
    assert (status, code) == (400, "DIGEST_INVALID")
    status, _, _ = await server.error("HEAD", f"/v2/{NAME}/blobs/{bad}")
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_sha512_blob(server):
    digest = await push_blob(server, NAME, DATA, "sha512")
    assert digest.startswith("sha512:") and len(digest) == 7 + 128
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and body == DATA
    assert header(response, "Docker-Content-Digest") == digest
    response, _ = await server.request("HEAD", f"/v2/{NAME}/blobs/{digest}")
    assert content_length(response) == str(len(DATA))
    # the same bytes under sha256 were never pushed
    status, code, _ = await server.error("GET", f"/v2/{NAME}/blobs/{digest_of(DATA)}")
    assert (status, code) == (404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_empty_blob(server):
    digest = await push_blob(server, NAME, b"")
    assert digest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and body == b""
    assert content_length(response) == "0"
    assert header(response, "Docker-Content-Digest") == digest
    response, body = await server.request("HEAD", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and content_length(response) == "0"


@pytest_twisted.ensureDeferred
async def test_delete_blob_then_404(server):
    digest = await push_blob(server, NAME, DATA)
    response, body = await server.request("DELETE", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 202
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    assert (body, content_length(response), header(response, "Content-Type")) == (b"", "0", None)
    status, code, _ = await server.error("GET", f"/v2/{NAME}/blobs/{digest}")
    assert (status, code) == (404, "BLOB_UNKNOWN")
    status, code, _ = await server.error("DELETE", f"/v2/{NAME}/blobs/{digest}")
    assert (status, code) == (404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_blob_only_unlinks_that_repository(server):
    digest = await push_blob(server, repo("a"), DATA)
    await push_blob(server, repo("b"), DATA)
    response, _ = await server.request("DELETE", f"/v2/{repo('a')}/blobs/{digest}")
    assert response.code == 202
    response, body = await server.request("GET", f"/v2/{repo('b')}/blobs/{digest}")
    assert response.code == 200 and body == DATA


@pytest_twisted.ensureDeferred
async def test_delete_blob_a_manifest_names_is_409_until_the_manifest_goes(server):
    """As zot: a layer or config of a manifest in the repository is not deleted (the image would break)."""
    config = b'{"architecture":"amd64","os":"linux","blobref":1}'
    manifest, _ = await push_image(server, NAME, "v1", config=config, layers=(DATA,))
    loose = await push_blob(server, NAME, b"no manifest names this")
    for blob in (digest_of(DATA), digest_of(config)):
        response, body = await server.request("DELETE", f"/v2/{NAME}/blobs/{blob}")
        assert response.code == 409
        assert header(response, "Content-Type") == "application/json"
        (error,) = json.loads(body)["errors"]
        assert error == {
            "code": "DENIED",
            "message": "the blob is part of manifest(s) in this repository that must be deleted first",
            "detail": {"digest": blob, "manifests": [manifest]},
        }
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest_of(DATA)}")
    assert response.code == 200 and body == DATA  # still there
    response, _ = await server.request("DELETE", f"/v2/{NAME}/blobs/{loose}")
    assert response.code == 202  # a blob no manifest names goes as before
    response, _ = await server.request("DELETE", f"/v2/{NAME}/manifests/{manifest}")
    assert response.code == 202
    for blob in (digest_of(DATA), digest_of(config)):
        response, _ = await server.request("DELETE", f"/v2/{NAME}/blobs/{blob}")
        assert response.code == 202


@pytest_twisted.ensureDeferred
async def test_delete_unknown_blob_is_404(server):
    status, code, _ = await server.error("DELETE", f"/v2/{NAME}/blobs/{digest_of(b'nothing')}")
    assert (status, code) == (404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_delete_blob_disabled_is_405(tmp_path):
    from tests.http.conftest import start_server
    from tests.helpers.openguard import OpenGuard

    srv = await start_server(tmp_path, OpenGuard(), delete_enabled=False)
    try:
        digest = await push_blob(srv, NAME, DATA)
        status, code, response = await srv.error("DELETE", f"/v2/{NAME}/blobs/{digest}")
        assert (status, code) == (405, "UNSUPPORTED")
        assert header(response, "Allow") == "GET, HEAD"  # RFC 9110 15.5.6: a 405 says what is allowed
        response, body = await srv.request("GET", f"/v2/{NAME}/blobs/{digest}")
        assert response.code == 200 and body == DATA
    finally:
        await srv.service.stopService()


@pytest_twisted.ensureDeferred
async def test_manifest_is_readable_as_a_blob(server):
    digest, data = await push_image(server, NAME)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and body == data
    assert header(response, "Docker-Content-Digest") == digest
    assert content_length(response) == str(len(data))
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert response.code == 206 and body == data[:10]
    response, body = await server.request("HEAD", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and body == b"" and content_length(response) == str(len(data))
    # but not from another repository
    status, code, _ = await server.error("GET", f"/v2/{repo('other')}/blobs/{digest}")
    assert (status, code) == (404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_large_blob_streams_whole(server):
    data = bytes(range(251)) * 8000  # ~2 MB: several producer rounds
    digest = await push_blob(server, NAME, data)
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}")
    assert response.code == 200 and body == data
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=1000000-"})
    assert response.code == 206 and body == data[1000000:]

