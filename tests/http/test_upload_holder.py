"""
A PATCH retried at once after the client reset the first, while the server has not read
the reset (its connection paused, as the upload throttle does): izreg/http/uploadholder.py.
Real sockets on an in-process server (the test pauses the first connection on the reactor
thread, so the order is fixed).
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from izreg.http import uploadholder
from tests.http.helpers import digest_of, header, repo, with_query

pytestmark = pytest.mark.socket  # raw HTTP on a real connection

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


@pytest.mark.parametrize("gone", ["reset", "closed"])
@pytest_twisted.ensureDeferred
async def test_a_retry_takes_over_from_a_client_that_is_gone(server, gone):
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
    location = header(response, "Location")
    upload_id = header(response, "Docker-Upload-UUID")
    response, _ = await server.request("PATCH", location, BLOB[:1000], headers={"Content-Range": "0-999"})
    assert response.code == 202
    session = server.registry.uploads.sessions[upload_id]

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
    response, body = await server.request("PUT", with_query(header(response, "Location"), f"digest={digest_of(BLOB)}"))
    assert response.code == 201, body
    response, body = await server.request("GET", f"/v2/{NAME}/blobs/{digest_of(BLOB)}")
    assert body == BLOB


@pytest_twisted.ensureDeferred
async def test_a_second_writer_while_the_first_is_alive_is_still_turned_away(server):
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
    location = header(response, "Location")
    upload_id = header(response, "Docker-Upload-UUID")
    session = server.registry.uploads.sessions[upload_id]
    sock = half_a_patch(server, location, 0, BLOB[:50_000], len(BLOB))
    try:
        await until(lambda: session.busy and holder_of(upload_id) is not None, "the first chunk started")
        holder_of(upload_id).pauseProducing()
        status, code, response = await server.error("PATCH", location, body=BLOB, headers={"Content-Range": f"0-{len(BLOB) - 1}"})
        assert (status, code) == (416, "RANGE_INVALID")  # its client is there: the first request keeps the session
        assert header(response, "Range") == "0-0"
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_connection_is_already_lost_is_gone(server):
    # the server read the reset (the request ended, 499) but the session is still busy while its last write
    # finishes on the I/O pool: the retry waits for it rather than 416 (the socket is no longer there to poll)
    response, _ = await server.request("POST", f"/v2/{NAME}/blobs/uploads/")
    location = header(response, "Location")
    upload_id = header(response, "Docker-Upload-UUID")
    session = server.registry.uploads.sessions[upload_id]
    sock = half_a_patch(server, location, 0, BLOB[:50_000], len(BLOB))
    await until(lambda: session.busy and holder_of(upload_id) is not None, "the first chunk started")
    transport = holder_of(upload_id)
    assert not uploadholder._gone(transport)  # its client is there
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await until(lambda: transport.disconnected, "the reset read")
    assert uploadholder._gone(transport)
