# -*- test-case-name: tests.http.test_smoke -*-
"""
What the route handlers share (L{izreg.http.app}, L{izreg.http.sinks} and
the routes by resource: L{izreg.http.manifests}, L{izreg.http.blobs},
L{izreg.http.uploads}, L{izreg.http.listings}): request arguments and
headers, the caller, paging, JSON answers.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.http.clientaddr import client_address
from izreg.http.errors import json_body
from izreg.http.pending import BODY_ERROR
from izreg.http.responses import LARGE_BODY, held_body
from izreg.storage.interfaces import IBodySink

#: the largest page a client may ask for with ``n`` (tags, catalog, browse); without ``n``
#: a listing answers up to 100 times as many entries in one page, as distribution answers all
MAX_PAGE = 10000
#: the largest page of the browse API's manifest listing (each entry parses a manifest)
BROWSE_PAGE = 1000


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _last(request) -> str | None:
    """The ``last`` of a listing: no name or tag holds a NUL (and PostgreSQL text cannot)."""
    last = _arg(request, "last")
    if last is not None and "\x00" in last:
        raise RegistryError(ErrorCode.NAME_INVALID, {"last": last[:300]}, "last contains a NUL character")
    return last


def _header(request, name: str) -> str | None:
    # by a bytes name: Twisted would decode the value as UTF-8 for a str name and fail on other bytes
    value = request.getHeader(name.encode("ascii"))
    return value.decode("latin-1") if value is not None else None


#: the header names L{_set} was given (keyword names from the code: a bounded set), as bytes
_HEADER_NAMES: dict[str, bytes] = {}


def _set(request, **headers) -> None:
    for name, value in headers.items():
        raw = _HEADER_NAMES.get(name)
        if raw is None:
            raw = _HEADER_NAMES[name] = name.replace("_", "-").encode()
        request.setHeader(raw, str(value).encode())


def _principal(request):
    """Who the route's authorization found the caller to be (C{None}: open route or no auth)."""
    return getattr(request, "principal", None)


def _who(request, principal) -> tuple[str, str]:
    """The audit log's actor and client address for a request (never a secret)."""
    if principal is None:
        actor = "anonymous"
    elif principal.kind == "device":
        actor = f"device:{principal.account}/{principal.device_id}"
    else:
        actor = f"key:{principal.key_id}"
    return actor, client_address(request)


class Handlers:
    """The helpers of the API's handlers (mixed into L{izreg.http.app.RegistryAPI})."""

    #: large response bodies held in memory and not yet sent (limits.response_memory); None: no bound
    responses = None

    def _upload_location(self, repo: Repository, upload_id: str) -> str:
        return f"/v2/{repo}/blobs/uploads/{upload_id}"

    def _check_delete(self, route) -> None:
        """
        405 UNSUPPORTED when deletes are disabled, with the ``Allow`` header
        RFC 9110 (15.5.6) requires of every 405: the route's other methods.
        """
        try:
            self.registry.check_delete()
        except RegistryError as e:
            e.headers.setdefault("Allow", self.table.allowed(route.endpoint, without="DELETE"))
            raise

    def _body(self, request):
        refused = getattr(request, BODY_ERROR, None)
        if refused is not None:  # refused once the caller was known, after the whole body came (PendingBody)
            raise refused
        body = request.content
        if IBodySink.providedBy(body) and body.expected is not None and body.written != body.expected:
            body.abort()
            raise RegistryError(ErrorCode.SIZE_INVALID, {"content-range-length": body.expected, "received": body.written})
        return body

    def _page(self, request) -> tuple[int, str | None]:
        n = _arg(request, "n")
        if n is None:
            return MAX_PAGE * 100, _last(request)
        if not re.fullmatch(r"[0-9]{1,9}", n):
            raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, {"n": n[:20]})
        return min(int(n), MAX_PAGE), _last(request)

    def _link(self, request, path: str, limit: int, last: str) -> None:
        _set(request, Link=self._link_value(path, limit, last))

    @staticmethod
    def _link_value(path: str, limit: int, last: str) -> str:
        return f'<{path}?n={limit}&last={quote(last, safe="")}>; rel="next"'

    def _json(self, request, value, content_type: str = "application/json") -> bytes:
        return self._answer_json(request, self._encode(value), content_type)

    #: the JSON of an answer izreg makes (L{json_body}, with its newline)
    _encode = staticmethod(json_body)

    def _answer_json(self, request, body: bytes, content_type: str = "application/json"):
        answer = body if len(body) <= LARGE_BODY else held_body(request, body, self.responses)  # (503 before a header)
        _set(request, Content_Type=content_type, Content_Length=len(body))
        return answer
