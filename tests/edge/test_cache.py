"""The edge cache's index and files (izreg.edge.cache), in process."""

from __future__ import annotations

import hashlib
import os

from izreg.edge.cache import EdgeCache


def put(cache: EdgeCache, data: bytes, now: float, media_type: str = "") -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    temp = cache.temp_path()
    with open(temp, "wb") as f:
        f.write(data)
    cache.commit(temp, digest, len(data), media_type, now)
    return digest


def test_least_recently_used_goes_first_and_pins_stay(tmp_path):
    cache = EdgeCache(str(tmp_path), limit=250)
    a, b, c = (put(cache, bytes([n]) * 100, now=n) for n in (1, 2, 3))
    # three of 100 bytes in 250: the oldest (a) went
    assert [cache.entry(d) is not None for d in (a, b, c)] == [False, True, True]
    assert not os.path.exists(cache.path(a)) and cache.total == 200
    cache.touch(b, now=10)  # b is now the most recent
    cache.pin(f"{'0' * 32}/app:v1")
    cache.set_pinned(f"{'0' * 32}/app:v1", c, [c], now=11)
    d = put(cache, b"d" * 100, now=12)
    # c is older than b, but pinned: b goes
    assert [cache.entry(x) is not None for x in (b, c, d)] == [False, True, True]
    cache.unpin(f"{'0' * 32}/app:v1")
    put(cache, b"e" * 100, now=13)
    assert cache.entry(c) is None
    cache.close()


def test_the_index_survives_a_restart_and_stray_files_go(tmp_path):
    cache = EdgeCache(str(tmp_path), limit=10_000)
    kept = put(cache, b"manifest", now=1, media_type="application/vnd.oci.image.manifest.v1+json")
    cache.set_tag("0" * 32 + "/app", "v1", kept, "application/vnd.oci.image.manifest.v1+json", now=1)
    cache.queue_reports([{"repository": "0" * 32 + "/app", "digest": kept, "time": 1}], now=1)
    stray = os.path.join(tmp_path, "blobs", "sha256", "ab", "ab" * 32)
    os.makedirs(os.path.dirname(stray))
    open(stray, "wb").close()
    open(cache.temp_path(), "wb").close()
    cache.close()

    cache = EdgeCache(str(tmp_path), limit=10_000)
    assert cache.clean() == 1 and not os.path.exists(stray) and os.listdir(os.path.join(tmp_path, "tmp")) == []
    entry, f = cache.open(kept)
    with f:
        assert f.read() == b"manifest"
    assert entry.type == "application/vnd.oci.image.manifest.v1+json"
    assert cache.tag("0" * 32 + "/app", "v1") == kept
    [(key, report)] = cache.pending_reports(10)
    assert report["digest"] == kept
    cache.drop_reports([key])
    assert cache.pending_reports(10) == []
    cache.close()


def test_an_entry_whose_file_vanished_is_a_miss(tmp_path):
    cache = EdgeCache(str(tmp_path), limit=10_000)
    d = put(cache, b"x" * 10, now=1)
    os.unlink(cache.path(d))
    assert cache.open(d) is None and cache.entry(d) is None and cache.total == 0
    cache.close()
