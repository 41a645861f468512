import pytest_twisted

from tests.http.conftest import ACCOUNT, header


@pytest_twisted.ensureDeferred
async def test_base_answers_with_api_version(server):
    response, body = await server.request("GET", "/v2/")
    assert response.code == 200
    assert header(response, "Docker-Distribution-API-Version") == "registry/2.0"


@pytest_twisted.ensureDeferred
async def test_monolithic_push_then_pull(server):
    data = b"hello world"
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response, _ = await server.request("POST", f"/v2/{ACCOUNT}/app/blobs/uploads/?digest={digest}", body=data)
    assert response.code == 201
    response, body = await server.request("GET", f"/v2/{ACCOUNT}/app/blobs/{digest}")
    assert response.code == 200 and body == data
    assert header(response, "Docker-Content-Digest") == digest
