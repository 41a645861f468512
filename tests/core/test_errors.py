"""The error table (izreg.core.errors): wire codes, messages, HTTP statuses."""

from __future__ import annotations

import json
import re

import pytest

from izreg.core.errors import ErrorCode, RegistryError

# OCI-NOTES §1 "Error body" table (distribution's statuses), plus izreg's own entries.
EXPECTED = [
    (ErrorCode.BLOB_UNKNOWN, "BLOB_UNKNOWN", 404),
    (ErrorCode.BLOB_UPLOAD_INVALID, "BLOB_UPLOAD_INVALID", 400),
    (ErrorCode.BLOB_UPLOAD_UNKNOWN, "BLOB_UPLOAD_UNKNOWN", 404),
    (ErrorCode.DIGEST_INVALID, "DIGEST_INVALID", 400),
    (ErrorCode.MANIFEST_BLOB_UNKNOWN, "MANIFEST_BLOB_UNKNOWN", 400),
    (ErrorCode.MANIFEST_INVALID, "MANIFEST_INVALID", 400),
    (ErrorCode.MANIFEST_UNKNOWN, "MANIFEST_UNKNOWN", 404),
    (ErrorCode.NAME_INVALID, "NAME_INVALID", 400),
    (ErrorCode.NAME_UNKNOWN, "NAME_UNKNOWN", 404),
    (ErrorCode.SIZE_INVALID, "SIZE_INVALID", 400),
    (ErrorCode.TOO_LARGE, "SIZE_INVALID", 413),
    (ErrorCode.UNAUTHORIZED, "UNAUTHORIZED", 401),
    (ErrorCode.DENIED, "DENIED", 403),
    (ErrorCode.IN_USE, "DENIED", 409),
    (ErrorCode.BLOB_REFERENCED, "DENIED", 409),
    (ErrorCode.UNSUPPORTED, "UNSUPPORTED", 405),
    (ErrorCode.TOOMANYREQUESTS, "TOOMANYREQUESTS", 429),
    (ErrorCode.TAG_INVALID, "TAG_INVALID", 400),
    (ErrorCode.RANGE_INVALID, "RANGE_INVALID", 416),
    (ErrorCode.PAGINATION_NUMBER_INVALID, "PAGINATION_NUMBER_INVALID", 400),
    (ErrorCode.NOT_FOUND, "UNSUPPORTED", 404),
    (ErrorCode.METHOD_UNKNOWN, "UNSUPPORTED", 405),
    (ErrorCode.METHOD_NOT_IMPLEMENTED, "UNSUPPORTED", 501),
    (ErrorCode.UNAVAILABLE, "UNAVAILABLE", 503),
    (ErrorCode.INSUFFICIENT_STORAGE, "UNAVAILABLE", 507),
    (ErrorCode.BODY_INVALID, "UNSUPPORTED", 400),
    (ErrorCode.REQUEST_INVALID, "UNSUPPORTED", 400),
    (ErrorCode.PRECONDITION_FAILED, "UNSUPPORTED", 412),
    (ErrorCode.PRECONDITION_INVALID, "UNSUPPORTED", 400),
    (ErrorCode.BAD_GATEWAY, "UNKNOWN", 502),
    (ErrorCode.UNKNOWN, "UNKNOWN", 500),
]


@pytest.mark.parametrize("member, code, status", EXPECTED, ids=[m.name for m, _, _ in EXPECTED])
def test_code_and_status(member, code, status):
    assert (member.code, member.status) == (code, status)


def test_table_is_complete():
    """Every member has an expectation above (a new code needs a deliberate status)."""
    assert {m for m, _, _ in EXPECTED} == set(ErrorCode)


#: the codes of the OCI distribution-spec v1.1 table (code-1 to code-14)
SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
              "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
              "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
#: distribution's registered codes izreg keeps for what the table has no code for (docs/api.rst, Conformance notes)
LEGACY_CODES = {"TAG_INVALID", "RANGE_INVALID", "PAGINATION_NUMBER_INVALID"}


@pytest.mark.parametrize("member", [m for m in ErrorCode if m.status < 500], ids=lambda m: m.name)
def test_a_4xx_code_is_the_specs(member):
    """"The code field MUST be one of the following" (spec, error codes): only distribution's legacy codes besides."""
    assert member.code in SPEC_CODES | LEGACY_CODES


@pytest.mark.parametrize("member", list(ErrorCode), ids=lambda m: m.name)
def test_wire_code_grammar_and_message(member):
    # the spec: codes are uppercase letters and underscores only
    assert re.fullmatch(r"[A-Z]+(_[A-Z]+)*", member.code)
    assert isinstance(member.message, str) and member.message.strip()
    assert 400 <= member.status < 600


def test_too_many_requests_is_spelled_without_underscores():
    assert ErrorCode.TOOMANYREQUESTS.code == "TOOMANYREQUESTS"


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": None}),
        ({"detail": {"digest": "sha256:x"}}, {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {"digest": "sha256:x"}}),
        ({"detail": [1, "two"], "message": "custom"}, {"code": "BLOB_UNKNOWN", "message": "custom", "detail": [1, "two"]}),
        ({"message": ""}, {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": None}),
        ({"detail": "text"}, {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": "text"}),
    ],
)
def test_to_json(kwargs, expected):
    error = RegistryError(ErrorCode.BLOB_UNKNOWN, **kwargs)
    assert error.to_json() == expected
    json.dumps(error.to_json())  # serializable as is


def test_to_json_uses_the_wire_code_not_the_member_name():
    assert RegistryError(ErrorCode.TOO_LARGE).to_json()["code"] == "SIZE_INVALID"
    assert RegistryError(ErrorCode.METHOD_UNKNOWN).to_json()["code"] == "UNSUPPORTED"


def test_attributes_and_headers_are_copied():
    headers = {"Content-Range": "bytes */10"}
    error = RegistryError(ErrorCode.RANGE_INVALID, detail={"a": 1}, headers=headers)
    headers["X-Later"] = "no"
    assert error.code is ErrorCode.RANGE_INVALID
    assert error.detail == {"a": 1}
    assert error.headers == {"Content-Range": "bytes */10"}
    assert RegistryError(ErrorCode.UNKNOWN).headers == {}


def test_is_an_exception_with_a_useful_repr():
    with pytest.raises(RegistryError) as info:
        raise RegistryError(ErrorCode.NAME_INVALID, {"name": "x"})
    assert repr(info.value) == "RegistryError(NAME_INVALID, {'name': 'x'})"
