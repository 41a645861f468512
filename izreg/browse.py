# -*- test-case-name: tests.http.test_browse -*-
"""
What is stored, for people: the repositories of an account and the
manifests of a repository, with tags, sizes, platforms and device pulls.

The same documents serve the browse API (``/v2/_izreg/...``, see
``docs/api.rst``) and ``izreg images``. Repository counters come from the
index (L{izreg.storage.refs}), so a page of repositories costs one read per
repository. A page of manifests parses each manifest once; an image's
platform is read from its (small) config blob, so L{Browser.manifests} may
block: the server runs it in a thread.
"""

from __future__ import annotations

import json
from typing import Any

from izreg.core.digest import Digest
from izreg.core.errors import RegistryError
from izreg.core.manifest import Manifest, parse_manifest
from izreg.storage.audit import iso

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})
#: config blobs larger than this are not read for a platform
MAX_CONFIG = 256 * 1024
_CACHE_SIZE = 4096


def kind_of(manifest: Manifest) -> str:
    """image, index, helm-chart, signature, sbom or artifact."""
    if manifest.is_index:
        return "index"
    config_type = manifest.config.media_type if manifest.config else ""
    artifact = (manifest.artifact_type or "").lower()
    if config_type == HELM_CONFIG or artifact == HELM_CONFIG:
        return "helm-chart"
    if "signature" in artifact or ".sig" in artifact or "cosign" in artifact:
        return "signature"
    if any(word in artifact for word in ("sbom", "spdx", "cyclonedx")):
        return "sbom"
    if config_type in IMAGE_CONFIGS and artifact in IMAGE_CONFIGS:
        return "image"
    return "artifact"


def platform_text(platform: dict | None) -> str | None:
    if not isinstance(platform, dict) or not platform.get("os") or not platform.get("architecture"):
        return None
    parts = [platform["os"], platform["architecture"]]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(str(p) for p in parts)


class Browser:
    """
    @param index: the L{izreg.storage.lmdbindex.Index}.
    @param blobs: the blob store (only C{open} is used, for config blobs).
    @param devices: the L{izreg.auth.devicestore.DeviceStore} (pull records), or C{None}.
    """

    def __init__(self, index, blobs, devices=None) -> None:
        self.index = index
        self.blobs = blobs
        self.devices = devices
        self._platforms: dict[str, str | None] = {}

    def repositories(self, account: str, limit: int, last: str | None) -> tuple[list[dict], bool]:
        found, more = self.index.list_repo_stats(f"{account}/", last, limit)
        return [self.repository(name, stats) for name, stats in found], more

    @staticmethod
    def repository(name: str, stats: dict) -> dict:
        return {
            "name": name,
            "manifests": stats["manifests"],
            "tags": stats["tags"],
            "size": stats["size"],
            "unique_size": stats["unique"],
            "last_push": iso(stats["pushed"]),
        }

    def manifests(self, name: str, limit: int, last: str | None) -> tuple[list[dict], bool]:
        """A page of the repository's manifests, by digest (blocking: reads config blobs)."""
        found, more = self.index.list_manifests(name, last, limit)
        return [self.describe(name, digest, meta, data, tags) for digest, meta, data, tags in found], more

    def describe(self, name: str, digest: str, meta: dict, data: bytes, tags: list[str]) -> dict:
        try:
            manifest = parse_manifest(data, meta["mediaType"])
        except RegistryError:
            manifest = None
        count, last_pulled = self.devices.pulls_of(name, digest) if self.devices is not None else (0, None)
        kind = kind_of(manifest) if manifest is not None else "artifact"
        artifact_type = None
        if manifest is not None and kind != "image":
            artifact_type = manifest.artifact_type
        return {
            "digest": digest,
            "mediaType": meta["mediaType"],
            "artifactType": artifact_type,
            "kind": kind,
            "tags": sorted(tags),
            "platforms": self._platforms_of(name, manifest) if manifest is not None else [],
            "size": self.total_size(name, data, manifest),
            "pushed": iso(meta.get("created")),
            "last_pulled": iso(last_pulled),
            "devices": {"count": count, "last_pulled": iso(last_pulled)},
            "annotations": (manifest.annotations or {}) if manifest is not None else {},
            "subject": meta.get("subject"),
        }

    def total_size(self, name: str, data: bytes, manifest: Manifest | None, depth: int = 0) -> int:
        """Manifest + config + layers; an index: its own bytes and each child's total."""
        total = len(data)
        if manifest is None:
            return total
        total += sum(d.size for d in manifest.required_blobs())
        for child in manifest.children:
            found = self.index.get_manifest(name, child.digest) if depth < 4 else None
            if found is None:
                total += child.size
                continue
            try:
                parsed = parse_manifest(found[1], found[0]["mediaType"])
            except RegistryError:
                parsed = None
            total += self.total_size(name, found[1], parsed, depth + 1)
        return total

    def _platforms_of(self, name: str, manifest: Manifest) -> list[str]:
        if manifest.is_index:
            seen = []
            for child in manifest.children:
                text = platform_text(child.platform)
                if text and text not in seen:
                    seen.append(text)
            return seen
        config = manifest.config
        if config is None or config.media_type not in IMAGE_CONFIGS or config.size > MAX_CONFIG:
            return []
        text = self._config_platform(config.digest)
        return [text] if text else []

    def _config_platform(self, digest: Digest) -> str | None:
        key = str(digest)
        if key in self._platforms:
            return self._platforms[key]
        text = None
        reader = self.blobs.open(digest)
        if reader is not None:
            try:
                raw = reader.read(MAX_CONFIG + 1)
                # a reader that must wait on the network answers a Deferred: no platform then
                text = platform_text(json.loads(raw)) if isinstance(raw, bytes) else None
            except (ValueError, OSError, TypeError):
                text = None
            finally:
                reader.close()
        if len(self._platforms) >= _CACHE_SIZE:
            self._platforms.clear()
        self._platforms[key] = text
        return text


def usage(index, account: str) -> dict[str, Any]:
    """Stored bytes of an account: manifests, plus every blob its repositories reference, each once."""
    blobs = index.account_blobs(account)
    blob_bytes = 0
    for blob in blobs:
        record = index.blob_record(Digest.parse(blob))
        blob_bytes += record["size"] if record else 0
    repos, _ = index.list_repo_stats(f"{account}/", None, 10**9)
    manifest_bytes = sum(stats["manifest_bytes"] for _, stats in repos)
    return {"account": account, "repositories": len(repos), "manifests": sum(s["manifests"] for _, s in repos),
            "blobs": len(blobs), "size": blob_bytes + manifest_bytes}

