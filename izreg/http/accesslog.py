# -*- test-case-name: tests.http.test_accesslog -*-
"""
One access log event per request, through twisted.logger (namespace
``izreg.access``), and the same facts for the metrics.

An event holds: method, route template (never the raw path: no digest, tag
or upload id), repository name, status, bytes in and out, duration,
account, key id or device id, client address and the request id (also sent
to the client as ``X-Request-Id``). Never a credential: the principal the
guard cached on the request is read, not a header.

L{RegistrySite} calls L{AccessLog.__call__} when a request finishes (and,
with status 499, when the client goes away first; when the server cut the
response after its head, L{CUT_ATTRIBUTE}, with the status it had sent and
C{cut=<why>}).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

from twisted.logger import Logger, LogLevel

from izreg.core import routes
from izreg.core.errors import RegistryError
from izreg.http.clientaddr import client_address

REQUEST_ID_HEADER = b"X-Request-Id"
#: a request id a proxy in front may pass on (else we make one)
_GIVEN_ID = re.compile(rb"[A-Za-z0-9._:-]{8,64}")
#: the status logged for a request whose client went away before the answer
CLIENT_GONE = 499

#: where a response the server cut (its connection aborted after its head was sent) says why (L{izreg.http.errors.cut})
CUT_ATTRIBUTE = "_izreg_cut"
#: why: its handler failed after the head was sent
CUT_FAILED = "failed"
#: why: its content could not be read (a storage error), or ended before its length
CUT_UNREADABLE = "unreadable"
#: why: its client read nothing for connections.send_timeout (izreg.http.limits.SlowReaders)
CUT_SLOW_READER = "slow_reader"
#: every why (the metrics' C{reason} label: a fixed set, never from the client)
CUT_REASONS = (CUT_FAILED, CUT_UNREADABLE, CUT_SLOW_READER)

#: the template of each repository route (L{izreg.core.routes} endpoint), as the access log and the metrics name it
TEMPLATES = {
    routes.MANIFEST: "/v2/{name}/manifests/{reference}",
    routes.BLOB: "/v2/{name}/blobs/{digest}",
    routes.UPLOADS: "/v2/{name}/blobs/uploads/",
    routes.UPLOAD: "/v2/{name}/blobs/uploads/{uuid}",
    routes.TAGS: "/v2/{name}/tags/list",
    routes.REFERRERS: "/v2/{name}/referrers/{digest}",
    routes.BROWSE: "/v2/{name}/_izreg/manifests",
}
#: fixed paths, served as they are
_FIXED = {"/v2/", "/v2", "/v2/_catalog", "/v2/token", "/healthz", "/readyz", "/metrics", "/", "/ui", "/ui/",
          "/v2/_izreg/repositories", "/v2/_izreg/pulls"}
_IZREG_REPO = re.compile(r"(?P<name>.+)/_izreg/(?P<what>manifests)")


#: our request ids: this process's random prefix, then a counter (unique, 24 hex; no random read per request)
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(secrets.randbelow(1 << 40))


def new_request_id(given: bytes | None) -> str:
    if given and _GIVEN_ID.fullmatch(given):
        return given.decode("ascii")
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def route_of(path: bytes) -> tuple[str, str | None]:
    """(route template, repository name or C{None}) of a request path; C{"other"} when unknown."""
    try:
        text = unquote(path.decode("utf-8"))
    except UnicodeDecodeError:
        return "other", None
    if text in _FIXED:
        return text, None
    if re.fullmatch(r"/ui/[^/]+", text):
        return "/ui/{file}", None
    if not text.startswith("/v2/"):
        return "other", None
    rest = text[4:]
    m = _IZREG_REPO.fullmatch(rest)
    if m:
        return "/v2/{name}/_izreg/" + m.group("what"), m.group("name")[:256]
    try:
        route = routes.match(rest)
    except RegistryError:
        return "other", None
    return TEMPLATES[route.endpoint], route.repository.name


#: where the router leaves (route template, repository name) of a request it matched (L{note_route})
ROUTE_ATTRIBUTE = "_izreg_route"


def note_route(request, route: routes.Route) -> None:
    """
    Keep on C{request} the route the router matched (L{izreg.http.routing}),
    so the access log names it without matching the path again. What
    L{route_of} would find for the same path: the matcher is the same.
    """
    setattr(request, ROUTE_ATTRIBUTE, (TEMPLATES[route.endpoint], route.repository.name))


@dataclass  # not frozen: a frozen dataclass's __init__ costs ~3 us more a request
class RequestInfo:
    """What the access log and the metrics know of one finished request (observers do not change it)."""

    request_id: str
    method: str
    route: str
    repository: str | None
    status: int
    bytes_in: int
    bytes_out: int
    duration: float
    client: str
    account: str | None
    principal: str | None  # "key", "token", "device" or None
    key_id: str | None
    device_id: str | None
    authorization: bool  # an Authorization header was sent (never its value)
    #: why the server cut the response after its head (CUT_FAILED, CUT_UNREADABLE, CUT_SLOW_READER), or None
    cut: str | None = None


#: where the guard caches the caller on the request (izreg.http.guard; the route table sets C{principal})
PRINCIPAL_ATTRIBUTE = "_izreg_principal"


def request_info(request, now: float, status: int | None = None) -> RequestInfo:
    principal = getattr(request, "principal", None) or getattr(request, PRINCIPAL_ATTRIBUTE, None)
    if isinstance(principal, Exception):
        principal = None
    method, path = request.method, getattr(request, "path", None)
    if path is None:  # the client went away before the body was in
        method, uri = getattr(request, "line", (b"-", b""))
        path = uri.partition(b"?")[0]
    noted = getattr(request, ROUTE_ATTRIBUTE, None)  # the route as the router matched it (L{note_route})
    route, repository = noted if noted is not None else route_of(path)
    client = client_address(request)  # behind a trusted proxy, the client it names (the brake's address too)
    return RequestInfo(
        request_id=getattr(request, "request_id", "-"),
        method=(method or b"-").decode("ascii", "replace")[:16],
        route=route,
        repository=repository,
        status=status if status is not None else request.code,
        bytes_in=getattr(request, "bytes_in", 0),
        bytes_out=request.sentLength,
        duration=max(0.0, now - getattr(request, "started", now)),
        client=client if client != "unknown" else "-",
        account=getattr(principal, "account", None),
        principal=getattr(principal, "kind", None),
        key_id=getattr(principal, "key_id", None),
        device_id=getattr(principal, "device_id", None),
        authorization=bool(request.getHeader(b"authorization")),
        cut=getattr(request, CUT_ATTRIBUTE, None),
    )


log = Logger(namespace="izreg.access")

#: the text of an access event, formatted here (twisted.logger's formatter, pure Python, took ~60 us a request for
#: these nine fields; an f-string in L{AccessLog.__call__}, the same text as this format, then C{" cut=<why>"}
#: for a response the server cut: L{CUT_ATTRIBUTE}); the event carries the fields too (the JSON log writes them)
LINE = "{client} {method} {route} {status} in={bytes_in} out={bytes_out} {duration:.3f}s {who} id={request_id}"
#: the event's key for that text: a JSON log leaves it out (izreg.service.logs), its message is the same text
LINE_KEY = "access_line"
_FORMAT = "{" + LINE_KEY + "}"


class AccessLog:
    """The site's request log: an event per request, then each observer (the metrics)."""

    def __init__(self, now: Callable[[], float], observers: list[Callable[[RequestInfo], None]] | None = None) -> None:
        self.now = now
        self.observers = observers if observers is not None else []

    def __call__(self, request, status: int | None = None) -> None:
        info = request_info(request, self.now(), status)
        who = f"device {info.account}/{info.device_id}" if info.device_id else (
            f"key {info.key_id}" if info.key_id else "anonymous")
        event = vars(info).copy()  # its fields are all scalars: no need for asdict's deep copy (~15 us a request)
        event["who"] = who
        event[LINE_KEY] = (f"{info.client} {info.method} {info.route} {info.status} in={info.bytes_in} "
                           f"out={info.bytes_out} {info.duration:.3f}s {who} id={info.request_id}"
                           + ("" if info.cut is None else f" cut={info.cut}"))
        # what log.info(_FORMAT, **event) emits, without Logger.emit's check that the level is one (it sorts
        # LogLevel's constants on every event, ~2 us) and a copy of the fields into keyword arguments
        event.update(log_logger=log, log_level=LogLevel.info, log_namespace=log.namespace, log_source=log.source,
                     log_format=_FORMAT, log_time=time.time())
        log.observer(event)
        for observer in self.observers:
            try:
                observer(info)
            except Exception:
                log.failure("request observer failed")
