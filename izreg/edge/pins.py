# -*- test-case-name: tests.edge.test_edge_e2e -*-
"""
Pinned images: fetched ahead of time, refreshed when their tag moves,
never evicted.

A pin is ``<account>/<app>:<tag>`` (the config's ``pin`` list, or
``izreg-edge pin``, which writes to the cache's LMDB while the edge runs:
the edge reads the pins every L{izreg.edge.config.NEW_PIN_CHECK} seconds, and fetches a new
one at once, in a round of its own, L{Pinner.fetch_new}).
Every refresh round (a timer, and once at start) resolves each tag at the
registry (the pins are read again before a round ends: one added while a
round is in flight, fetching a large image say, is refreshed in that round,
not at the next one); when it points somewhere new, or something it needs is missing,
the manifest (for an index, every child manifest), the configs and the
layers are fetched into the cache and the pin's digest set is replaced:
the cache never evicts a digest of a pin.
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from izreg.edge.config import parse_pin
from izreg.edge.proxy import MANIFEST_ACCEPT, _digest_or_none
from izreg.edge.upstream import Unreachable, collect

log = Logger()


def answered(code: int) -> str:
    """What a pin's status says of the registry's answer C{code} to its tag (C{izreg-edge pins})."""
    if code == 404:
        return "not found on the registry (404: no such repository or tag)"
    if code == 401:
        return "the registry refused this gateway's device certificate (401)"
    if code == 403:
        return "the registry denied this gateway (403: a device pulls from its own account only)"
    return f"the registry answered {code}"


class Pinner:
    def __init__(self, api, config_pins: tuple[str, ...]) -> None:
        self.api = api
        self.cache = api.cache
        self.upstream = api.upstream
        self.config_pins = config_pins
        self._running = False
        #: the pins at the last look of L{fetch_new} (the start's round fetches those there at start)
        self._seen: set[str] = set()
        #: pins fetched (a new digest, or content missing) and tries that failed, since the start (the metrics)
        self.fetched = self.failed = 0

    def adopt_config_pins(self) -> None:
        for ref in self.config_pins:
            self.cache.pin(ref)
        self._seen = self.cache.pin_refs()

    async def fetch_new(self) -> None:
        """
        A round of the pins added since the last look (``izreg-edge pin``), if any and if no round is in
        flight (that one reads the pins again before it ends; the next look sees those it did not).
        """
        if self._running:
            return
        pins = self.cache.pin_refs()
        new, self._seen = pins - self._seen, pins  # one unpinned, then pinned again: new again
        if new:
            await self.refresh(only=new)

    async def refresh(self, only: set[str] | None = None) -> None:
        """One round: every pin (or those in C{only}), then the pins added meanwhile (read again until none is new)."""
        if self._running:
            return  # the round in flight reads the pins again before it ends
        self._running = True
        done: set[str] = set()
        try:
            while todo := sorted((ref, state) for ref, state in self.cache.pins().items()
                                 if ref not in done and (only is None or ref in only)):
                for at, (ref, state) in enumerate(todo):
                    done.add(ref)
                    try:
                        await self.refresh_one(ref, state)
                    except Unreachable as e:
                        emit = log.info if self.upstream.first_offline("pins") else log.debug  # every interval: once an outage
                        emit("pin refresh of {ref} skipped: registry unreachable ({reason})", ref=ref, reason=e.reason)
                        for skipped, _ in todo[at:]:  # not tried, for the same reason: izreg-edge pins says so
                            self._problem(skipped, f"registry unreachable: {e.reason}")
                        return
                    except Exception as e:
                        error = str(e) or type(e).__name__
                        log.error("pin refresh of {ref} failed: {error}", ref=ref, error=error)
                        self._problem(ref, error)
        finally:
            self._running = False

    async def refresh_one(self, ref: str, state: dict) -> None:
        repo, tag = parse_pin(ref)
        response = await self.upstream.request("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": [MANIFEST_ACCEPT]})
        await collect(response, 0)
        if response.code != 200:
            self._problem(ref, answered(response.code))  # before the log line
            log.warn("pin {ref}: the registry answered {code}", ref=ref, code=response.code)
            return
        digest = _digest_or_none(response.headers.getRawHeaders(b"docker-content-digest", [None])[0])
        if digest is None:
            self._problem(ref, "the registry answered without a Docker-Content-Digest")
            return
        self.cache.set_tag(repo, tag, digest, "", self.api.now())
        if state.get("digest") == digest and all(self.cache.entry(d) for d in state.get("digests", [])):
            if state.get("problem"):
                self.cache.pin_checked(ref, self.api.now())
            return
        digests = await self._fetch_image(repo, digest)
        self.cache.set_pinned(ref, digest, digests, self.api.now())
        self.fetched += 1
        log.info("pinned {ref} at {digest} ({n} digests cached)", ref=ref, digest=digest, n=len(digests))

    def _problem(self, ref: str, problem: str) -> None:
        """The try of pin C{ref} failed: why, for ``izreg-edge pins``; counted for the metrics."""
        self.failed += 1
        self.cache.set_pin_problem(ref, problem, self.api.now())

    async def _fetch_image(self, repo: str, digest: str) -> list[str]:
        """The manifest, its children and every blob they name, into the cache; their digests."""
        wanted = [digest]
        blobs: list[str] = []
        seen: list[str] = []
        while wanted:
            current = wanted.pop(0)
            seen.append(current)
            data = await self._manifest(repo, current)
            document = json.loads(data)
            for child in document.get("manifests", []) or []:
                if child.get("digest") and child["digest"] not in seen:
                    wanted.append(child["digest"])
            config = document.get("config")
            if isinstance(config, dict) and config.get("digest"):
                blobs.append(config["digest"])
            for layer in document.get("layers", []) or []:
                if layer.get("digest"):
                    blobs.append(layer["digest"])
        for blob in dict.fromkeys(blobs):
            if self.cache.entry(blob) is not None:
                continue
            download = self.api.downloads.get(blob) or self.api.start_download(repo, blob)
            await download.headers()
            if download.reply is not None:
                raise RuntimeError(f"blob {blob}: the registry answered {download.reply.code}")
            if not await download.done():
                raise RuntimeError(f"blob {blob}: {download.error}")
        return seen + list(dict.fromkeys(blobs))

    async def _manifest(self, repo: str, digest: str) -> bytes:
        opened = self.cache.open(digest)
        if opened is not None:
            with opened[1] as f:
                return f.read()
        fetched = await self.api.fetch_manifest(repo, digest)
        if fetched is None:
            raise RuntimeError(f"manifest {digest} is not at the registry")
        return fetched[0]

