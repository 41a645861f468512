# -*- test-case-name: tests.core.test_manifest -*-
"""
Manifest parsing and validation: OCI image manifests and indexes, Docker
schema2 manifests and manifest lists, and any OCI artifact.

A parsed L{Manifest} says what the registry must check (the blobs and child
manifests it references) and what it must index (its subject, for the
referrers API). The bytes themselves are stored untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError

#: the OCI empty JSON blob ``{}``, used as the config of many artifacts
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = Digest.of(EMPTY_JSON)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = field(default=None, compare=False, hash=False)
    foreign: bool = False
    platform: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Manifest:
    """What the registry needs to know about a pushed manifest."""

    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None = field(default=None, compare=False, hash=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_TYPES

    def required_blobs(self) -> tuple[Descriptor, ...]:
        """Blobs that must be in the repository (foreign layers are not)."""
        blobs = ((self.config,) if self.config else ()) + self.layers
        return tuple(d for d in blobs if not d.foreign)

    def referrer_descriptor(self, digest: Digest, size: int) -> Descriptor:
        """This manifest as an entry of its subject's referrers index."""
        return Descriptor(self.media_type, digest, size, self.artifact_type, self.annotations)


def _invalid(reason: str, **detail: Any) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, {"reason": reason, **detail})


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(f"{where}.annotations must be a map of strings")
    return value


def _string(obj: dict, key: str, where: str, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _invalid(f"{where}.{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}.{key} must be a non-empty string")
    return value


def parse_descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise _invalid(f"{where} must be an object")
    media_type = _string(obj, "mediaType", where, required=True)
    digest_text = _string(obj, "digest", where, required=True)
    try:
        digest = Digest.parse(digest_text)
    except RegistryError as e:
        raise _invalid(f"{where}.digest is invalid", digest=digest_text[:200]) from e
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    urls = obj.get("urls")
    if urls is not None and (not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
        raise _invalid(f"{where}.urls must be a list of strings")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform must be an object")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_string(obj, "artifactType", where),
        annotations=_annotations(obj.get("annotations"), where),
        foreign=bool(urls),
        platform=platform,
    )


def _descriptors(obj: dict, key: str, required: bool) -> tuple[Descriptor, ...]:
    value = obj.get(key)
    if value is None:
        if required:
            raise _invalid(f"{key} is required")
        return ()
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list")
    return tuple(parse_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))


def _effective_type(body_type: str | None, header_type: str, obj: dict) -> str:
    if body_type is not None:
        if body_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
            raise _invalid("Docker schema 1 manifests are not supported")
        if body_type not in mt.MANIFEST_TYPES:
            raise _invalid("unsupported manifest media type", mediaType=body_type)
        if (header_type in mt.MANIFEST_TYPES or header_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED)) and header_type != body_type:
            raise _invalid("Content-Type does not match the manifest's mediaType", contentType=header_type, mediaType=body_type)
        return body_type
    if header_type in mt.MANIFEST_TYPES:
        return header_type
    if header_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise _invalid("Docker schema 1 manifests are not supported")
    # no mediaType field (image-spec 1.0 / Helm 3.0-3.6) and a generic header: go by the shape
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "config" in obj:
        return mt.OCI_MANIFEST
    raise _invalid("cannot tell the manifest's media type", contentType=header_type)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _no_surrogates(value):
    """Raise on a string (key or value, at any depth) holding a lone surrogate (\\ud800 escapes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate: not Unicode text") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_json(data: bytes):
    """
    Parse a manifest as the OCI spec requires: UTF-8 JSON (no UTF-16/32, no
    BOM), no NaN or Infinity, no lone surrogates. Raises C{MANIFEST_INVALID}.
    """
    try:
        text = data.decode("utf-8")  # json.loads(bytes) would also take UTF-16 and UTF-32
        if text.startswith("\ufeff"):
            raise ValueError("a byte order mark is not allowed")
        obj = json.loads(text, parse_constant=_no_constant)
        _no_surrogates(obj)
    except UnicodeDecodeError:
        raise _invalid("not UTF-8: a manifest is UTF-8 JSON") from None
    except ValueError as e:
        raise _invalid("not valid JSON", error=str(e)[:200]) from None
    except RecursionError:
        raise _invalid("JSON nested too deeply") from None
    return obj


def parse_manifest(data: bytes, content_type: str | bytes | None) -> Manifest:
    """Parse and validate manifest bytes; raise C{MANIFEST_INVALID} with a reason."""
    obj = strict_json(data)
    if not isinstance(obj, dict):
        raise _invalid("a manifest must be a JSON object")
    schema = obj.get("schemaVersion")
    if schema == 1:
        raise _invalid("Docker schema 1 manifests are not supported")
    if type(schema) is not int or schema != 2:
        raise _invalid("schemaVersion must be 2")
    media_type = _effective_type(_string(obj, "mediaType", "manifest"), mt.base_type(content_type), obj)
    subject = parse_descriptor(obj["subject"], "subject") if obj.get("subject") is not None else None
    # "empty or missing" are the same to the referrers API (OCI distribution-spec v1.1, listing referrers)
    artifact_type = None if obj.get("artifactType") == "" else _string(obj, "artifactType", "manifest")
    annotations = _annotations(obj.get("annotations"), "manifest")
    if media_type in mt.INDEX_TYPES:
        children = _descriptors(obj, "manifests", required=True)
        return Manifest(media_type, None, (), children, subject, artifact_type, annotations)
    config = parse_descriptor(obj.get("config"), "config")
    layers = _descriptors(obj, "layers", required=media_type == mt.DOCKER_MANIFEST)
    return Manifest(media_type, config, layers, (), subject, artifact_type or config.media_type, annotations)


def referrers_index(descriptors: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a referrers response: an OCI image index of descriptors."""
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
