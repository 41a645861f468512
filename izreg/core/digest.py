# -*- test-case-name: tests.core.test_digest -*-
"""
Digests: the content addresses of blobs and manifests.

The grammar is the OCI image-spec's: ``algorithm ":" encoded`` with
``algorithm ::= component (separator component)*``. Only the registered
algorithms sha256 and sha512 are accepted, with their exact lowercase hex
lengths.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from izreg.core.errors import ErrorCode, RegistryError

_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")

#: algorithm -> length of its hex encoding
ALGORITHMS = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Parse and validate; raise L{RegistryError} C{DIGEST_INVALID}."""
        if not isinstance(text, str) or not _GRAMMAR.fullmatch(text):
            raise RegistryError(ErrorCode.DIGEST_INVALID, {"digest": _printable(text)}, "invalid digest")
        algorithm, hexpart = text.split(":", 1)
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                {"digest": text, "supported": sorted(ALGORITHMS)},
                "unsupported digest algorithm",
            )
        if len(hexpart) != length or not re.fullmatch(r"[a-f0-9]+", hexpart):
            message = "invalid digest"
            if len(hexpart) < length and re.fullmatch(r"[a-f0-9]+", hexpart):  # a table's sha256:0123456789ab
                message = (f"invalid digest: a {algorithm} digest has {length} hex digits, not {len(hexpart)};"
                           " a shortened digest names nothing, use the whole one")
            raise RegistryError(ErrorCode.DIGEST_INVALID, {"digest": text}, message)
        return cls(algorithm, hexpart)

    @classmethod
    def is_digest(cls, text: str) -> bool:
        """Does C{text} look like a digest (rather than a tag)?"""
        return ":" in text

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self):
        """A fresh hashlib object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, hasher) -> bool:
        return hasher.name == self.algorithm and hasher.hexdigest() == self.hex

    def tag_schema(self) -> str:
        """The referrers tag-schema fallback tag: ``<alg>-<hex>``."""
        return f"{self.algorithm[:32]}-{self.hex[:64]}"


def _printable(text: object) -> str:
    return text[:200] if isinstance(text, str) else repr(text)[:200]
