# -*- test-case-name: tests.core.test_errors -*-
"""
The one error table: every OCI error code izreg can answer, with its message
and HTTP status (in the style of distribution's ``errcode`` registry).

Domain code raises L{RegistryError}; only ``izreg.http.errors`` turns one
into the ``{"errors": [...]}`` envelope.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping


class ErrorCode(enum.Enum):
    """OCI distribution error codes: (wire code, message, HTTP status)."""

    BLOB_UNKNOWN = ("BLOB_UNKNOWN", "blob unknown to registry", 404)
    BLOB_UPLOAD_INVALID = ("BLOB_UPLOAD_INVALID", "blob upload invalid", 400)
    BLOB_UPLOAD_UNKNOWN = ("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
    DIGEST_INVALID = ("DIGEST_INVALID", "provided digest did not match uploaded content", 400)
    MANIFEST_BLOB_UNKNOWN = ("MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to registry", 400)
    MANIFEST_INVALID = ("MANIFEST_INVALID", "manifest invalid", 400)
    MANIFEST_UNKNOWN = ("MANIFEST_UNKNOWN", "manifest unknown to registry", 404)
    NAME_INVALID = ("NAME_INVALID", "invalid repository name", 400)
    NAME_UNKNOWN = ("NAME_UNKNOWN", "repository name not known to registry", 404)
    SIZE_INVALID = ("SIZE_INVALID", "provided length did not match content length", 400)
    TOO_LARGE = ("SIZE_INVALID", "payload too large", 413)
    UNAUTHORIZED = ("UNAUTHORIZED", "authentication required", 401)
    DENIED = ("DENIED", "requested access to the resource is denied", 403)
    #: a delete refused because devices pulled what it would remove (izreg's in-use protection)
    IN_USE = ("DENIED", "in use by devices", 409)
    #: a blob delete refused because manifests of the repository name the blob (as zot does)
    BLOB_REFERENCED = ("DENIED", "the blob is part of manifest(s) in this repository that must be deleted first", 409)
    UNSUPPORTED = ("UNSUPPORTED", "the operation is unsupported", 405)
    TOOMANYREQUESTS = ("TOOMANYREQUESTS", "too many requests", 429)
    TAG_INVALID = ("TAG_INVALID", "manifest tag did not match URI", 400)
    RANGE_INVALID = ("RANGE_INVALID", "invalid content range", 416)
    PAGINATION_NUMBER_INVALID = ("PAGINATION_NUMBER_INVALID", "invalid number of results requested", 400)
    #: a path no route has; its code is the spec's (a 4XX JSON body's code MUST be one of its table)
    NOT_FOUND = ("UNSUPPORTED", "no such route", 404)
    METHOD_UNKNOWN = ("UNSUPPORTED", "the method is not allowed on this route", 405)
    #: a method no route has: methods are case-sensitive (RFC 9110 9.1), "get" is not GET
    METHOD_NOT_IMPLEMENTED = ("UNSUPPORTED", "the method is not implemented (methods are case-sensitive)", 501)
    UNAVAILABLE = ("UNAVAILABLE", "service unavailable", 503)
    INSUFFICIENT_STORAGE = ("UNAVAILABLE", "the registry is out of storage space", 507)
    BODY_INVALID = ("UNSUPPORTED", "the request body is invalid", 400)
    #: an If-Match that names another digest, an If-None-Match that names this one (RFC 9110 13.1.1, 13.1.2)
    PRECONDITION_FAILED = ("UNSUPPORTED", "precondition failed: If-Match or If-None-Match does not hold", 412)
    #: an If-Match or If-None-Match of a PUT or DELETE that is not a list of entity-tags nor *
    PRECONDITION_INVALID = ("UNSUPPORTED", "malformed If-Match or If-None-Match header", 400)
    #: a request HTTP itself refuses (RFC 9112: no Host, or two)
    REQUEST_INVALID = ("UNSUPPORTED", "malformed HTTP request", 400)
    BAD_GATEWAY = ("UNKNOWN", "the upstream registry sent an invalid answer", 502)
    UNKNOWN = ("UNKNOWN", "unknown error", 500)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]

    @property
    def status(self) -> int:
        return self.value[2]


class RegistryError(Exception):
    """
    A failure a client can be told about.

    @ivar detail: any JSON value, sent as the error's ``detail``.
    @ivar headers: extra response headers (``Range`` on a 416, ``Retry-After``).
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: Any = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.message = message or code.message
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"RegistryError({self.code.name}, {self.detail!r})"

    def to_json(self) -> dict[str, Any]:
        """The error as one entry of the OCI ``errors`` list."""
        return {"code": self.code.code, "message": self.message, "detail": self.detail}
