# -*- test-case-name: tests.http.test_conditional -*-
"""
Conditional requests of a manifest or blob (RFC 9110 13): the ETag of both
is their digest, quoted, which never changes for a URL that names it.

Every method reads C{If-Match} and C{If-None-Match} the same way
(L{request_precondition}, before anything is looked up): a value that is
neither ``*`` nor a list of entity-tags (a digest left unquoted counts as
its quoted tag) is a 400 PRECONDITION_INVALID, never ignored nor taken for
a failed condition (docs/api.rst says why).
Then, for GET and HEAD:

- C{If-Match} that does not name that ETag (strongly compared) nor is
  ``*``: 412 Precondition Failed, first (RFC 9110 13.2.2): a client that
  asks for a tag only while it still names the manifest it knows;
- C{If-None-Match} naming that ETag (or ``*``): 304 Not Modified, no body
  (as CNCF distribution answers a manifest, and Go's C{http.ServeContent} a blob);
- C{If-Range} (with C{Range}) that is not that ETag, strongly compared (a
  date never matches: there is no C{Last-Modified}): the C{Range} is
  ignored and the whole content sent (200), never a part of something else.

A manifest PUT or DELETE hands its L{izreg.core.preconditions.Precondition}
to the metadata index, which checks it in the transaction that moves the
tag (a client that asked for a guarded write never gets an unguarded one).
"""

from __future__ import annotations

import re

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import ANY, Precondition, Tags, failed_message

#: one entity-tag of a list: optional weakness, then an opaque quoted string;
#: or a digest left unquoted (group 3), taken for its quoted tag, as CNCF
#: distribution takes it ("allow quoted or unquoted"), so that a client
#: written against it gets its 304 here too
_TAG = re.compile(r'\s*(?:(W/)?"([^"]*)"|([a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+))\s*(?:,|$)')
#: empty elements of a list (RFC 9110 5.6.1: accepted and ignored), as two lines of which one is empty join
_EMPTY = re.compile(r"[\s,]*")


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque) entity-tags of a header's list, empty elements ignored; C{None}: not a list of entity-tags."""
    tags, at = [], 0
    while (at := _EMPTY.match(value, at).end()) < len(value):
        found = _TAG.match(value, at)
        if found is None:
            return None
        tags.append((found.group(1) is not None, found.group(2) if found.group(3) is None else found.group(3)))
        at = found.end()
    return tags


def check_preconditions(expect: Precondition | None, digest: str) -> None:
    """Raise the 412 of a GET or HEAD whose C{If-Match} does not hold (evaluated before C{If-None-Match})."""
    if expect is not None and not expect.if_match_holds(digest):
        raise RegistryError(ErrorCode.PRECONDITION_FAILED, {"etag": f'"{digest}"', **expect.detail()},
                            failed_message("If-Match"), headers={"ETag": f'"{digest}"'})


def not_modified(expect: Precondition | None, digest: str) -> bool:
    """Whether C{If-None-Match} names C{digest} (or is ``*``): a 304 for GET and HEAD (weak comparison)."""
    return expect is not None and not expect.if_none_match_holds(digest)


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether a C{Range} is to be served: no C{If-Range}, or one that strongly matches C{etag}."""
    if if_range is None:
        return True
    return if_range.strip() == etag  # a weak tag (W/"...") or a date never matches


def request_precondition(request) -> Precondition | None:
    """The C{If-Match} and C{If-None-Match} of a request, every line of each (L{parse_precondition})."""
    headers = request.requestHeaders
    return parse_precondition(*(None if lines is None else [line.decode("latin-1") for line in lines]
                                for lines in (headers.getRawHeaders(b"If-Match"), headers.getRawHeaders(b"If-None-Match"))))


def parse_precondition(if_match: list[str] | None, if_none_match: list[str] | None) -> Precondition | None:
    """
    The precondition of a request from its C{If-Match} and C{If-None-Match}
    lines (several lines of one header are one list, RFC 9110 5.3): C{None}
    without either. If-Match compares strongly (a weak tag never matches),
    If-None-Match weakly (RFC 9110 13.1.1, 13.1.2). 400 PRECONDITION_INVALID
    for a value that is neither ``*`` nor a list of entity-tags.
    """
    if if_match is None and if_none_match is None:
        return None
    return Precondition(_tags_of("If-Match", if_match, strong=True),
                        _tags_of("If-None-Match", if_none_match, strong=False))


def _tags_of(header: str, lines: list[str] | None, strong: bool) -> Tags:
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
