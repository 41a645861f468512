# -*- test-case-name: tests.core.test_names -*-
"""
Repository names, tags and references.

Every repository lives in an account's namespace: ``<account_id>/<path>``
where the account id is 32 lowercase hex characters. This is a strict subset
of the distribution spec's name grammar (no ``__`` or ``--`` separators).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError

_COMPONENT = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
NAME_RE = re.compile(rf"^(?P<account>[a-f0-9]{{32}})/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
ACCOUNT_RE = re.compile(r"^[a-f0-9]{32}\Z")  # \Z, not $: "$" also matches before a final newline

#: clients cap host + "/" + name at 255 characters; we keep the name itself under that
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, order=True)
class Repository:
    """A validated repository name."""

    name: str

    @property
    def account(self) -> str:
        return self.name[:32]

    @property
    def path(self) -> str:
        return self.name[33:]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> "Repository":
        if len(text) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(text):
            raise RegistryError(
                ErrorCode.NAME_INVALID,
                {"name": text[:300], "expected": "<account_id: 32 hex>/<name>[/<name>...]"},
                # clients print the message only (docker: "name invalid: ..."), so it says the form too
                "invalid repository name: expected <account id: 32 lowercase hex>/<name>,"
                " as in 0123456789abcdef0123456789abcdef/app",
            )
        return cls(text)


def parse_account(text: str) -> str:
    if not ACCOUNT_RE.fullmatch(text or ""):
        raise RegistryError(ErrorCode.NAME_INVALID, {"account": (text or "")[:100]}, "invalid account id")
    return text


def parse_tag(text: str) -> str:
    if not TAG_RE.fullmatch(text):
        raise RegistryError(ErrorCode.TAG_INVALID, {"tag": text[:200]}, "invalid tag")
    return text


Reference = Union[str, Digest]


def parse_reference(text: str) -> Reference:
    """A manifest reference: a L{Digest} when it has a colon, else a tag."""
    if Digest.is_digest(text):
        return Digest.parse(text)
    if not TAG_RE.fullmatch(text):
        raise RegistryError(ErrorCode.TAG_INVALID, {"reference": text[:200]}, "invalid tag")
    return text
