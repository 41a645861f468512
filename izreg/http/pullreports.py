# -*- test-case-name: tests.http.test_pull_reports -*-
"""
``POST /v2/_izreg/pulls``: an edge gateway reports the pulls it served from
its cache, so the registry's pull records (and the in-use protection that
reads them) also see images a gateway runs offline.

Body (at most L{MAX_ENTRIES} entries, L{BODY_LIMIT} bytes)::

    {"pulls": [{"repository": "<acct>/app", "digest": "sha256:..", "time": <unix seconds>}]}

Only a device (client certificate on the TLS listener) may report, and only
pulls of its own account's repositories; each entry is recorded as a pull
by that device through the L{PullRecorder}. A time in the future is taken
as now. The whole batch is checked before anything is recorded.
"""

from __future__ import annotations

import json
import math

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository

PATH = b"/v2/_izreg/pulls"
MAX_ENTRIES = 1000
#: 1,000 entries with long names and sha512 digests fit; a larger body is refused
BODY_LIMIT = 512 * 1024


def _invalid(reason: str, index: int | None = None) -> RegistryError:
    detail = {"reason": reason} if index is None else {"reason": reason, "entry": index}
    return RegistryError(ErrorCode.BODY_INVALID, detail, "invalid pull report")


def check_reporter(principal) -> None:
    """Raise L{RegistryError} C{DENIED} unless C{principal} (the request's, or C{None}) is a device."""
    if principal is None or principal.kind != "device":
        raise RegistryError(ErrorCode.DENIED, None, "only a device certificate may report pulls")


def parse(body: bytes, account: str, now: float) -> list[tuple[str, str, float]]:
    """The body's entries as (repository, digest, time); raise L{RegistryError} for any bad one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply for json
        raise _invalid("the body is not JSON") from None
    pulls = document.get("pulls") if isinstance(document, dict) else None
    if not isinstance(pulls, list):
        raise _invalid('expected {"pulls": [...]}')
    if len(pulls) > MAX_ENTRIES:
        raise _invalid(f"at most {MAX_ENTRIES} entries per report")
    out = []
    for i, entry in enumerate(pulls):
        if not isinstance(entry, dict) or set(entry) != {"repository", "digest", "time"}:
            raise _invalid("each entry has exactly repository, digest and time", i)
        when = entry["time"]
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when) or when < 0:
            raise _invalid("time must be non-negative unix seconds", i)
        if not isinstance(entry["repository"], str) or not isinstance(entry["digest"], str):
            raise _invalid("repository and digest must be strings", i)
        repository = Repository.parse(entry["repository"])
        digest = Digest.parse(entry["digest"])
        if repository.account != account:
            raise RegistryError(ErrorCode.DENIED, {"entry": i, "repository": repository.name},
                                "a device may only report pulls of its own account")
        out.append((repository.name, str(digest), min(float(when), now)))
    return out
