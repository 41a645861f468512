# -*- test-case-name: tests.core.test_mediatypes -*-
"""Media-type constants and ``Accept`` negotiation (pure)."""

from __future__ import annotations

from typing import Iterable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES
#: header values that say nothing about the manifest's type
GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


def base_type(value: str | bytes | None) -> str:
    """``Type/Sub; param=x`` -> ``type/sub`` (parameters are ignored, as the spec asks)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.split(";", 1)[0].strip().lower()


def parse_accept(values: Iterable[str | bytes]) -> frozenset[str]:
    """All media types named in one or more ``Accept`` headers (q-values ignored)."""
    types = set()
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        for part in value.split(","):
            kind = base_type(part)
            if kind:
                types.add(kind)
    return frozenset(types)


def acceptable(media_type: str, accepted: frozenset[str]) -> bool:
    """Whether a client that sent C{accepted} takes C{media_type} (no Accept = anything)."""
    if not accepted or "*/*" in accepted or media_type in accepted:
        return True
    major = media_type.split("/", 1)[0]
    return f"{major}/*" in accepted
