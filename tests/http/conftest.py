"""
In-process API fixture: the real Site, Registry, LMDB and blob files (in a
temp dir), served on a loopback port by the test reactor, driven with treq.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest_twisted
import treq
from twisted.internet import reactor

from izreg.http.guard import OpenGuard
from izreg.service.config import Config
from izreg.tap import make_server

ACCOUNT = "0123456789abcdef0123456789abcdef"
OTHER_ACCOUNT = "fedcba9876543210fedcba9876543210"


@dataclass
class Server:
    url: str
    service: object

    @property
    def registry(self):
        return self.service.registry

    @property
    def api(self):
        return self.service.api

    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, **kw):
        """Send a request; return (response, body bytes)."""
        response = await treq.request(method, self.url + path, data=body, headers=headers or {}, persistent=False, **kw)
        content = await response.content()
        return response, content

    async def error(self, method: str, path: str, **kw):
        """Send a request that must fail with an OCI error; return (status, code, response)."""
        response, content = await self.request(method, path, **kw)
        if method == "HEAD":
            return response.code, None, response
        document = json.loads(content)
        assert set(document["errors"][0]) == {"code", "message", "detail"}
        return response.code, document["errors"][0]["code"], response


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


async def start_server(tmp_path, guard=None, **config) -> Server:
    """Start a registry over C{tmp_path}, listening on a free loopback port."""
    cfg = Config(data_dir=str(tmp_path / "data"), listen=("tcp:0:interface=127.0.0.1",), **config)
    service = make_server(cfg, reactor, guard=guard)
    # the listeners are children; start them, then ask the endpoint service for its port
    service.startService()
    listener = service.services[0]
    port = await listener._waitingForPort
    return Server(f"http://127.0.0.1:{port.getHost().port}", service)


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    srv = await start_server(tmp_path, OpenGuard())
    yield srv
    await srv.service.stopService()
