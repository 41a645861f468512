# -*- test-case-name: tests.storage.test_webhooks -*-
"""
Registry events as CloudEvents 1.0 (structured JSON mode) and their
signature (pure).

A webhook receives one event per POST, ``Content-Type:
application/cloudevents+json``, with ``Izreg-Signature: sha256=<hex>``: the
HMAC-SHA256 of the exact body bytes under the webhook's secret. Check it
with a constant-time compare before trusting the body.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from typing import Any

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
SIGNATURE_HEADER = "Izreg-Signature"
DELIVERY_HEADER = "Izreg-Delivery"

#: webhook event kinds (``--events``) -> CloudEvents type
PUSH, DELETE, PULL = "push", "delete", "pull"
KINDS = (PUSH, DELETE, PULL)
TYPES = {
    PUSH: "io.izreg.manifest.pushed",
    DELETE: "io.izreg.manifest.deleted",
    PULL: "io.izreg.manifest.pulled",
}


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"push,delete"`` -> ("push", "delete"); ValueError on an unknown kind."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"events must be a comma-separated list of {', '.join(KINDS)}, not {text!r}")
    return kinds


def rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloud_event(kind: str, event_id: str, now: float, *, account: str, repository: str, digest: str | None,
                tag: str | None = None, media_type: str | None = None, actor: str | None = None) -> dict[str, Any]:
    subject = f"{repository}:{tag}" if tag else f"{repository}@{digest}"
    data = {"account": account, "repository": repository, "tag": tag, "digest": digest,
            "mediaType": media_type, "actor": actor}
    return {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": f"/izreg/{account}",
        "type": TYPES[kind],
        "subject": subject,
        "time": rfc3339(now),
        "datacontenttype": "application/json",
        "data": data,
    }


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: bytes, data: bytes) -> str:
    """The ``Izreg-Signature`` header value for C{data}."""
    return "sha256=" + hmac.new(secret, data, hashlib.sha256).hexdigest()


def verify(secret: bytes, data: bytes, header: str) -> bool:
    """For receivers (and tests): does C{header} sign C{data} under C{secret}? Constant time."""
    return hmac.compare_digest(signature(secret, data), header or "")
