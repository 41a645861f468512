# -*- test-case-name: tests.http.test_errors -*-
"""The only place that writes the OCI ``{"errors": [...]}`` envelope."""

from __future__ import annotations

import json
from http import HTTPStatus

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.limits import ThrottledLog
from izreg.storage.failures import storage_error

log = Logger()
_storage_log = ThrottledLog(log)


def render_error(request, error: RegistryError) -> bytes:
    status = error.code.status
    # twisted.web's own reason phrase, else the standard one (its table has no 429: "Unknown Status")
    request.setResponseCode(status, RESPONSES.get(status) or HTTPStatus(status).phrase.encode("ascii"))
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
        # a werkzeug redirect (slashes) or bad request is still the client's: never a 500
        return RegistryError(ErrorCode.NOT_FOUND if (value.code or 500) < 500 else ErrorCode.UNKNOWN)
    storage = storage_error(value)
    if storage is not None:
        # a full disk is the operator's to fix, not a bug: one line, no traceback
        _storage_log.warn(f"storage failure: {value.__class__.__name__}: {value}")
        return storage
    log.failure("unexpected error", failure)
    return RegistryError(ErrorCode.UNKNOWN, None, "internal error (logged on the server)")
