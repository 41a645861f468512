# -*- test-case-name: tests.http.test_conditional -*-
"""
Conditional GET and HEAD of a manifest or blob (RFC 9110 13): the ETag of
both is their digest, quoted, which never changes for a URL that names it.

- C{If-None-Match} naming that ETag (or ``*``): 304 Not Modified, no body
  (as CNCF distribution answers a manifest, and Go's C{http.ServeContent} a blob);
- C{If-Range} (with C{Range}) that is not that ETag, strongly compared (a
  date never matches: there is no C{Last-Modified}): the C{Range} is
  ignored and the whole content sent (200), never a part of something else.
"""

from __future__ import annotations

import re

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
