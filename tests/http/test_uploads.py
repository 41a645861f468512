"""Blob uploads: sessions, monolithic, streamed and chunked pushes, status, cancel, mounts (end-4..6, 11, 13, 14)."""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from tests.http.helpers import (
    HeldBody,
    ACCOUNT,
    API_VERSION,
    OTHER_ACCOUNT,
    StreamBody,
    content_length,
    digest_of,
    header,
    parse_raw,
    push_blob,
    raw_answer,
    raw_get,
    repo,
    start_upload,
    with_query,
)

NAME = repo("up/app")

@pytest.fixture
def server(any_server):
    """These routes run over every storage backend (filesystem, in-memory, S3)."""
    return any_server


DATA = b"0123456789" * 100  # 1000 bytes
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def assert_blob(server, name, digest, data):
    response, body = await server.request("GET", f"/v2/{name}/blobs/{digest}")
    assert response.code == 200, response.code
    assert body == data
    assert header(response, "Docker-Content-Digest") == digest


async def assert_no_blob(server, name, digest):
    status, code, _ = await server.error("GET", f"/v2/{name}/blobs/{digest}")
    assert (status, code) == (404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_post_opens_a_session(server):
    response, body = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
    assert response.code == 202
    location = header(response, "Location")
    upload_id = header(response, "Docker-Upload-UUID")
    assert UUID_RE.match(upload_id)
    assert location == f"/v2/{NAME}/blobs/uploads/{upload_id}"
    assert header(response, "Range") == "0-0"
    assert header(response, "OCI-Chunk-Min-Length") == str(64 * 1024)
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION
    assert content_length(response) == "0"
    # a second POST is a different session
    other = await start_upload(server, NAME)
    assert other != location


@pytest_twisted.ensureDeferred
async def test_post_without_trailing_slash(server):
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads")
    assert response.code == 202
    assert header(response, "Location").startswith(f"/v2/{NAME}/blobs/uploads/")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest_twisted.ensureDeferred
async def test_monolithic_post(server, algorithm):
    digest = digest_of(DATA, algorithm)
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/?digest={digest}", body=DATA,
                                       headers={"Content-Type": "application/octet-stream"})
    assert response.code == 201
    assert header(response, "Location") == f"/v2/{NAME}/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_monolithic_post_empty_blob(server):
    digest = digest_of(b"")
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/?digest={digest}", body=b"")
    assert response.code == 201
    await assert_blob(server, NAME, digest, b"")


@pytest_twisted.ensureDeferred
async def test_monolithic_post_wrong_digest_stores_nothing(server):
    wrong = digest_of(b"something else")
    status, code, _ = await server.error("POST", f"/v2/{NAME}/blobs/uploads/?digest={wrong}", body=DATA)
    assert (status, code) == (400, "DIGEST_INVALID")
    await assert_no_blob(server, NAME, wrong)
    await assert_no_blob(server, NAME, digest_of(DATA))


@pytest_twisted.ensureDeferred
async def test_monolithic_post_invalid_digest(server):
    status, code, _ = await server.error("POST", f"/v2/{NAME}/blobs/uploads/?digest=sha256:nothex", body=DATA)
    assert (status, code) == (400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_post_then_put_whole_body(server):
    """containerd / oras: POST, then PUT <Location>?digest= with the whole blob."""
    location = await start_upload(server, NAME)
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"), body=DATA,
                                       headers={"Content-Type": "application/octet-stream"})
    assert response.code == 201
    assert header(response, "Location") == f"/v2/{NAME}/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, NAME, digest, DATA)
    # the session is over
    status, code, _ = await server.error("GET", location)
    assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_streamed_patch_then_empty_put(server):
    """Classic docker: one PATCH, chunked transfer-encoding, no Content-Range; then PUT ?digest= empty."""
    location = await start_upload(server, NAME)
    response, _ = await server.request("PATCH", location, body=StreamBody(DATA[:300], DATA[300:700], DATA[700:]),
                                       headers={"Content-Type": "application/octet-stream"})
    assert response.code == 202
    assert header(response, "Range") == f"0-{len(DATA) - 1}"
    assert header(response, "Location") == location
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_ranged_patch_chunks(server):
    location = await start_upload(server, NAME)
    offset = 0
    for chunk in (DATA[:100], DATA[100:550], DATA[550:]):
        end = offset + len(chunk) - 1
        response, _ = await server.request("PATCH", location, body=chunk, headers={
            "Content-Range": f"{offset}-{end}", "Content-Type": "application/octet-stream"})
        assert response.code == 202
        assert header(response, "Range") == f"0-{end}"
        assert header(response, "Location") == location
        offset = end + 1
        response, _ = await server.request("GET", location)
        assert response.code == 204
        assert header(response, "Range") == f"0-{end}"
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_final_chunk_in_put(server):
    location = await start_upload(server, NAME)
    response, _ = await server.request("PATCH", location, body=DATA[:600], headers={"Content-Range": "0-599"})
    assert response.code == 202
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"), body=DATA[600:],
                                       headers={"Content-Range": f"600-{len(DATA) - 1}"})
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_patch_without_content_range_appends(server):
    location = await start_upload(server, NAME)
    for part in (DATA[:400], DATA[400:]):
        response, _ = await server.request("PATCH", location, body=part)
        assert response.code == 202
    assert header(response, "Range") == f"0-{len(DATA) - 1}"
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest.mark.parametrize("content_range", ["0-99", "200-299", "101-200"])
@pytest_twisted.ensureDeferred
async def test_out_of_order_chunk_is_416_and_upload_survives(server, content_range):
    location = await start_upload(server, NAME)
    response, _ = await server.request("PATCH", location, body=DATA[:100], headers={"Content-Range": "0-99"})
    assert response.code == 202
    status, code, response = await server.error("PATCH", location, body=DATA[:100],
                                                 headers={"Content-Range": content_range})
    assert (status, code) == (416, "RANGE_INVALID")
    assert header(response, "Range") == "0-99"
    assert header(response, "Location") == location
    # still usable, and the rejected bytes were not kept
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-99"
    response, _ = await server.request("PATCH", location, body=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"})
    assert response.code == 202
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_first_chunk_must_start_at_zero(server):
    location = await start_upload(server, NAME)
    status, code, response = await server.error("PATCH", location, body=DATA[:10], headers={"Content-Range": "5-14"})
    assert (status, code) == (416, "RANGE_INVALID")
    assert header(response, "Range") == "0-0"


@pytest_twisted.ensureDeferred
async def test_content_range_and_length_mismatch_is_400(server):
    location = await start_upload(server, NAME)
    status, code, _ = await server.error("PATCH", location, body=DATA[:50], headers={"Content-Range": "0-99"})
    assert status == 400
    assert code == "SIZE_INVALID"
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-0"


@pytest_twisted.ensureDeferred
async def test_upload_status(server):
    location = await start_upload(server, NAME)
    response, body = await server.request("GET", location)
    assert response.code == 204
    assert body == b""
    assert header(response, "Range") == "0-0"
    assert header(response, "Location") == location
    assert header(response, "Docker-Upload-UUID") == location.rsplit("/", 1)[1]
    await server.request("PATCH", location, body=DATA[:10], headers={"Content-Range": "0-9"})
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-9"
    # HEAD wherever GET (RFC 9110 9.1, as distribution): the same answer
    head, body = await server.request("HEAD", location)
    assert (head.code, body) == (204, b"")
    assert [header(head, h) for h in ("Range", "Location", "Docker-Upload-UUID")] == [
        header(response, h) for h in ("Range", "Location", "Docker-Upload-UUID")]


@pytest_twisted.ensureDeferred
async def test_cancel_upload(server):
    location = await start_upload(server, NAME)
    await server.request("PATCH", location, body=DATA[:10], headers={"Content-Range": "0-9"})
    response, body = await server.request("DELETE", location)
    assert response.code == 204
    assert body == b""
    for method in ("GET", "PATCH", "DELETE"):
        status, code, _ = await server.error(method, location)
        assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")
    status, code, _ = await server.error("PUT", with_query(location, f"digest={digest_of(DATA[:10])}"))
    assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")
    await assert_no_blob(server, NAME, digest_of(DATA[:10]))


@pytest_twisted.ensureDeferred
async def test_put_without_digest_is_400(server):
    location = await start_upload(server, NAME)
    status, code, _ = await server.error("PUT", location)
    assert (status, code) == (400, "DIGEST_INVALID")
    status, code, _ = await server.error("PUT", location, body=DATA)
    assert (status, code) == (400, "DIGEST_INVALID")
    # nothing was kept and the session is still there
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-0"


@pytest_twisted.ensureDeferred
async def test_put_with_invalid_digest_is_400(server):
    location = await start_upload(server, NAME)
    status, code, _ = await server.error("PUT", with_query(location, "digest=sha256:short"), body=DATA)
    assert (status, code) == (400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_put_with_wrong_digest_stores_nothing(server):
    location = await start_upload(server, NAME)
    await server.request("PATCH", location, body=DATA, headers={"Content-Range": f"0-{len(DATA) - 1}"})
    wrong = digest_of(b"not these bytes")
    status, code, _ = await server.error("PUT", with_query(location, f"digest={wrong}"))
    assert (status, code) == (400, "DIGEST_INVALID")
    await assert_no_blob(server, NAME, wrong)
    await assert_no_blob(server, NAME, digest_of(DATA))


@pytest_twisted.ensureDeferred
async def test_put_whole_body_with_wrong_digest_stores_nothing(server):
    location = await start_upload(server, NAME)
    wrong = digest_of(b"not these bytes")
    status, code, _ = await server.error("PUT", with_query(location, f"digest={wrong}"), body=DATA)
    assert (status, code) == (400, "DIGEST_INVALID")
    await assert_no_blob(server, NAME, wrong)
    await assert_no_blob(server, NAME, digest_of(DATA))


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_unknown_upload_id_is_404(server, method):
    path = f"/v2/{NAME}/blobs/uploads/00000000-0000-0000-0000-000000000000"
    if method == "PUT":
        path += f"?digest={digest_of(DATA)}"
    status, code, response = await server.error(method, path, body=DATA if method in ("PATCH", "PUT") else None)
    assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert header(response, "Docker-Distribution-API-Version") == API_VERSION


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_upload_id_under_another_repository_is_404(server, method):
    location = await start_upload(server, NAME)
    upload_id = location.rsplit("/", 1)[1]
    for other in (repo("other"), repo("up/app", OTHER_ACCOUNT)):
        path = f"/v2/{other}/blobs/uploads/{upload_id}"
        if method == "PUT":
            path += f"?digest={digest_of(DATA)}"
        status, code, _ = await server.error(method, path, body=DATA if method in ("PATCH", "PUT") else None)
        assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")
    # the session is untouched under its own name
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-0"
    await assert_no_blob(server, repo("other"), digest_of(DATA))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest_twisted.ensureDeferred
async def test_chunked_upload_with_digest_algorithm(server, algorithm):
    location = await start_upload(server, NAME)
    await server.request("PATCH", location, body=DATA[:500], headers={"Content-Range": "0-499"})
    await server.request("PATCH", location, body=DATA[500:], headers={"Content-Range": f"500-{len(DATA) - 1}"})
    digest = digest_of(DATA, algorithm)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_mount_from_repository_that_has_it(server):
    digest = await push_blob(server, repo("src"), DATA)
    target = repo("dst")
    response, _ = await server.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={repo('src')}")
    assert response.code == 201
    assert header(response, "Location") == f"/v2/{target}/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, target, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_mount_from_repository_without_it_opens_a_session(server):
    await push_blob(server, repo("src"), b"other bytes")
    digest = digest_of(DATA)
    target = repo("dst")
    response, _ = await server.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={repo('src')}")
    assert response.code == 202
    location = header(response, "Location")
    assert location.startswith(f"/v2/{target}/blobs/uploads/")
    assert header(response, "Range") == "0-0"
    await assert_no_blob(server, target, digest)
    # the session works
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"), body=DATA)
    assert response.code == 201
    await assert_blob(server, target, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_mount_blob_that_exists_elsewhere_but_not_in_from(server):
    digest = await push_blob(server, repo("has-it"), DATA)
    await push_blob(server, repo("src"), b"other")
    response, _ = await server.request("POST", f"/v2/{repo('dst')}/blobs/uploads/?mount={digest}&from={repo('src')}")
    assert response.code == 202
    await assert_no_blob(server, repo("dst"), digest)


@pytest_twisted.ensureDeferred
async def test_mount_without_from_within_the_account(server):
    digest = await push_blob(server, repo("src"), DATA)
    response, _ = await server.request("POST", f"/v2/{repo('dst')}/blobs/uploads/?mount={digest}")
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assert_blob(server, repo("dst"), digest, DATA)


@pytest_twisted.ensureDeferred
async def test_mount_never_crosses_accounts(server):
    source = repo("src", OTHER_ACCOUNT)
    digest = await push_blob(server, source, DATA)
    target = repo("dst")
    response, _ = await server.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}")
    assert response.code == 202
    assert header(response, "Location").startswith(f"/v2/{target}/blobs/uploads/")
    response, _ = await server.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}")
    assert response.code == 202
    await assert_no_blob(server, target, digest)


@pytest_twisted.ensureDeferred
async def test_mount_from_a_name_no_account_holds_opens_a_session(server):
    """A C{from} of the spec's grammar outside every account: nothing to mount from, so a session (202), not a 403."""
    digest = await push_blob(server, repo("src"), DATA)
    for source in ("library/ubuntu", f"{ACCOUNT}/a__b"):
        response, body = await server.request("POST", f"/v2/{NAME}/blobs/uploads/?mount={digest}&from={source}")
        assert (response.code, body) == (202, b""), source
        assert header(response, "Location").startswith(f"/v2/{NAME}/blobs/uploads/")
    await assert_no_blob(server, NAME, digest)


@pytest_twisted.ensureDeferred
async def test_mount_invalid_digest_or_from(server):
    status, code, _ = await server.error("POST", f"/v2/{NAME}/blobs/uploads/?mount=sha256:zz&from={repo('src')}")
    assert (status, code) == (400, "DIGEST_INVALID")
    digest = digest_of(DATA)
    status, code, _ = await server.error("POST", f"/v2/{NAME}/blobs/uploads/?mount={digest}&from=Bad/Name")
    assert (status, code) == (400, "NAME_INVALID")


@pytest_twisted.ensureDeferred
async def test_mount_of_sha512_blob(server):
    digest = await push_blob(server, repo("src"), DATA, "sha512")
    response, _ = await server.request("POST", f"/v2/{repo('dst')}/blobs/uploads/?mount={digest}&from={repo('src')}")
    assert response.code == 201
    await assert_blob(server, repo("dst"), digest, DATA)


@pytest_twisted.ensureDeferred
async def test_reupload_existing_blob(server):
    digest = await push_blob(server, NAME, DATA)
    assert await push_blob(server, NAME, DATA) == digest
    location = await start_upload(server, NAME)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"), body=DATA)
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_account_constant_used_in_locations(server):
    location = await start_upload(server, repo("x"))
    assert location.startswith(f"/v2/{ACCOUNT}/x/blobs/uploads/")


def sink_opened(server, method: bytes):
    """A Deferred that fires with the body sink the server picks for the next C{method} request."""
    from twisted.internet import defer

    opened = defer.Deferred()
    site = server.service.site
    original = site.body_for

    def spy(request, m, uri, length):
        sink = original(request, m, uri, length)
        if m == method and not opened.called:
            site.body_for = original
            ready = getattr(request, "_izreg_body_ready", None)
            if ready is not None:  # a PendingBody (the index on PostgreSQL): the sink once the session is read
                ready.addBoth(lambda result: opened.callback(request.content) or result)
            else:
                opened.callback(sink)
        return sink

    site.body_for = spy
    return opened


@pytest_twisted.ensureDeferred
async def test_second_writer_while_a_patch_is_streaming(server):
    """While one PATCH body is still arriving, other writes are refused and the first one completes."""
    from twisted.internet import defer

    location = await start_upload(server, NAME)
    upload_id = location.rsplit("/", 1)[1]
    held = HeldBody(DATA[:500])
    opened = sink_opened(server, b"PATCH")
    first = defer.ensureDeferred(server.request("PATCH", location, body=held))
    await opened
    assert server.registry.uploads.sessions[upload_id].busy
    status, code, response = await server.error("PATCH", location, body=b"other", headers={"Content-Range": "0-4"})
    assert (status, code) == (416, "RANGE_INVALID")
    status, code, _ = await server.error("PATCH", location, body=b"other")
    assert (status, code) == (416, "RANGE_INVALID")
    status, code, _ = await server.error("DELETE", location)
    assert status == 400 and code == "BLOB_UPLOAD_INVALID"
    status, code, _ = await server.error("PUT", with_query(location, f"digest={digest_of(b'x')}"))
    assert status == 400 and code == "BLOB_UPLOAD_INVALID"
    held.finish(DATA[500:])
    response, _ = await first
    assert response.code == 202
    assert header(response, "Range") == f"0-{len(DATA) - 1}"
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_client_going_away_mid_patch_drops_only_that_chunk(server):
    from twisted.internet import defer

    if server.kind == "memory":
        pytest.skip("a client going away needs a connection to close")

    location = await start_upload(server, NAME)
    upload_id = location.rsplit("/", 1)[1]
    response, _ = await server.request("PATCH", location, body=DATA[:100], headers={"Content-Range": "0-99"})
    assert response.code == 202
    opened = sink_opened(server, b"PATCH")
    request = defer.ensureDeferred(server.request("PATCH", location, body=HeldBody(DATA[100:600])))
    sink = await opened
    session = server.registry.uploads.sessions[upload_id]
    assert session.busy
    aborted = defer.Deferred()
    abort = sink.abort

    def watched_abort():
        abort()
        if not aborted.called:
            aborted.callback(None)

    sink.abort = watched_abort
    request.cancel()
    try:
        await request
    except Exception:
        pass
    await aborted
    assert not session.busy
    response, _ = await server.request("GET", location)
    assert response.code == 204 and header(response, "Range") == "0-99"
    response, _ = await server.request("PATCH", location, body=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"})
    assert response.code == 202
    digest = digest_of(DATA)
    response, _ = await server.request("PUT", with_query(location, f"digest={digest}"))
    assert response.code == 201
    await assert_blob(server, NAME, digest, DATA)


@pytest_twisted.ensureDeferred
async def test_upload_survives_a_restart(tmp_path):
    from tests.helpers.openguard import OpenGuard
    from tests.http.conftest import start_server

    srv = await start_server(tmp_path, OpenGuard())
    try:
        location = await start_upload(srv, NAME)
        response, _ = await srv.request("PATCH", location, body=DATA[:400], headers={"Content-Range": "0-399"})
        assert response.code == 202
    finally:
        await srv.service.stopService()
    srv = await start_server(tmp_path, OpenGuard())
    try:
        response, _ = await srv.request("GET", location)
        assert response.code == 204 and header(response, "Range") == "0-399"
        response, _ = await srv.request("PATCH", location, body=DATA[400:], headers={"Content-Range": f"400-{len(DATA) - 1}"})
        assert response.code == 202
        digest = digest_of(DATA)
        response, _ = await srv.request("PUT", with_query(location, f"digest={digest}"))
        assert response.code == 201
        await assert_blob(srv, NAME, digest, DATA)
    finally:
        await srv.service.stopService()


@pytest_twisted.ensureDeferred
async def test_abandoned_monolithic_post_leaves_no_file_or_session(server):
    """A monolithic POST whose client goes away mid-body leaves nothing behind."""
    import os

    if server.kind != "filesystem":
        pytest.skip("looks at the upload files (the storage contract covers the other stores)")

    from twisted.internet import defer
    uploads_dir = os.path.join(server.registry.uploads.root, "uploads")
    opened = sink_opened(server, b"POST")
    request = defer.ensureDeferred(
        server.request("POST", f"/v2/{NAME}/blobs/uploads/?digest={digest_of(DATA)}", body=HeldBody(DATA[:300])))
    sink = await opened
    assert os.listdir(uploads_dir) == [sink.session.id]
    aborted = defer.Deferred()
    abort = sink.abort

    def watched_abort():
        abort()
        aborted.callback(None)

    sink.abort = watched_abort
    request.cancel()
    try:
        await request
    except Exception:
        pass
    await aborted
    assert os.listdir(uploads_dir) == []
    assert server.registry.uploads.sessions == {}


@pytest_twisted.ensureDeferred
async def test_abandoned_sessions_expire_with_their_files(server):
    """Sessions idle for longer than the TTL go, bytes and all; fresher ones stay."""
    import os

    if server.kind != "filesystem":
        pytest.skip("looks at the upload files (the storage contract covers the other stores)")

    old = await start_upload(server, NAME)
    response, _ = await server.request("PATCH", old, body=DATA[:100], headers={"Content-Range": "0-99"})
    assert response.code == 202
    old_id = old.rsplit("/", 1)[1]
    old_path = server.registry.uploads.sessions[old_id].path
    index = server.registry.index
    index.put_upload(old_id, {**index.get_upload(old_id), "updated": 0.0})  # last touched long ago
    cutoff = 1.0
    fresh = await start_upload(server, NAME)
    assert await server.registry.expire_uploads(cutoff) == 1
    assert not os.path.exists(old_path)
    status, code, _ = await server.error("GET", old)
    assert (status, code) == (404, "BLOB_UPLOAD_UNKNOWN")
    response, _ = await server.request("GET", fresh)
    assert response.code == 204


@pytest_twisted.ensureDeferred
async def test_a_204_has_no_content_length(tmp_path):
    """RFC 9110 (8.6): "A server MUST NOT send a Content-Length header field in any response with ... 204"."""
    from tests.helpers.openguard import OpenGuard
    from tests.http.conftest import start_server

    server = await start_server(tmp_path, OpenGuard(), socket=True)  # raw HTTP: the headers as sent
    try:
        location = await start_upload(server, NAME)
        for method in (b"GET", b"HEAD", b"DELETE"):
            answer = await raw_answer(server, raw_get(location.encode(), method), head=method == b"HEAD")
            status, headers, body = parse_raw(answer)
            assert (status, body) == (204, b""), method
            assert "content-length" not in headers and "transfer-encoding" not in headers, (method, headers)
            if method != b"DELETE":
                assert headers["range"] == "0-0" and headers["location"] == location
    finally:
        await server.service.stopService()
