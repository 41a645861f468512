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

A manifest PUT or DELETE turns both headers into a
L{izreg.core.preconditions.Precondition} (L{write_precondition}), which the
metadata index checks in the transaction that moves the tag; a value that
is neither ``*`` nor a list of entity-tags is a 400 there, never ignored (a
client that asked for a guarded write must not get an unguarded one).
"""

from __future__ import annotations

import re

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import ANY, Precondition, Tags

#: one entity-tag of a list: optional weakness, then an opaque quoted string
_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')
#: empty elements of a list (RFC 9110 5.6.1: accepted and ignored), as two lines of which one is empty join
_EMPTY = re.compile(r"[\s,]*")


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque) entity-tags of a header's list, empty elements ignored; C{None}: not a list of entity-tags."""
    tags, at = [], 0
    while (at := _EMPTY.match(value, at).end()) < len(value):
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


def write_precondition(if_match: list[str] | None, if_none_match: list[str] | None) -> Precondition | None:
    """
    The precondition of a PUT or DELETE from its C{If-Match} and C{If-None-Match}
    lines (several lines of one header are one list, RFC 9110 5.3): C{None}
    without either. If-Match compares strongly (a weak tag never matches),
    If-None-Match weakly (RFC 9110 13.1.1, 13.1.2). 400 PRECONDITION_INVALID
    for a value that is neither ``*`` nor a list of entity-tags.
    """
    if if_match is None and if_none_match is None:
        return None
    return Precondition(_write_tags("If-Match", if_match, strong=True),
                        _write_tags("If-None-Match", if_none_match, strong=False))


def _write_tags(header: str, lines: list[str] | None, strong: bool) -> Tags:
    if lines is None:
        return None
    value = ", ".join(lines)
    if value.strip() == "*":
        return ANY
    tags = _tags(value)
    if not tags:  # (only empty elements: a guard asked for, with nothing to compare)
        raise RegistryError(ErrorCode.PRECONDITION_INVALID, {"header": header, "value": value[:200]},
                            f"{header} is neither * nor a list of quoted entity-tags (\"<digest>\")")
    return frozenset(opaque for weak, opaque in tags if not (strong and weak))
