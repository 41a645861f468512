"""
The fallback to Twisted's stock code (izreg.http.internals): the real server,
forced by IZREG_STOCK_TWISTED=1 onto Twisted's own TLS factory and chunked
decoder (what an upgraded Twisted whose internals changed would get), still
serves a chunked push and a large pull over TLS, byte for byte.
"""

from __future__ import annotations

import os

import pytest
import requests

from izreg.http.internals import STOCK_ENV
from tests.helpers.ociclient import OCIClient, expect, sha256_digest
from tests.helpers.ocilayout import random_bytes
from tests.helpers.server import RegistryProcess
from tests.helpers.tls import restart_with_tls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg", reason="izreg's fast paths"),
]


def test_stock_tls_factory_and_chunked_decoder_serve_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv(STOCK_ENV, "1")  # the server inherits the environment
    registry = RegistryProcess(data_dir=str(tmp_path / "data"), log_path=str(tmp_path / "server.log"))
    try:
        registry.start()
        tls_port, paths = restart_with_tls(registry, str(tmp_path / "certs"))
        assert "TLS: Twisted's stock TLSMemoryBIOFactory" in registry.log_text()
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, replaces session.verify
        session.verify = paths.ca_cert
        client = OCIClient(f"https://127.0.0.1:{tls_port}", auth=registry.requests_auth, session=session)
        repo = f"{registry.account}/stock"
        data = random_bytes(5 * 1024 * 1024 + 3, "stock")

        def chunks():
            for i in range(0, len(data), 32_768):
                yield data[i:i + 32_768]

        url = client.location(expect(client.start_upload(repo), 202))
        resp = client.request("PATCH", url, data=chunks(), headers={"Content-Type": "application/octet-stream"})
        assert resp.request.headers.get("Transfer-Encoding") == "chunked"
        expect(resp, 202)
        expect(client.request("PUT", client.with_query(client.location(resp), digest=sha256_digest(data))), 201)
        assert "chunked request bodies: Twisted's stock _ChunkedTransferDecoder" in registry.log_text()

        device = requests.Session()
        device.trust_env = False
        device.verify, device.cert = paths.ca_cert, (paths.client_cert, paths.client_key)
        got = expect(OCIClient(f"https://127.0.0.1:{tls_port}", session=device).get_blob(repo, sha256_digest(data)), 200)
        assert got.content == data
        part = expect(client.get_blob(repo, sha256_digest(data), headers={"Range": "bytes=1000-70999"}), 206)
        assert part.content == data[1000:71000]
    finally:
        registry.close()
