"""
A PATCH retried at once after the client reset the first, while the server has not read
the reset (its connection paused, as the upload throttle does): izreg/http/uploadholder.py.
A client that half-closes after its whole body is not gone: it gets its answer, and a
retry meanwhile does not take its session. Each with the metadata in LMDB and in PostgreSQL
(where the session is read off the reactor). Real sockets on an in-process server (the test
pauses the first connection on the reactor thread, so the order is fixed).
"""

from __future__ import annotations

import select
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from izreg.http import uploadholder
from tests.helpers.openguard import OpenGuard
from tests.http.conftest import start_server
from tests.http.helpers import digest_of, header, repo, with_query

pytestmark = pytest.mark.socket  # raw HTTP on a real connection


@pytest_twisted.async_yield_fixture(params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def server(request, tmp_path):
    """A server on a port, its metadata in LMDB or in a real PostgreSQL (the session then read off the reactor)."""
    config = {}
    if request.param == "postgresql":
        config = dict(metadata_backend="postgresql", metadata_dsn=request.getfixturevalue("pg_schema_dsn"))
    srv = await start_server(tmp_path, OpenGuard(), socket=True, **config)
    yield srv
    await srv.service.stopService()

NAME = repo("reset/app")
BLOB = bytes(range(256)) * 4096  # 1 MiB


async def until(condition, what: str, timeout: float = 30.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{what}: not true after {timeout} s")


def half_a_patch(server, location: str, start: int, sent: bytes, total: int) -> socket.socket:
    host, port = server.url.rsplit("/", 1)[-1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Range: {start}-{start + total - 1}\r\nContent-Length: {total}\r\n\r\n".encode() + sent)
    return sock


def holder_of(upload_id: str):
    """The server's transport of the request that holds the session (the body sink's)."""
    for sink, transport in list(uploadholder._holders.items()):
        if sink.session.id == upload_id:
            return transport
    return None


async def new_upload(server, first: bytes = b""):
    """Start an upload (with C{first} as its first chunk): its location, id and session."""
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
    location = header(response, "Location")
    upload_id = header(response, "Docker-Upload-UUID")
    if first:
        response, _ = await server.request("PATCH", location, first, headers={"Content-Range": f"0-{len(first) - 1}"})
        assert response.code == 202
    return location, upload_id, server.registry.uploads.sessions[upload_id]


async def committed(server, location: str, blob: bytes) -> None:
    """Commit the upload at C{location} as C{blob}, then read it back."""
    response, body = await server.request("PUT", with_query(location, f"digest={digest_of(blob)}"))
    assert response.code == 201, body
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest_of(blob)}")
    assert body == blob


async def paused_holder(session, upload_id: str, read: int = 0):
    """Once the holder's request has read C{read} bytes: pause it (the throttle's way); its transport, channel."""
    await until(lambda: session.busy and holder_of(upload_id) is not None and session.writer.written >= read,
                "the chunk started")
    transport = holder_of(upload_id)
    transport.pauseProducing()  # the rest and the end of stream stay in the socket
    return transport, channel_of(upload_id)


def channel_of(upload_id: str):
    """The server's HTTP channel of the request that holds the session."""
    for sink, channel in list(uploadholder._channels.items()):
        if sink.session.id == upload_id:
            return channel
    return None


def answer(sock: socket.socket) -> bytes:
    """All the server sends until it closes (blocking: run in a thread)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def end_of_stream_seen(transport) -> bool:
    """Whether the server's socket of C{transport} has the peer's FIN (polled, nothing read)."""
    poll = select.poll()
    poll.register(transport.getHandle().fileno(), select.POLLRDHUP)
    return any(events & select.POLLRDHUP for _, events in poll.poll(0))


@pytest.mark.parametrize("gone", ["reset", "closed"])
@pytest_twisted.ensureDeferred
async def test_a_retry_takes_over_from_a_client_that_is_gone(server, gone):
    location, upload_id, session = await new_upload(server, BLOB[:1000])

    sock = half_a_patch(server, location, 1000, BLOB[1000:50_000], len(BLOB) - 1000)
    await until(lambda: session.busy and holder_of(upload_id) is not None and session.writer.written == 49_000,
                "the half chunk read")
    holder_of(upload_id).pauseProducing()  # as the throttle does while the disk catches up: the reset is not read
    if gone == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

    response, body = await server.request("PATCH", location, BLOB[1000:], headers={"Content-Range": f"1000-{len(BLOB) - 1}"})
    assert response.code == 202, body  # before: 416 "another request is writing to this upload"
    assert header(response, "Range") == f"0-{len(BLOB) - 1}"
    await committed(server, header(response, "Location"), BLOB)


@pytest_twisted.ensureDeferred
async def test_a_second_writer_while_the_first_is_alive_is_still_turned_away(server):
    location, upload_id, session = await new_upload(server)
    sock = half_a_patch(server, location, 0, BLOB[:50_000], len(BLOB))
    try:
        await paused_holder(session, upload_id)
        status, code, response = await server.error("PATCH", location, body=BLOB, headers={"Content-Range": f"0-{len(BLOB) - 1}"})
        assert (status, code) == (416, "RANGE_INVALID")  # its client is there: the first request keeps the session
        assert header(response, "Range") == "0-0"
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_connection_is_already_lost_is_gone(server):
    # the server read the reset (the request ended, 499) but the session is still busy while its last write
    # finishes on the I/O pool: the retry waits for it rather than 416 (the socket is no longer there to poll)
    location, upload_id, session = await new_upload(server)
    sock = half_a_patch(server, location, 0, BLOB[:50_000], len(BLOB))
    await until(lambda: session.busy and holder_of(upload_id) is not None, "the first chunk started")
    transport = holder_of(upload_id)
    assert not uploadholder._gone(transport)  # its client is there
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await until(lambda: transport.disconnected, "the reset read")
    assert uploadholder._gone(transport)


@pytest_twisted.ensureDeferred
async def test_a_whole_body_then_a_half_close_gets_its_answer(server):
    location, _, _ = await new_upload(server)
    sock = half_a_patch(server, location, 0, BLOB, len(BLOB))
    sock.shutdown(socket.SHUT_WR)  # all sent; the answer is still read
    try:
        data = await threads.deferToThread(answer, sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 202 "), data[:200]  # before: no answer (the end of stream ended the connection)
    assert f"\r\nRange: 0-{len(BLOB) - 1}\r\n".encode() in data


@pytest_twisted.ensureDeferred
async def test_a_retry_leaves_its_session_to_a_client_that_half_closed_after_its_whole_body(server):
    blob = BLOB[:101_000]
    location, upload_id, session = await new_upload(server, blob[:1000])

    sock = half_a_patch(server, location, 1000, blob[1000:50_000], len(blob) - 1000)
    try:
        transport, channel = await paused_holder(session, upload_id, 49_000)
        await threads.deferToThread(sock.sendall, blob[50_000:])
        sock.shutdown(socket.SHUT_WR)
        await until(lambda: end_of_stream_seen(transport), "the half-close arrived")
        assert not uploadholder._gone(transport, channel)  # its body is whole: its client waits for the answer

        status, code, response = await server.error("PATCH", location, body=blob[1000:],
                                                     headers={"Content-Range": f"1000-{len(blob) - 1}"})
        assert (status, code) == (416, "RANGE_INVALID")  # before: the half-closed request was aborted
        assert header(response, "Range") == "0-999"
        assert not transport.disconnecting

        transport.resumeProducing()
        data = await threads.deferToThread(answer, sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 202 "), data[:200]
    assert f"\r\nRange: 0-{len(blob) - 1}\r\n".encode() in data
    await committed(server, location, blob)


@pytest_twisted.ensureDeferred
async def test_an_end_of_stream_before_the_whole_body_is_gone(server):
    location, upload_id, session = await new_upload(server)
    sock = half_a_patch(server, location, 0, BLOB[:50_000], len(BLOB))
    try:
        transport, channel = await paused_holder(session, upload_id)
        sock.sendall(BLOB[50_000:60_000])
        sock.shutdown(socket.SHUT_WR)  # a half-close, but the body can never be whole
        await until(lambda: end_of_stream_seen(transport), "the half-close arrived")
        assert uploadholder._gone(transport, channel)
    finally:
        sock.close()
