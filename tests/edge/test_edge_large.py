"""
A large layer through the edge with flat memory: the edge's peak resident
set (VmHWM) stays under 100 MiB while it streams the blob to a client and
into its cache. The data is generated as it is sent (never held in memory
or written twice by the test).

``IZREG_EDGE_BIG_MIB`` sets the size (default 512 MiB, which keeps the suite fast;
2048 MiB passes too, with a peak of about 60 MiB, but takes about two minutes here).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

pytestmark = pytest.mark.edge

SIZE = int(os.environ.get("IZREG_EDGE_BIG_MIB", "512")) * 1024 * 1024
CHUNK = 1024 * 1024
LIMIT = 100 * 1024 * 1024


def chunks(block: bytes, size: int):
    """C{size} bytes: C{block} with its chunk number in front, so every MiB differs."""
    for i in range(size // CHUNK):
        yield i.to_bytes(8, "big") + block[8:]


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_large_layer_streams_through_with_flat_memory(stack):
    registry, repo = stack.registry, stack.repo("big")
    block = os.urandom(CHUNK)
    hasher = hashlib.sha256()

    def body():
        for chunk in chunks(block, SIZE):
            hasher.update(chunk)
            yield chunk

    auth = registry.requests_auth
    started = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", auth=auth, timeout=60)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = location if location.startswith("http") else registry.url + location
    patched = requests.patch(location, data=body(), auth=auth, timeout=600)
    assert patched.status_code == 202, patched.text
    digest = "sha256:" + hasher.hexdigest()
    patched_location = patched.headers["Location"]
    patched_location = patched_location if patched_location.startswith("http") else registry.url + patched_location
    put = requests.put(patched_location, params={"digest": digest}, auth=auth, timeout=600)
    assert put.status_code == 201, put.text

    received, check = 0, hashlib.sha256()
    with requests.get(f"{stack.edge.url}/v2/{repo}/blobs/{digest}", stream=True, timeout=600) as r:
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == SIZE
        for part in r.iter_content(CHUNK):
            received += len(part)
            check.update(part)
    assert (received, "sha256:" + check.hexdigest()) == (SIZE, digest)
    mark = stack.edge.log_mark() - 5
    stack.edge.wait_for_log(rf"cached {digest}", since=max(mark, 0), timeout=120)
    peak = peak_rss(stack.edge.pid)
    assert peak < LIMIT, f"edge peak RSS {peak / 2**20:.0f} MiB"
    print(f"edge peak RSS {peak / 2**20:.1f} MiB for a {SIZE / 2**20:.0f} MiB layer")
