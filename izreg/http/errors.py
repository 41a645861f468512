# -*- test-case-name: tests.http.test_errors -*-
"""
The only place that writes the OCI ``{"errors": [...]}`` envelope, and the
encoding of every JSON answer izreg writes itself (L{json_body}).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.accesslog import CUT_ATTRIBUTE, CUT_FAILED
from izreg.http.limits import ThrottledLog
from izreg.storage.failures import storage_error

log = Logger()
_storage_log = ThrottledLog(log)


#: the body of ``GET /v2/``: C{{}} and no newline, byte for byte distribution's (its
#: C{apiBase} writes the string itself, not through C{json.Encoder} as its other answers)
BASE_BODY = b"{}"


def json_body(value) -> bytes:
    """
    C{value} as the body of a JSON answer izreg makes itself (errors,
    listings, health), ending in a newline as CNCF distribution's do (Go's
    C{json.Encoder}). Never for stored content: manifests are served as
    pushed, byte for byte.
    """
    return json.dumps(value).encode() + b"\n"


def error_body(error: RegistryError) -> bytes:
    """The OCI ``{"errors": [...]}`` body of C{error}."""
    return json_body({"errors": [error.to_json()]})


def render_error(request, error: RegistryError) -> bytes:
    status = error.code.status
    # twisted.web's own reason phrase, else the standard one (its table has no 429: "Unknown Status")
    request.setResponseCode(status, RESPONSES.get(status) or HTTPStatus(status).phrase.encode("ascii"))
    request.setHeader(b"Content-Type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    body = error_body(error)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def started(request) -> bool:
    """
    Whether C{request}'s response has begun (its head is written): too late
    for an error answer, whose status could not be sent and whose body would
    be read as the rest of this one (and the next answer on the connection
    after it). Such a failure is L{cut}, never answered.
    """
    return bool(getattr(request, "startedWriting", False))


def cut(request, why: str = CUT_FAILED, failure: Failure | None = None) -> None:
    """
    End C{request}'s response, begun and now unfinishable, by aborting its
    connection (a reset: the client learns at once that its answer is cut,
    and no other answer follows on that connection); C{failure}, if any, is
    logged. C{why} is noted for the access log (L{izreg.http.accesslog},
    C{cut=}), and the request is finished no more (its line is written when
    the connection goes: L{izreg.http.bodies.RegistryRequest}).
    """
    if failure is not None:
        log.failure("a response failed after its head was sent: its connection is cut", failure)
    if getattr(request, CUT_ATTRIBUTE, None) is None:
        setattr(request, CUT_ATTRIBUTE, why)
    abort(request)


def abort(request) -> None:
    """Abort C{request}'s connection (a reset: nothing queued for it is sent), if it still has one."""
    transport = getattr(request, "transport", None) or getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None:
        (getattr(transport, "abortConnection", None) or transport.loseConnection)()


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
