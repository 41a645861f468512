"""
Large manifests for the tests of responses held in memory (the registry's
tests/e2e/test_large_responses.py, the edge's
tests/edge/test_edge_large_manifests.py): one of an exact size, and the
checks of its answer.
"""

from __future__ import annotations

import hashlib
import json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def padded_manifest(config_blob: bytes, size: int, **annotations: str) -> bytes:
    """An image manifest of C{size} bytes (no layers, C{config_blob} its config), padded in an annotation."""
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest(), "size": len(config_blob)},
                "layers": [], "annotations": {**annotations, "pad": ""}}
    base = json.dumps(document).encode()
    data = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(data) == size
    return data


def answer_of(conn, method: str, path: str, data: bytes, headers=None) -> bytes:
    """
    Ask C{conn} (an C{http.client} connection, kept open) for the manifest C{data} at C{path}: a 200 with
    its bytes (none for a HEAD) and its headers, checked; the body.
    """
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (method, response.status, body[:300])
    assert body == (data if method == "GET" else b"")
    assert int(response.headers["Content-Length"]) == len(data)
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Content-Type"] == OCI_MANIFEST
    return body
