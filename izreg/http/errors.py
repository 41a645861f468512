# -*- test-case-name: tests.http.test_errors -*-
"""The only place that writes the OCI ``{"errors": [...]}`` envelope."""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from izreg.core.errors import ErrorCode, RegistryError

log = Logger()


def render_error(request, error: RegistryError) -> bytes:
    request.setResponseCode(error.code.status)
    request.setHeader(b"Content-Type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    body = json.dumps({"errors": [error.to_json()]}).encode()
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def as_registry_error(failure: Failure) -> RegistryError:
    """Map any failure to a client-safe error; unexpected ones are logged, not shown."""
    value = failure.value
    if isinstance(value, RegistryError):
        return value
    if isinstance(value, MethodNotAllowed):
        allowed = ", ".join(value.valid_methods or [])
        return RegistryError(ErrorCode.METHOD_UNKNOWN, None, headers={"Allow": allowed} if allowed else None)
    if isinstance(value, NotFound):
        return RegistryError(ErrorCode.NOT_FOUND)
    if isinstance(value, HTTPException):
        return RegistryError(ErrorCode.NOT_FOUND if value.code == 404 else ErrorCode.UNKNOWN)
    log.failure("unexpected error", failure)
    return RegistryError(ErrorCode.UNKNOWN, None, "internal error (logged on the server)")
