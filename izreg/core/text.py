# -*- test-case-name: tests.core.test_text -*-
"""Words for people: a count with its noun, and a URL quoted in a message without its credentials."""

from __future__ import annotations

import re

#: a URL's C{//user:password@}: up to the last C{@} before white space, as a password may hold C{@},
#: C{:} or C{/} unescaped (then more than the userinfo goes; less never does)
_USERINFO = re.compile(r"//\S*@")


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """C{n} and its noun in the number it takes: C{1 repository}, C{2 repositories}, C{0 files}."""
    return f"{n} {singular if n == 1 else plural_form or singular + 's'}"


def without_userinfo(text: str) -> str:
    """
    C{text} (a message that may quote a URL: a DSN, an endpoint) with each URL's C{user:password@} left
    out: C{"http://127.0.0.1:9000/bucket"}, still the address it names.
    """
    return _USERINFO.sub("//", text)
