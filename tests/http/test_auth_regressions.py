"""
Regression tests for defects found while writing the authentication tests (fixed).
"""

from __future__ import annotations

import json
import re
import socket
import types

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.http.authhelpers import Keys, auth, basic
from tests.http.conftest import start_server

pytestmark = pytest.mark.socket  # raw HTTP on a real connection


@pytest_twisted.async_yield_fixture
async def tokens_on(tmp_path):
    server = await start_server(tmp_path, socket=True, token_service=True)
    yield server, Keys.make(server)
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_oras_push_with_its_default_token_backend(tokens_on, tmp_path, monkeypatch):
    oras_client = pytest.importorskip("oras.client")
    import oras.decorator

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))

    def no_sleep(seconds):
        raise AssertionError(f"oras retried after an error (it would sleep {seconds} s)")

    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=no_sleep))
    server, keys = tokens_on
    host = server.url.split("//", 1)[1]
    artifact = tmp_path / "artifact.txt"
    artifact.write_bytes(b"pushed by oras through the token service\n")
    client = oras_client.OrasClient(hostname=host, insecure=True)  # auth_backend="token"
    client.auth.set_basic_auth("KEY", keys.a_key)
    name = f"{keys.a}/oras"

    def push():
        return client.push(target=f"{host}/{name}:v1", files=[str(artifact)], disable_path_validation=True).status_code

    assert await threads.deferToThread(push) == 201
    response, body = await server.request("GET", f"/v2/{name}/tags/list", headers=auth(basic(keys.a_key)))
    assert json.loads(body)["tags"] == ["v1"]


def _raw_get(port: int, host: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_host_header_cannot_inject_challenge_parameters(tokens_on):
    server, _ = tokens_on
    port = int(server.url.rsplit(":", 1)[1])
    raw = await threads.deferToThread(_raw_get, port, b'evil.example", error="x')
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split()[1])
    challenge = [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("www-authenticate:")]
    # either the Host is refused, or the challenge stays two well-formed parameters
    assert status == 400 or re.fullmatch(r'Bearer realm="[^"\\]*",service="izreg"', challenge[0]), head
