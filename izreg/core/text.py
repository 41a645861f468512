# -*- test-case-name: tests.core.test_text -*-
"""Words for people: a count with its noun, for the command's output and the log lines alike."""

from __future__ import annotations


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """C{n} and its noun in the number it takes: C{1 repository}, C{2 repositories}, C{0 files}."""
    return f"{n} {singular if n == 1 else plural_form or singular + 's'}"
