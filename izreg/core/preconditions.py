# -*- test-case-name: tests.core.test_preconditions -*-
"""
What a request asks of the manifest a reference names now (RFC 9110 13.1.1,
13.1.2: C{If-Match} and C{If-None-Match}). On a manifest PUT or DELETE, so
two clients racing to move a tag cannot silently overwrite each other; on a
GET or HEAD of a manifest or blob, C{current} is its digest (412, 304).

The metadata index checks it inside the write transaction that moves the
tag (L{izreg.storage.interfaces.IMetadataIndex.put_manifest}, C{delete_tag}):
the check and the write are one. C{current} is the digest the reference
names at that moment (a tag's manifest; for a digest, itself if the
repository has it), C{None} if none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from izreg.core.errors import ErrorCode, RegistryError

#: ``*``: any current manifest at all
ANY: Literal["*"] = "*"

Tags = frozenset[str] | Literal["*"] | None

#: the characters of one entity-tag a 412 says back (a sha512 digest is 135; the header line may hold 16 KiB)
_MAX_SHOWN = 200


@dataclass(frozen=True)
class Precondition:
    """
    C{if_match}: the reference must name one of these digests (the strong
    entity-tags of the header: a weak one never matches), or with L{ANY}
    anything; C{if_none_match}: it must name none of these, or with L{ANY}
    nothing at all (create-only). C{None}: no such header.
    """

    if_match: Tags = None
    if_none_match: Tags = None

    def holds(self, current: str | None) -> bool:
        return self.if_match_holds(current) and self.if_none_match_holds(current)

    def if_match_holds(self, current: str | None) -> bool:
        """Whether the C{If-Match} part holds (none: it does); a GET or HEAD that fails it is a 412."""
        return self.if_match is None or (current is not None and (self.if_match == ANY or current in self.if_match))

    def if_none_match_holds(self, current: str | None) -> bool:
        """Whether the C{If-None-Match} part holds (none: it does); a GET or HEAD that fails it is a 304."""
        return (self.if_none_match is None or current is None
                or (self.if_none_match != ANY and current not in self.if_none_match))

    def check(self, current: str | None) -> None:
        """Raise the 412 when it does not hold, naming the header that failed (If-Match first): nothing is to be written."""
        failed = ("If-Match" if not self.if_match_holds(current)
                  else "If-None-Match" if not self.if_none_match_holds(current) else None)
        if failed is not None:
            raise RegistryError(ErrorCode.PRECONDITION_FAILED, self.detail(), failed_message(failed))

    def detail(self) -> dict:
        """The error's detail: what was asked (never what the reference names, which a push-only token may not read)."""
        return {name: (value if value == ANY else [tag[:_MAX_SHOWN] for tag in sorted(value)[:20]])
                for name, value in (("if_match", self.if_match), ("if_none_match", self.if_none_match))
                if value is not None}


def failed_message(header: str) -> str:
    """The 412's message when C{header} is the one that does not hold."""
    return f"precondition failed: {header} does not hold"


def check(expect: Precondition | None, current: str | None) -> None:
    """L{Precondition.check}, for a write that may have none."""
    if expect is not None:
        expect.check(current)
