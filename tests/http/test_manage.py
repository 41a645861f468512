"""Deletes, in-use protection, audit records and the browse API over the in-process server with real keys."""

from __future__ import annotations

import datetime
import hashlib
import io
import json

import pytest_twisted

from izreg import cli
from izreg.storage.audit import AuditLog
from tests.http.authhelpers import Keys, bearer
from tests.http.conftest import start_server
from tests.http.helpers import OCI_INDEX, OCI_MANIFEST, image_manifest, index_manifest, push_blob, push_image, put_manifest


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
    layer = _digest(b"audited-layer")
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


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _index(a, name, ref, children):
    data = index_manifest([(c, OCI_MANIFEST, {"os": "linux", "architecture": f"arch{i}"}) for i, c in enumerate(children)])
    response, _ = await put_manifest(a, name, ref, data, OCI_INDEX)
    assert response.code == 201
    return _digest(data)


@pytest_twisted.ensureDeferred
async def test_delete_by_tag_keeps_the_manifest_and_by_digest_removes_every_tag(authed):
    server, keys, a = authed
    name = f"{keys.a}/app"
    digest, data = await push_image(a, name, "v1")
    await put_manifest(a, name, "v2", data)
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/v1")
    assert response.code == 202
    response, _ = await a.request("GET", f"/v2/{name}/manifests/{digest}")
    assert response.code == 200
    response, body = await a.request("GET", f"/v2/{name}/tags/list")
    assert json.loads(body)["tags"] == ["v2"]
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 202
    response, body = await a.request("GET", f"/v2/{name}/tags/list")
    assert json.loads(body)["tags"] == []
    response, _ = await a.request("GET", f"/v2/{name}/manifests/v2")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_deleting_an_index_takes_only_the_children_nothing_else_holds(authed):
    server, keys, a = authed
    name = f"{keys.a}/multi"
    kept_tagged, tagged_bytes = await push_image(a, name, "amd64", layers=(b"l-amd64",))
    shared_bytes = image_manifest(layers=(b"l-amd64", b"l-shared"))
    only_bytes = image_manifest(layers=(b"l-amd64", b"l-only"))
    for layer in (b"l-shared", b"l-only"):
        await push_blob(a, name, layer)
    for data in (shared_bytes, only_bytes):
        response, _ = await put_manifest(a, name, _digest(data), data)
        assert response.code == 201
    index = await _index(a, name, "all", [tagged_bytes, shared_bytes, only_bytes])
    other = await _index(a, name, "other", [shared_bytes])
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{index}")
    assert response.code == 202
    async def exists(d):
        response, _ = await a.request("HEAD", f"/v2/{name}/manifests/{d}")
        return response.code == 200
    assert not await exists(index)
    assert not await exists(_digest(only_bytes))  # only the deleted index held it
    assert await exists(kept_tagged)  # tagged
    assert await exists(_digest(shared_bytes))  # held by another index
    assert await exists(other)
    entry = audit(server)[-1]
    assert entry["action"] == "delete-manifest"
    assert sorted(entry["detail"]["deleted"]) == sorted([index, _digest(only_bytes)])
    assert entry["detail"]["tags"] == ["all"]


@pytest_twisted.ensureDeferred
async def test_in_use_refusal_and_override(authed):
    server, keys, a = authed
    name = f"{keys.a}/edge"
    digest, data = await push_image(a, name, "v1", layers=(b"in-use",))
    await put_manifest(a, name, "v2", data)
    now = server.service.reactor.seconds()
    server.service.pulls.record(keys.a, "gw-1", name, digest, now - 3600)  # not yet written: still counts
    server.service.pulls.record(keys.a, "gw-2", name, digest, now - 60)
    server.service.pulls.record(keys.a, "gw-old", name, digest, now - 8 * 86400)  # outside the 7-day window
    response, body = await a.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 409
    error = json.loads(body)["errors"][0]
    assert error["code"] == "DENIED"
    assert "2 devices pulled it within the last 7 days" in error["message"]
    assert "Izreg-Force-Delete: true" in error["message"]
    assert error["detail"]["devices"] == 2
    assert error["message"].count("Z;") == 1  # the last pull time, RFC 3339
    # another tag remains on it: untagging v2 is fine; the last tag is protected
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/v2")
    assert response.code == 202
    response, body = await a.request("DELETE", f"/v2/{name}/manifests/v1")
    assert response.code == 409 and "in use" in json.loads(body)["errors"][0]["message"]
    await server.service.flush_pulls()  # written records count the same
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 409
    # an index whose child a device pulled is protected too
    index = await _index(a, name, "multi", [data])
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{index}")
    assert response.code == 409
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{index}", headers={"Izreg-Force-Delete": "true"})
    assert response.code == 202
    # a read-only key may not force
    response, _ = await server.request("DELETE", f"/v2/{name}/manifests/{digest}",
                                       headers={"Authorization": bearer(keys.a_ro), "Izreg-Force-Delete": "true"})
    assert response.code == 403
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{digest}", headers={"Izreg-Force-Delete": "true"})
    assert response.code == 202
    forced = [e for e in audit(server) if e["detail"] and e["detail"].get("forced")]
    assert [e["target"] for e in forced] == [f"{name}@{index}", f"{name}@{digest}"]
    assert all(e["detail"]["devices"] == 2 for e in forced)
    # izreg audit marks them in its table: the devices, the last pull; every other record "-"
    header, *rows = izreg_audit(server).splitlines()
    assert header.split()[-1] == "FORCED"
    marked = {row.split()[4]: row.partition(" FORCED: ")[2] for row in rows if " FORCED: " in row}
    last = datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert marked == {target: f"in use by 2 devices, last pull {last}"
                      for target in (f"{name}@{index}", f"{name}@{digest}")}
    assert len(rows) == len(audit(server)) and all(row.endswith(" -") for row in rows if " FORCED: " not in row)


def izreg_audit(server) -> str:
    """C{izreg audit}'s table (L{izreg.cli.main}) of the in-process server's audit log."""

    class ServerContext(cli.Context):
        def open_stores(self, create: bool = False) -> dict:
            return {"audit": lambda: server.registry.audit, "close": lambda: None}

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--data-dir", server.service.config.data_dir, "audit"], environ={}, stdout=out, stderr=err,
                    context_class=ServerContext)
    assert code == 0, err.getvalue()
    return out.getvalue()


@pytest_twisted.async_yield_fixture
async def unprotected(tmp_path):
    server = await start_server(tmp_path, protect_in_use=False)
    keys = Keys.make(server)
    yield server, keys, Authed(server, keys.a_key)
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_protection_off(unprotected):
    server, keys, a = unprotected
    name = f"{keys.a}/edge"
    digest, _ = await push_image(a, name, "v1")
    server.service.pulls.record(keys.a, "gw-1", name, digest, server.service.reactor.seconds())
    response, _ = await a.request("DELETE", f"/v2/{name}/manifests/{digest}")
    assert response.code == 202
