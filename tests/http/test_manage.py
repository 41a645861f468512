"""Deletes, in-use protection, audit records and the browse API over the in-process server with real keys."""

from __future__ import annotations

import json

import pytest_twisted

from izreg.storage.audit import AuditLog
from tests.http.authhelpers import Keys, bearer
from tests.http.conftest import start_server
from tests.http.helpers import push_image


class Authed:
    """The server with a key header added to every request."""

    def __init__(self, server, key: str) -> None:
        self.server, self.key = server, key

    async def request(self, method, path, body=None, headers=None, **kw):
        return await self.server.request(method, path, body, {"Authorization": bearer(self.key), **(headers or {})}, **kw)


@pytest_twisted.async_yield_fixture
async def authed(tmp_path):
    server = await start_server(tmp_path)
    keys = Keys.make(server)
    yield server, keys, Authed(server, keys.a_key)
    await server.service.stopService()


def audit(server) -> list[dict]:
    return AuditLog(server.registry.index.env).entries()


@pytest_twisted.ensureDeferred
async def test_every_delete_is_audited_with_key_id_and_address(authed):
    server, keys, a = authed
    name = f"{keys.a}/app"
    digest, _ = await push_image(a, name, "v1", layers=(b"audited-layer",))
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/v1")
    assert response.code == 202
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 202
    layer = "sha256:" + __import__("hashlib").sha256(b"audited-layer").hexdigest()
    response, _ = await a.request("DELETE", f"/v2/{name}/blobs/{layer}")
    assert response.code == 202
    entries = audit(server)
    assert (entries[0]["action"], entries[0]["target"]) == ("push-tag", f"{name}:v1")  # (#14 audits pushes too)
    entries = [e for e in entries if e["action"].startswith("delete")]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("delete-tag", f"{name}:v1"),
        ("delete-manifest", f"{name}@{digest}"),
        ("delete-blob", f"{name}@{layer}"),
    ]
    for e in entries:
        assert e["actor"] == f"key:{keys.a_key_id}" and e["account"] == keys.a
        assert e["address"] == "127.0.0.1"
        assert keys.a_key not in json.dumps(e)


@pytest_twisted.ensureDeferred
async def test_refused_or_failed_deletes_leave_no_record(authed):
    server, keys, a = authed
    name = f"{keys.a}/app"
    await push_image(a, name, "v1")
    response, _ = await server.request("DELETE", f"/v2/{name}/manifests/v1", headers={"Authorization": bearer(keys.a_ro)})
    assert response.code == 403
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/nope")
    assert response.code == 404
    assert [e for e in audit(server) if not e["action"].startswith("push")] == []
