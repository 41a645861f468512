"""
A client reset mid-PATCH (SO_LINGER 0), then its retry at once, against a real server: the
retry goes on from the last acknowledged byte and the blob is whole. Whether the server has
read the reset before the retry arrives is up to timing here; tests/http/test_upload_holder.py
pins the case where it has not (izreg/http/uploadholder.py). A client that half-closes after its
whole body gets its answer.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import urllib.parse

import pytest

from tests.helpers.ociclient import OCIClient, expect, sha256_digest
from tests.helpers.server import repo_name

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's upload sessions")


def patch_head(registry, url: str, start: int, total: int) -> bytes:
    """The head of a PATCH of C{url} announcing C{total} bytes from C{start}."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: {start}-{start + total - 1}\r\nContent-Length: {total}\r\n")
    if registry.creds:
        head += f"Authorization: Basic {base64.b64encode(registry.creds.encode()).decode()}\r\n"
    return head.encode() + b"\r\n"


def half_a_patch_then_reset(registry, url: str, body: bytes, start: int, total: int) -> None:
    """PATCH C{url} announcing C{total} bytes from C{start}, send C{body} of them, then a RST."""
    sock = socket.create_connection(("127.0.0.1", registry.port), timeout=30)
    sock.sendall(patch_head(registry, url, start, total) + body)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a RST, with the body half sent


@pytest.mark.parametrize("sent", [100_000, 8 * 2**20 + 12345])
def test_a_retry_right_after_a_reset_goes_on_from_the_last_acknowledged_byte(registry, sent):
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = repo_name(f"reset{sent}", registry.account)
    blob = os.urandom(sent + 2 * 2**20)
    url = client.location(expect(client.start_upload(repo), 202))
    first = 1_000_000
    url = client.location(expect(client.patch_chunk(url, blob[:first], 0), 202))
    half_a_patch_then_reset(registry, url, blob[first:first + sent], first, len(blob) - first)
    resp = expect(client.patch_chunk(url, blob[first:], first), 202)  # at once: the server may not have read the RST
    assert resp.headers["Range"] == f"0-{len(blob) - 1}"
    resp = expect(client.request("PUT", client.with_query(client.location(resp), digest=sha256_digest(blob)),
                                 headers={"Content-Length": "0"}), 201)
    assert expect(client.get_blob(repo, sha256_digest(blob)), 200).content == blob


def test_a_chunk_whose_client_half_closes_after_its_whole_body_is_answered(registry):
    # shutdown(SHUT_WR) once the body is sent: the client still reads its answer, the chunk counts
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = repo_name("halfclose", registry.account)
    blob = os.urandom(300_000)
    url = client.location(expect(client.start_upload(repo), 202))
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        sock.sendall(patch_head(registry, url, 0, len(blob)) + blob)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]  # before: an empty reply
    assert f"\r\nRange: 0-{len(blob) - 1}\r\n".encode() in answer
    expect(client.request("PUT", client.with_query(url, digest=sha256_digest(blob)), headers={"Content-Length": "0"}), 201)
    assert expect(client.get_blob(repo, sha256_digest(blob)), 200).content == blob
