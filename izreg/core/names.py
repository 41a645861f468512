# -*- test-case-name: tests.core.test_names -*-
"""
Repository names, tags and references.

Every repository lives in an account's namespace: ``<account_id>/<path>``
where the account id is 32 lowercase hex characters. This is a strict subset
of the distribution spec's name grammar (no ``__`` or ``--`` separators).

A name the spec's grammar allows but izreg does not hold (``app``,
``library/ubuntu``, ``<account>/a__b``) is L{OutsideNamespaces}: to a
caller that is not yet known it is a C{NAME_INVALID} like any bad name,
but the HTTP layer answers it, once the caller is authenticated, with the
C{DENIED} of L{OutsideNamespaces.denied} (what a key gets for another
account's repository). Clients give up at once on C{DENIED}; on
C{NAME_INVALID} docker retries a push for about 50 s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError

_COMPONENT = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
NAME_RE = re.compile(rf"^(?P<account>[a-f0-9]{{32}})/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)\Z")
#: the distribution spec's grammar of a repository name (any registry's): separators ".", "_", "__" or "-"s
_SPEC_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
SPEC_NAME_RE = re.compile(rf"{_SPEC_COMPONENT}(?:/{_SPEC_COMPONENT})*\Z")
#: what NAME_INVALID (and the refusal of a name outside the namespaces) says the form is
EXPECTED = "<account_id: 32 hex>/<name>[/<name>...]"
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
        """
        @raise OutsideNamespaces: a name of the spec's grammar that is not an account's.
        @raise RegistryError: C{NAME_INVALID}, any other invalid name.
        """
        if len(text) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(text):
            error = OutsideNamespaces if len(text) <= MAX_NAME_LENGTH and SPEC_NAME_RE.fullmatch(text) else RegistryError
            detail = {"name": text[:300], "expected": EXPECTED}
            lowercase = _lowercased(text)
            if lowercase is not None:
                detail["lowercase"] = lowercase
            # clients print the message only (docker: "name invalid: ..."), so it says the form too
            raise error(ErrorCode.NAME_INVALID, detail, f"invalid repository name: {name_problem(text)}")
        return cls(text)


def name_problem(text: str) -> str:
    """
    What is wrong with C{text} as a repository name, for people (the message of its C{NAME_INVALID}, the
    command line's and the browse page's error): that names are lowercase if it has capitals (the OCI
    grammar has none: docker, podman and skopeo refuse C{MyApp} before they send anything, so only a
    script, curl or a hand-typed page address brings one here), with the lowercase name to use when that
    one is valid; else the expected form.
    """
    if any("A" <= c <= "Z" for c in text):
        lowercase = _lowercased(text)
        return ("repository names are lowercase (a-z, 0-9 and the separators \".\", \"_\", \"-\")"
                + (f": use {lowercase}" if lowercase is not None
                   else "; expected <account id: 32 lowercase hex>/<name>"))
    return "expected <account id: 32 lowercase hex>/<name>, as in 0123456789abcdef0123456789abcdef/app"


def _lowercased(text: str) -> str | None:
    """C{text} in lowercase, if it has capitals and is a valid name so (ASCII only: C{"K"} is no C{"k"})."""
    if len(text) > MAX_NAME_LENGTH or not any("A" <= c <= "Z" for c in text):
        return None
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in text)
    return lowered if NAME_RE.fullmatch(lowered) else None


class OutsideNamespaces(RegistryError):
    """
    A C{NAME_INVALID} for a name the distribution spec allows but that is in
    no account's namespace. L{denied} is the answer to an authenticated caller.

    @ivar endpoint: the route's endpoint (L{izreg.core.routes}), when the name
        came from a request path.
    """

    endpoint: str | None = None

    @property
    def name(self) -> str:
        return self.detail["name"]

    def denied(self, account: str) -> RegistryError:
        """
        The C{DENIED} (403) for a caller of C{account}: the form, and their own
        account id (clients print the message only: docker says "denied: ...").
        """
        name = self.name
        if NAME_RE.fullmatch(f"{account}/{name}") and len(account) + 1 + len(name) <= MAX_NAME_LENGTH:
            fix = f"; your account id is {account}: use {account}/{name}"
        elif re.match(r"[a-f0-9]{32}/", name):  # an account's form, with separators izreg does not take
            fix = ('; a part of a name is lowercase letters and digits, separated by one ".", "_" or "-"'
                   ' (never "__" or "--")')
        else:
            fix = f"; your account id is {account}"
        return RegistryError(
            ErrorCode.DENIED,
            {"name": name, "expected": EXPECTED, "account": account},
            f"repository names are <account id>/<name>{fix}",
        )


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
