# -*- test-case-name: tests.core.test_ranges -*-
"""
Byte ranges: the ``Range`` header of blob GETs (RFC 9110 §14) and the
``Content-Range`` of chunked upload PATCHes (OCI: ``<start>-<end>``, inclusive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from izreg.core.errors import ErrorCode, RegistryError

_RANGE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.IGNORECASE | re.ASCII)
_CONTENT_RANGE = re.compile(r"^\s*(?:bytes[ =])?\s*([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?\s*$", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    """An inclusive, satisfiable byte range of a representation of C{total} bytes."""

    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.total}"


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """
    The single range a GET asks for, or C{None} to send the whole body.

    Syntactically invalid headers and multi-range requests are ignored (RFC
    9110 allows a server to ignore Range). An unsatisfiable range raises
    C{RANGE_INVALID} (416) carrying ``Content-Range: bytes */<total>``.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise _unsatisfiable(header, total)
        return ByteRange(max(0, total - suffix), total - 1, total)
    start = int(first)
    end = total - 1 if last == "" else min(int(last), total - 1)
    if last != "" and int(last) < start:
        return None  # invalid range spec: ignore it
    if start >= total:
        raise _unsatisfiable(header, total)
    return ByteRange(start, end, total)


def _unsatisfiable(header: str, total: int) -> RegistryError:
    return RegistryError(
        ErrorCode.RANGE_INVALID,
        {"range": header[:100], "size": total},
        "requested range not satisfiable",
        headers={"Content-Range": f"bytes */{total}"},
    )


def parse_content_range(header: str) -> tuple[int, int]:
    """A PATCH ``Content-Range``: ``<start>-<end>`` inclusive -> (start, end)."""
    match = _CONTENT_RANGE.match(header or "")
    if match is None:
        raise RegistryError(ErrorCode.RANGE_INVALID, {"content-range": (header or "")[:100]}, "invalid Content-Range")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RegistryError(ErrorCode.RANGE_INVALID, {"content-range": header[:100]}, "invalid Content-Range")
    return start, end


def upload_range(offset: int) -> str:
    """The ``Range`` header of an upload of C{offset} bytes (``0-0`` when empty, as distribution)."""
    return f"0-{max(offset - 1, 0)}"
