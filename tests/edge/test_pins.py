"""
The edge's pin refresh rounds (izreg/edge/pins.py): a pin added while a round
is in flight (``izreg-edge pin`` writes the cache's LMDB) is refreshed in that
round, not left for the next one. A real edge cache and upstream client, to a
real HTTP server on loopback standing in for the registry; the test holds the
first pin's answer to add the second meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from izreg.core.digest import Digest
from izreg.edge.cache import EdgeCache
from izreg.edge.cli import pin_status
from izreg.edge.pins import Pinner
from izreg.edge.proxy import EdgeAPI
from izreg.edge.upstream import Upstream

ACCOUNT = "0123456789abcdef0123456789abcdef"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def manifest(name: str) -> bytes:
    """An image manifest with nothing to fetch beside itself."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "annotations": {"n": name}}).encode()


class Registry(Resource):
    """Manifests by tag and digest; the answer to C{held}'s tag waits for C{release}; HEADs counted by repository."""

    isLeaf = True

    def __init__(self, images: dict[str, bytes], held: str | None = None, codes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.images, self.held = images, held
        self.codes = codes or {}  # repository -> the status it answers instead (404, 401, 403)
        self.asked = defer.Deferred()  # the held tag was asked for
        self.release = defer.Deferred()
        self.heads: dict[str, int] = {}

    def render(self, request):
        repo, _, reference = request.path.decode().removeprefix("/v2/").partition("/manifests/")
        if repo in self.codes:
            request.setResponseCode(self.codes[repo])
            return b""
        data = self.images[repo]
        if request.method == b"HEAD":
            self.heads[repo] = self.heads.get(repo, 0) + 1
        request.setHeader(b"Content-Type", OCI_MANIFEST.encode())
        request.setHeader(b"Docker-Content-Digest", str(Digest.of(data)).encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        body = b"" if request.method == b"HEAD" else data
        if repo == self.held and not self.release.called:
            self.asked.callback(None)
            self.release.addCallback(lambda _: (request.write(body), request.finish()))
            return NOT_DONE_YET
        return body


FIRST, SECOND = f"{ACCOUNT}/first", f"{ACCOUNT}/second"


@contextlib.asynccontextmanager
async def pinner_before(registry: Registry, path, now=time.time):
    """A Pinner of a real edge cache in C{path} (C{FIRST}'s pin in its config), over loopback HTTP to C{registry}."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(registry))
    upstream = Upstream(reactor, f"http://127.0.0.1:{port.getHost().port}", BrowserLikePolicyForHTTPS(), 5, 10)
    cache = EdgeCache(str(path), limit=10_000_000)
    api = EdgeAPI()
    api.bind(upstream, cache, None, now, 4 * 1024 * 1024)
    pinner = Pinner(api, (f"{FIRST}:v1",))
    pinner.adopt_config_pins()
    try:
        yield pinner, cache, port
    finally:
        await upstream.close()
        if port.connected:
            await port.stopListening()
        cache.close()


@pytest_twisted.ensureDeferred
async def test_a_pin_added_during_a_round_is_refreshed_in_that_round(tmp_path):
    first, second = FIRST, SECOND
    registry = Registry({first: manifest("first"), second: manifest("second")}, held=first)
    async with pinner_before(registry, tmp_path) as (pinner, cache, _):
        round_ = defer.ensureDeferred(pinner.refresh())
        await registry.asked  # the round is in flight, on the first pin
        assert cache.pin(f"{second}:v1")  # as izreg-edge pin does, meanwhile
        registry.release.callback(None)
        await round_
        pins = cache.pins()
        assert pins[f"{first}:v1"]["digest"] == str(Digest.of(manifest("first")))
        assert pins[f"{second}:v1"]["digest"] == str(Digest.of(manifest("second")))  # before: at the next round


@pytest_twisted.ensureDeferred
async def test_fetch_new_fetches_only_the_pins_added_since_its_last_look(tmp_path):
    """What the running edge does every 2 s for ``izreg-edge pin`` (not the whole round of every pin)."""
    first, second = FIRST, SECOND
    registry = Registry({first: manifest("first"), second: manifest("second")})
    async with pinner_before(registry, tmp_path) as (pinner, cache, _):
        await pinner.fetch_new()  # the config's pin is the start's round's, not new
        assert registry.heads == {} and cache.pins()[f"{first}:v1"]["digest"] is None
        assert cache.pin(f"{second}:v1")  # as izreg-edge pin does
        await pinner.fetch_new()
        assert registry.heads == {second: 1}
        assert cache.pins()[f"{second}:v1"]["digest"] == str(Digest.of(manifest("second")))
        await pinner.fetch_new()  # nothing new
        assert registry.heads == {second: 1}
        cache.unpin(f"{second}:v1")
        await pinner.fetch_new()
        cache.pin(f"{second}:v1")  # pinned again: new again
        await pinner.fetch_new()
        assert registry.heads == {second: 2}


@pytest_twisted.ensureDeferred
async def test_izreg_edge_pins_says_why_a_pin_is_not_fetched(tmp_path):
    """
    ``izreg-edge pins`` said "not fetched yet" for a pin the registry answered 404 (and for one it refused,
    or could not be reached for): it says what happened, and when; "not fetched yet" only if never tried.
    """
    gone, refused, denied, never = (f"{ACCOUNT}/{name}" for name in ("gone", "refused", "denied", "never"))
    registry = Registry({FIRST: manifest("first")}, codes={gone: 404, refused: 401, denied: 403})
    clock = [1_796_000_000.0]  # 2026-11-30T00:53:20Z
    async with pinner_before(registry, tmp_path, now=lambda: clock[0]) as (pinner, cache, port):
        for repo in (gone, refused, denied):
            cache.pin(f"{repo}:v1")
        await pinner.refresh()
        cache.pin(f"{never}:v1")
        at = "2026-11-30T00:53:20Z"
        status = {ref: pin_status(state) for ref, state in cache.pins().items()}
        assert status == {
            f"{FIRST}:v1": at,
            f"{gone}:v1": f"not found on the registry (404: no such repository or tag) at {at}",
            f"{refused}:v1": f"the registry refused this gateway's device certificate (401) at {at}",
            f"{denied}:v1": f"the registry denied this gateway (403: a device pulls from its own account only) at {at}",
            f"{never}:v1": "not fetched yet",
        }
        # the tag deleted later: the image stays cached, and the listing says both
        registry.codes[FIRST] = 404
        clock[0] += 3600
        await pinner.refresh()
        later = "2026-11-30T01:53:20Z"
        assert pin_status(cache.pins()[f"{FIRST}:v1"]) == (
            f"fetched {at}; then not found on the registry (404: no such repository or tag) at {later}")
        # the registry unreachable: every pin of the round says so
        await port.stopListening()
        await pinner.upstream.close()  # the kept-alive connections too: a new one is refused
        clock[0] += 3600
        await pinner.refresh()
        pins = cache.pins()
        assert all(pins[ref]["problem"].startswith("registry unreachable: ") for ref in pins), pins
        assert pin_status(pins[f"{never}:v1"]).startswith("registry unreachable: ")
        assert pin_status(pins[f"{never}:v1"]).endswith(" at 2026-11-30T02:53:20Z")
        assert pins[f"{FIRST}:v1"]["digest"] == str(Digest.of(manifest("first")))  # what it holds stays


@pytest_twisted.ensureDeferred
async def test_a_pin_fetched_again_drops_its_problem(tmp_path):
    registry = Registry({FIRST: manifest("first")}, codes={FIRST: 404})
    async with pinner_before(registry, tmp_path, now=lambda: 1_796_000_000.0) as (pinner, cache, _):
        await pinner.refresh()
        assert cache.pins()[f"{FIRST}:v1"]["problem"].startswith("not found on the registry (404")
        del registry.codes[FIRST]
        await pinner.refresh()
        assert pin_status(cache.pins()[f"{FIRST}:v1"]) == "2026-11-30T00:53:20Z"
        registry.codes[FIRST] = 503
        await pinner.refresh()
        assert pin_status(cache.pins()[f"{FIRST}:v1"]) == (
            "fetched 2026-11-30T00:53:20Z; then the registry answered 503 at 2026-11-30T00:53:20Z")
        del registry.codes[FIRST]
        await pinner.refresh()  # the same digest, all cached: only the problem goes
        assert pin_status(cache.pins()[f"{FIRST}:v1"]) == "2026-11-30T00:53:20Z"


def test_izreg_edge_pins_has_a_header_and_aligned_columns(tmp_path):
    import io

    from izreg.edge.cli import main

    root = str(tmp_path / "cache")
    cache = EdgeCache(root, limit=0)
    try:
        digest = str(Digest.of(manifest("first")))
        cache.pin(f"{FIRST}:v1")
        cache.set_pinned(f"{FIRST}:v1", digest, [digest], 1_796_000_000.0)
        cache.pin(f"{ACCOUNT}/a-longer-name:v2")
        cache.set_pin_problem(f"{ACCOUNT}/a-longer-name:v2", "the registry answered 503", 1_796_000_000.0)
        cache.pin(f"{ACCOUNT}/b:v3")
    finally:
        cache.env.close()

    def run(*argv) -> str:
        out = io.StringIO()
        assert main(["--cache-dir", root, *argv], stdout=out) == 0
        return out.getvalue()

    lines = run("pins").splitlines()
    width = len(f"{ACCOUNT}/a-longer-name:v2")
    assert lines == [
        f"{'PIN':<{width}}  {'DIGEST':<{len(digest)}}  STATUS",
        f"{ACCOUNT}/a-longer-name:v2  {'-':<{len(digest)}}  the registry answered 503 at 2026-11-30T00:53:20Z",
        f"{ACCOUNT}/b:v3{' ' * (width - len(f'{ACCOUNT}/b:v3'))}  {'-':<{len(digest)}}  not fetched yet",
        f"{FIRST}:v1{' ' * (width - len(f'{FIRST}:v1'))}  {digest}  2026-11-30T00:53:20Z",
    ]
    # the form for scripts is as it was: one JSON object, no header
    assert json.loads(run("pins", "--json"))[f"{FIRST}:v1"]["digest"] == digest
    # --cache-dir after the command too, as a newcomer adds it ('unrecognized arguments: --cache-dir' before)
    out = io.StringIO()
    assert main(["pins", "--json", "--cache-dir", root], stdout=out) == 0
    assert json.loads(out.getvalue())[f"{FIRST}:v1"]["digest"] == digest
    # one given last with no value: said to need one ('unrecognized arguments: --cache-dir' before)
    for option in ("--cache-dir", "--config"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main(["pins", option], stdout=out)
        assert exited.value.code == 2 and f"error: argument {option}: expected one argument" in err.getvalue()
    run("unpin", f"{FIRST}:v1")
    run("unpin", f"{ACCOUNT}/a-longer-name:v2")
    run("unpin", f"{ACCOUNT}/b:v3")
    assert run("pins") == "no pins (izreg-edge pin ACCOUNT/APP:TAG adds one)\n"
