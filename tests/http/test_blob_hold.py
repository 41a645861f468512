"""
A look (HEAD or GET) at a blob no manifest names holds it off garbage collection: a write
transaction, so a look within C{hold_refresh} of this process's last hold of it writes nothing
(L{izreg.registry.Registry.hold_blob}).
"""

from __future__ import annotations

import pytest_twisted

from izreg.registry import HELD_REMEMBERED
from tests.http.conftest import ACCOUNT, start_server
from tests.helpers.openguard import OpenGuard
from tests.http.helpers import push_blob

REPO = f"{ACCOUNT}/app"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counting_touches(registry) -> list:
    touched = []
    touch = registry.index.touch_blob

    def counted(name, digest, now):
        touched.append((name, str(digest), now))
        return touch(name, digest, now)

    registry.index.touch_blob = counted
    return touched


@pytest_twisted.ensureDeferred
async def test_a_blob_looked_at_again_soon_is_not_held_again(tmp_path):
    server = await start_server(tmp_path, guard=OpenGuard(), gc_grace=800)
    try:
        registry = server.registry
        assert registry.hold_refresh == 100  # gc.grace / 8
        clock = registry.now = Clock(1000.0)
        digest = await push_blob(server, REPO, b"a bare layer")
        touched = counting_touches(registry)
        for method in ("HEAD", "GET", "HEAD"):
            response, _ = await server.request(method, f"/v2/{REPO}/blobs/{digest}")
            assert response.code == 200
        assert touched == [(REPO, digest, 1000.0)]
        clock.now = 1099.0
        await server.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        assert len(touched) == 1
        clock.now = 1100.0  # hold_refresh later: held again, from now
        await server.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        assert touched[1:] == [(REPO, digest, 1100.0)]
        # another repository linking the same blob is held on its own
        other = f"{ACCOUNT}/other"
        assert await push_blob(server, other, b"a bare layer") == digest
        await server.request("HEAD", f"/v2/{other}/blobs/{digest}")
        assert touched[2:] == [(other, digest, 1100.0)]
        # a deleted blob is unknown at once, held a moment ago or not
        response, _ = await server.request("DELETE", f"/v2/{REPO}/blobs/{digest}")
        assert response.code == 202
        response, _ = await server.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        assert response.code == 404
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_what_is_remembered_is_bounded(tmp_path):
    server = await start_server(tmp_path, guard=OpenGuard(), gc_grace=800)
    try:
        registry = server.registry
        registry.now = Clock(1000.0)
        digest = await push_blob(server, REPO, b"x")
        for i in range(HELD_REMEMBERED):
            registry._held[(f"{ACCOUNT}/r{i}", digest)] = 1000.0
        await server.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        assert len(registry._held) == HELD_REMEMBERED  # the oldest made room
        assert (REPO, digest) in registry._held and (f"{ACCOUNT}/r0", digest) not in registry._held
    finally:
        await server.service.stopService()
