# -*- test-case-name: tests.http.test_conditional -*-
"""
Conditional GET and HEAD of a manifest or blob (RFC 9110 13): the ETag of
both is their digest, quoted, which never changes for a URL that names it.

- C{If-Match} that does not name that ETag (strongly compared) nor is
  ``*``: 412 Precondition Failed, first (RFC 9110 13.2.2): a client that
  asks for a tag only while it still names the manifest it knows;
- C{If-None-Match} naming that ETag (or ``*``): 304 Not Modified, no body
  (as CNCF distribution answers a manifest, and Go's C{http.ServeContent} a blob);
- C{If-Range} (with C{Range}) that is not that ETag, strongly compared (a
  date never matches: there is no C{Last-Modified}): the C{Range} is
  ignored and the whole content sent (200), never a part of something else.
"""

from __future__ import annotations

import re

from izreg.core.errors import ErrorCode, RegistryError

#: one entity-tag of a list: optional weakness, then an opaque quoted string
_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque) entity-tags of a header's list; C{None}: not a list of entity-tags."""
    tags, at = [], 0
    while at < len(value):
        found = _TAG.match(value, at)
        if found is None:
            return None
        tags.append((found.group(1) is not None, found.group(2)))
        at = found.end()
    return tags


def precondition_holds(if_match: str | None, etag: str) -> bool:
    """Whether C{If-Match} lets the request go on (RFC 9110 13.1.1: strong comparison; ``*``: it exists)."""
    if if_match is None or if_match.strip() == "*":
        return True
    tags = _tags(if_match)
    return tags is not None and any(not weak and opaque == etag[1:-1] for weak, opaque in tags)


def check_preconditions(if_match: str | None, etag: str) -> None:
    """Raise the 412 of a failed C{If-Match} (evaluated before C{If-None-Match})."""
    if not precondition_holds(if_match, etag):
        raise RegistryError(ErrorCode.PRECONDITION_FAILED, {"etag": etag, "if_match": if_match[:200]},
                            headers={"ETag": etag})


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether C{If-None-Match} matches C{etag} (the quoted ETag sent): a 304 for GET and HEAD (weak comparison)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = _tags(if_none_match)
    return tags is not None and any(opaque == etag[1:-1] for _, opaque in tags)


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether a C{Range} is to be served: no C{If-Range}, or one that strongly matches C{etag}."""
    if if_range is None:
        return True
    return if_range.strip() == etag  # a weak tag (W/"...") or a date never matches
