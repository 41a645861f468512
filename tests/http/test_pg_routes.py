"""
The API with its metadata index on PostgreSQL (izreg.storage.pgindex), in process:
the manifest and listing route tests (push, pull, tags list pagination, catalog,
referrers, deletes) run unchanged over a registry whose every index call runs on
a thread pool (a transaction started on the reactor thread fails the test), and
two nodes over one database and one store: a chunked push alternating between
them, a tag pushed on one served by the other, concurrent pushes of one tag.
The blob and upload route tests (mount, chunked uploads) run over PostgreSQL
through C{any_server}.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http import test_listing, test_manifests
from tests.http.conftest import pg_server
from tests.http.helpers import digest_of, image_manifest, push_blob, repo

pytestmark = pytest.mark.postgres

#: route tests that start a server with their own configuration (over LMDB)
_OWN_SERVER = {"test_manifest_limit_is_configurable", "test_delete_manifest_disabled_is_405"}

for _module in (test_listing, test_manifests):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test) and _name not in _OWN_SERVER:
            assert _name not in globals(), _name
            globals()[_name] = _test


@pytest_twisted.async_yield_fixture
async def server(pg_schema_dsn):
    srv = pg_server(pg_schema_dsn)
    yield srv
    await srv.service.stopService()


@pytest_twisted.async_yield_fixture
async def nodes(pg_schema_dsn):
    """Two registries over one database and one upload and blob store, as two nodes behind a balancer."""
    first = pg_server(pg_schema_dsn)
    second = pg_server(pg_schema_dsn, uploads=_sharing(first.registry.uploads))
    yield first, second
    for node in (first, second):
        await node.service.stopService()


def _sharing(uploads):
    from izreg.storage.memory import MemoryUploads

    other = MemoryUploads(uploads.blobs)
    other.stored = uploads.stored
    return other


async def test_a_chunked_push_alternating_between_nodes(nodes):
    name = repo("alternating")
    data = b"".join(bytes([i]) * 1000 for i in range(7))
    response, _ = await nodes[0].request("POST", f"/v2/{name}/blobs/uploads/")
    assert response.code == 202
    location = response.headers.getRawHeaders("Location")[0]
    offset = 0
    for i in range(7):
        node = nodes[(i + 1) % 2]  # the first chunk goes to the node that did not start the session
        chunk = data[offset:offset + 1000]
        response, body = await node.request("PATCH", location, body=chunk, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert response.code == 202, body
        offset += len(chunk)
        assert response.headers.getRawHeaders("Range")[0] == f"0-{offset - 1}"
    digest = digest_of(data)
    response, body = await nodes[0].request("PUT", f"{location}?digest={digest}")
    assert response.code == 201, body
    for node in nodes:
        response, body = await node.request("GET", f"/v2/{name}/blobs/{digest}")
        assert response.code == 200 and body == data


@pytest_twisted.async_yield_fixture
async def s3_nodes(pg_schema_dsn, moto_server, s3_bucket):
    """
    Two registries over one database and one bucket (moto), each with its own S3 upload store
    (its own cache of sessions, C{shared} as a node on PostgreSQL has it) and a clock the test moves.
    """
    from twisted.internet.threads import deferToThread

    from izreg.service.config import Config
    from izreg.storage.s3 import S3Blobs, S3Uploads, make_client

    config = Config(storage_backend="s3", s3_bucket=s3_bucket, s3_endpoint_url=moto_server.url, s3_threads=4)
    clock = [1000.0]
    nodes = []
    for _ in range(2):
        blobs = S3Blobs(make_client(config), s3_bucket, "", deferToThread)
        node = pg_server(pg_schema_dsn, uploads=S3Uploads(blobs, shared=True))
        node.registry.now = lambda: clock[0]
        nodes.append(node)
    yield nodes, clock
    for node in nodes:
        await node.service.stopService()


@pytest.mark.s3
async def test_a_node_drops_the_sessions_another_node_ended(s3_nodes):
    """
    A push's POST on one node and its PUT on the other (haproxy's round-robin): the first node
    cached the session at its POST and never sees it again. Its next read of the open sessions
    (at most every OPEN_UPLOADS_REFRESH seconds, at a POST) drops those whose record is gone;
    a session it still holds stays cached (its running hash), and goes on.
    """
    from izreg.uploading import OPEN_UPLOADS_REFRESH

    (one, two), clock = s3_nodes
    name = repo("spread")
    cached = one.registry.uploads.sessions

    async def post(node) -> str:
        response, body = await node.request("POST", f"/v2/{name}/blobs/uploads/")
        assert response.code == 202, body
        return response.headers.getRawHeaders("Location")[0]

    for rounds in range(3):
        for i in range(10):
            data = f"layer {rounds} {i}".encode()
            location = await post(one)
            response, body = await two.request("PUT", f"{location}?digest={digest_of(data)}", body=data)
            assert response.code == 201, body
        kept = await post(one)  # a session the first node still holds (a push in progress there)
        response, body = await one.request("PATCH", kept, body=b"kept ", headers={"Content-Range": "0-4"})
        assert response.code == 202, body
        kept = response.headers.getRawHeaders("Location")[0]
        assert len(cached) == 2 * rounds + 11  # the earlier rounds' two, the ten ended elsewhere, the held one
        clock[0] += OPEN_UPLOADS_REFRESH
        await post(one)  # the next POST reads the open sessions again: the ten ended elsewhere go
        assert len(cached) == 2 * rounds + 2  # the held ones and the POSTs that read the list, still open
    response, body = await one.request("PUT", f"{kept}?digest={digest_of(b'kept held')}", body=b"held")
    assert response.code == 201, body
    assert len(cached) == 5  # the last held one went into the store


async def test_an_out_of_order_chunk_on_the_other_node_is_refused(nodes):
    name = repo("order")
    response, _ = await nodes[0].request("POST", f"/v2/{name}/blobs/uploads/")
    location = response.headers.getRawHeaders("Location")[0]
    response, _ = await nodes[0].request("PATCH", location, body=b"x" * 10,
                                         headers={"Content-Range": "0-9"})
    assert response.code == 202
    code, error, response = await nodes[1].error("PATCH", location, body=b"y" * 10, headers={"Content-Range": "0-9"})
    assert (code, error) == (416, "RANGE_INVALID")
    assert response.headers.getRawHeaders("Range")[0] == "0-9"
    code, error, _ = await nodes[1].error("PATCH", f"/v2/{name}/blobs/uploads/no-such-session", body=b"z",
                                          headers={"Content-Range": "0-0"})
    assert (code, error) == (404, "BLOB_UPLOAD_UNKNOWN")


async def _push_config(node, name: str) -> bytes:
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(node, name, config)
    await push_blob(node, name, b"layer-one")
    return config


async def test_a_tag_pushed_on_one_node_is_served_by_the_other(nodes):
    name = repo("everywhere")
    await _push_config(nodes[0], name)
    manifest = image_manifest()
    response, body = await nodes[0].request("PUT", f"/v2/{name}/manifests/v1", body=manifest,
                                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.code == 201, body
    response, body = await nodes[1].request("GET", f"/v2/{name}/manifests/v1",
                                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert response.code == 200 and body == manifest
    response, body = await nodes[1].request("GET", f"/v2/{name}/tags/list")
    assert response.code == 200 and b'"v1"' in body


async def test_concurrent_pushes_of_one_tag_through_two_nodes_leave_one_winner(nodes):
    name = repo("race")
    await _push_config(nodes[0], name)
    manifests = [image_manifest(annotations={"n": str(i)}) for i in range(8)]
    answers = await defer.gatherResults([
        defer.ensureDeferred(nodes[i % 2].request(
            "PUT", f"/v2/{name}/manifests/latest", body=m,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
        for i, m in enumerate(manifests)])
    assert [response.code for response, _ in answers] == [201] * len(manifests)
    winners = set()
    for node in nodes:
        response, body = await node.request("GET", f"/v2/{name}/manifests/latest",
                                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert response.code == 200 and body in manifests
        winners.add(body)
        for m in manifests:  # every acknowledged manifest is stored whole
            response, body = await node.request("GET", f"/v2/{name}/manifests/{digest_of(m)}",
                                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert response.code == 200 and body == m
    assert len(winners) == 1
    response, body = await nodes[1].request("GET", f"/v2/{name}/tags/list")
    assert body.count(b'"latest"') == 1



@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v2/_catalog?last=%00", 400),
    ("GET", "/v2/{name}/tags/list?last=a%00", 400),
    ("GET", "/v2/{name}/blobs/uploads/ab%00cd", 404),
    ("PATCH", "/v2/{name}/blobs/uploads/ab%00cd", 404),
])
async def test_a_nul_character_from_the_client_is_a_clear_error(server, method, path, status):
    # PostgreSQL text cannot hold U+0000: these reached the database and were 500s (psycopg.DataError)
    name = repo("nul")
    await push_blob(server, name, b"x")
    response, body = await server.request(method, path.format(name=name), body=b"abc" if method == "PATCH" else None)
    assert response.code == status, body
    assert (b"NAME_INVALID" if status == 400 else b"BLOB_UPLOAD_UNKNOWN") in body
