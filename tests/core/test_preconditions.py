"""The precondition of a manifest write (izreg.core.preconditions): RFC 9110 13.1.1 and 13.1.2 on a reference."""

from __future__ import annotations

import pytest

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.preconditions import ANY, Precondition, check

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "condition, current, holds",
    [
        (Precondition(), None, True),
        (Precondition(), A, True),
        (Precondition(frozenset({A})), A, True),
        (Precondition(frozenset({B, A})), A, True),
        (Precondition(frozenset({A})), B, False),
        (Precondition(frozenset({A})), None, False),  # If-Match: nothing to match
        (Precondition(frozenset()), A, False),  # only weak tags were given
        (Precondition(ANY), A, True),
        (Precondition(ANY), None, False),
        (Precondition(None, ANY), None, True),
        (Precondition(None, ANY), A, False),
        (Precondition(None, frozenset({A})), A, False),
        (Precondition(None, frozenset({A})), B, True),
        (Precondition(None, frozenset({A})), None, True),
        (Precondition(frozenset({A}), frozenset({B})), A, True),
        (Precondition(ANY, ANY), A, False),  # both must hold
        (Precondition(ANY, ANY), None, False),
    ],
)
def test_holds(condition, current, holds):
    assert condition.holds(current) is holds


def test_check_raises_412_with_what_was_asked():
    with pytest.raises(RegistryError) as info:
        check(Precondition(frozenset({B, A}), ANY), None)
    assert info.value.code is ErrorCode.PRECONDITION_FAILED and info.value.code.status == 412
    assert info.value.detail == {"if_match": [A, B], "if_none_match": "*"}
    check(None, None)  # no precondition: nothing to refuse
    check(Precondition(ANY), A)


def test_the_412_says_back_what_was_asked_cut_short():
    """One long entity-tag (a header line may hold 16 KiB) is said back in its first 200 characters."""
    with pytest.raises(RegistryError) as info:
        check(Precondition(frozenset({"x" * 10_000, A})), B)
    assert info.value.detail == {"if_match": [A, "x" * 200]}


@pytest.mark.parametrize(
    "condition, current, failed",
    [
        (Precondition(frozenset({A})), B, "If-Match"),
        (Precondition(None, ANY), A, "If-None-Match"),
        (Precondition(None, frozenset({A})), A, "If-None-Match"),
        (Precondition(frozenset({A}), ANY), B, "If-Match"),  # both fail: If-Match first (RFC 9110 13.2.2)
    ],
)
def test_the_412_names_the_header_that_failed(condition, current, failed):
    with pytest.raises(RegistryError) as info:
        check(condition, current)
    assert info.value.message == f"precondition failed: {failed} does not hold"
