# -*- test-case-name: tests.http.test_bodies -*-
"""
Request bodies that go where they belong as they arrive, and requests that
are refused before their body is read.

twisted.web buffers a whole request body (in memory, or an anonymous temp
file) before any resource runs. L{RegistryRequest} instead asks the site, as
soon as the headers are in, for the object the body should be written into
(C{body_for}, see L{izreg.http.app.RegistryAPI.body_for}): there the route
is resolved and the caller authorized (L{izreg.http.routing}). Then:

- a refused request (no route, no credentials, no permission, too large,
  out of memory budget) is answered at once with its OCI error and
  ``Connection: close``; the rest of its body is read and dropped, never
  kept, until the client closes or L{LINGER} seconds pass (the first connection
  closed for a newcomer meanwhile, at C{max_connections}: L{izreg.http.limits.REFUSED});
- an upload's body goes into its L{ChunkWriter} (hashing while it appends);
- a manifest or form goes into a L{BoundedBuffer}, within its size limit and
  the process-wide L{BodyBudget};
- a body nobody reads (a GET with a body) into a L{Dropped} sink, refused (413) past 64 KiB.

L{RegistryChannel} also closes connections that send their headers or body
too slowly (L{SlowSenders}), answers over-long request and header lines
with 414 and 431, and L{RegistrySite} caps connections (L{izreg.http.limits}):
a channel with no request in progress (none whose headers are all in) is on
the site's L{IdleConnections}, which may close it for a newcomer once the cap
is reached.
"""

from __future__ import annotations

import io
import re
import time
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.resource import Resource
from zope.interface import implementer

from izreg.auth.policy import Principal
from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.accesslog import (CLIENT_GONE, CUT_ATTRIBUTE, CUT_FAILED, PRINCIPAL_ATTRIBUTE, REQUEST_ID_HEADER,
                                  new_request_id)
from izreg.http.errors import as_registry_error, cut, error_body, render_error, started
from izreg.http.internals import chunked_decoder, copied_process
from izreg.http.limits import (AUTHENTICATED, EVICT_GRACE, NEW, PUBLIC_REQUEST, REFUSED, UNAUTHENTICATED, BodyBudget,
                               ConnectionLimits, IdleConnections, SlowReaders, SlowSenders, ThrottledLog, refusal,
                               tcp_under)
from izreg.http.peercert import peer_certificate

#: seconds a refused request's connection keeps reading (and dropping) its
#: body, so the client reads the answer instead of a reset
LINGER = 2.0
#: longest request line and header line (twisted's own limit): past it, 414 / 431
MAX_LINE = 16384

log = Logger()

# read once: twisted.web.http is a deprecation proxy, each attribute read through it costs ~2 us
_GenericHTTPChannelProtocol = http._GenericHTTPChannelProtocol  # a channel per connection
_ChunkedTransferDecoder = http._ChunkedTransferDecoder


class _HTTPDate:
    """The ``Date`` of a response (twisted.web's C{datetimeToString()}), formatted once a second, not per request."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self.second, self.text = None, b""

    def __call__(self) -> bytes:
        second = int(self.clock())
        if second != self.second:
            self.second, self.text = second, http.datetimeToString(second)
        return self.text


http_date = _HTTPDate()


class BoundedBuffer(io.BytesIO):
    """
    A body kept in memory: at most C{limit} bytes, reserved from the global
    C{budget} (all of C{length} at once when it is known, else as bytes come)
    in C{owner}'s share of it (L{izreg.http.limits.budget_owner}).
    Past either, C{refuse} is called with the error and nothing more is kept.
    """

    def __init__(self, limit: int, budget: BodyBudget | None = None, refuse=None, owner: str | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.budget = budget
        self.refuse = refuse
        self.owner = owner
        self.overflow = False
        self.received = 0
        self.reserved = 0

    def reserve(self, length: int) -> bool:
        """Take C{length} bytes of the budget; C{False} if there is not that much left."""
        if self.budget is None:
            return True
        if not self.budget.reserve(length, self.owner):
            return False
        self.reserved += length
        return True

    def write(self, data) -> int:
        self.received += len(data)
        if self.overflow:
            return len(data)
        if self.received > self.limit:
            self._stop(RegistryError(ErrorCode.TOO_LARGE, {"limit": self.limit}, "request body too large"))
            return len(data)
        if self.received > self.reserved and self.budget is not None:
            # 64 KiB at a time (never past the limit: an 8 KiB form reserves 8 KiB)
            wanted = min(max(self.received - self.reserved, 64 * 1024), self.limit - self.reserved)
            if not self.reserve(wanted):
                self._stop(out_of_budget(self.budget, self.owner, wanted))
                return len(data)
        return super().write(data)

    def _stop(self, error: RegistryError) -> None:
        self.overflow = True
        self.truncate(0)
        self._release()
        if self.refuse is not None:
            self.refuse(error)

    def _release(self) -> None:
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved, self.owner)
        self.reserved = 0

    def close(self) -> None:
        self._release()
        super().close()


def out_of_budget(budget: BodyBudget, owner: str | None = None, length: int = 0) -> RegistryError:
    """The 503 of a request body C{budget} refused (L{izreg.http.limits.refusal}): its owner's share, or all of it."""
    return refusal(budget, "request bodies", "limits.body_memory", owner, length)


class Dropped:
    """
    A body nobody will read: counted and dropped; past C{limit} bytes (None: no limit),
    C{refuse} is called once with a 413.
    """

    def __init__(self, limit: int | None = None, refuse=None) -> None:
        self.received = 0
        self.limit, self.refuse = limit, refuse

    def write(self, data) -> None:
        self.received += len(data)
        if self.limit is not None and self.received > self.limit and self.refuse is not None:
            refuse, self.refuse = self.refuse, None
            refuse(RegistryError(ErrorCode.TOO_LARGE, {"limit": self.limit}, "this route takes no request body"))

    def tell(self) -> int:
        return self.received

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def getvalue(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


def error_response(error: RegistryError, head: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying C{error}, ending the connection."""
    body = error_body(error)
    status = error.code.status
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Docker-Distribution-API-Version: registry/2.0",
    ]
    for name, value in error.headers.items():
        if "\r" not in value and "\n" not in value:
            lines.append(f"{name}: {value}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return data if head else data + body


_UNCHECKED = object()  # a request whose line and headers L{_request_error} has not looked at yet


def _request_error(request, method: bytes, version: bytes, target: bytes) -> RegistryError | None:
    """
    What HTTP itself refuses in a request's line and headers, or C{None}.
    RFC 9112 3.2: an HTTP/1.1 request without a Host header, or any request
    with more than one, is a 400 (the server must not guess which name was
    meant). RFC 9110 9.1: methods are case-sensitive, so "get" is no method of
    ours, 501 (werkzeug would route it as GET). RFC 9110 4.2.1: an http(s)
    URI with an empty host is invalid: an absolute-form target
    (L{_origin_form}) without one is a 400 too. RFC 9112 3.2 again: a Host
    (or an absolute-form target's authority) that is not C{host[:port]}
    (RFC 3986 3.2.2: a name, an IPv4 address or a bracketed IPv6 one; the
    port digits) is a 400, one regular expression match (L{_HOST_SYNTAX}).
    An HTTP/1.0 request may come without a Host.
    """
    if not method.isupper():
        return RegistryError(ErrorCode.METHOD_NOT_IMPLEMENTED, {"method": method[:20].decode("latin-1")})
    hosts = request.requestHeaders.getRawHeaders(b"host")
    if hosts is None:
        if version != b"HTTP/1.1":
            return _hostless(target)
        message = "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)"
    elif len(hosts) > 1:
        message = "a request may have only one Host header (RFC 9112 3.2)"
    elif _HOST_SYNTAX.fullmatch(hosts[0]) is None:
        return RegistryError(ErrorCode.REQUEST_INVALID, {"host": hosts[0][:100].decode("latin-1")},
                             "the Host header is not a host[:port] (RFC 9112 3.2, RFC 3986 3.2.2)")
    else:
        return _hostless(target)
    return RegistryError(ErrorCode.REQUEST_INVALID, {"host_headers": len(hosts or ())}, message)


#: RFC 3986 3.2.2-3.2.3 C{host [ ":" port ]}: a reg-name (unreserved, percent-encoded, sub-delims: an IPv4
#: address is one too, and so is an empty name), or an IP-literal (IPv6, with an RFC 6874 zone, or IPvFuture)
_HOST_SYNTAX = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
    rb"|\[(?:[0-9A-Fa-f:.]+(?:%25(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})+)?|[Vv][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\])"
    rb"(?::[0-9]*)?")


#: an absolute-form request target (RFC 9112 3.2.2): scheme, authority, then the rest (path and query)
_ABSOLUTE_FORM = re.compile(rb"(?i)https?://([^/?#]*)(.*)\Z", re.S)


def _target_host(authority: bytes) -> bytes:
    return authority.rpartition(b"@")[2]  # no userinfo (deprecated, RFC 9110 4.2.4)


def _hostless(target: bytes) -> RegistryError | None:
    """
    The 400 of an absolute-form C{target} with an empty host (C{http:///v2/}) or one that is not
    C{host[:port]} (C{http://[::1/v2/}), else C{None}.
    """
    if target[:1] == b"/":
        return None  # origin form: the common case, at no cost
    found = _ABSOLUTE_FORM.match(target)
    if found is None:
        return None
    host = _target_host(found.group(1))
    if not host:
        message = "the request target's URI has an empty host (RFC 9110 4.2.1)"
    elif _HOST_SYNTAX.fullmatch(host) is None:
        message = "the request target's URI has a host that is not a host[:port] (RFC 3986 3.2.2)"
    else:
        return None
    return RegistryError(ErrorCode.REQUEST_INVALID, {"target": target[:100].decode("latin-1")}, message)


def _origin_form(request) -> None:
    """
    RFC 9112 3.2.2: a server must accept a request target in absolute form
    (C{GET http://host/v2/ HTTP/1.1}, what proxies send): its path and query
    are what is served, and its host replaces the C{Host} header (an empty
    one is refused first, L{_hostless}).
    """
    channel = request.channel
    if channel._path[:1] == b"/":
        return  # origin form: every request but a proxy's, with no regular expression run
    found = _ABSOLUTE_FORM.match(channel._path)
    if found is None:
        return
    authority, rest = found.groups()
    channel._path = rest if rest.startswith(b"/") else b"/" + rest
    request.requestHeaders.setRawHeaders(b"host", [_target_host(authority)])


class RegistryRequest(server.Request):
    """
    A request whose body sink is chosen by C{site.body_for} once the headers
    are in. It counts its body bytes and carries a request id (for the
    access log, L{izreg.http.accesslog}).
    """

    request_id = "-"
    #: (method, URI) as soon as the headers are in (before C{method}/C{path} are set)
    line = (b"-", b"")
    #: what HTTP itself refuses in the request's line and headers (L{_request_error}), once checked at the
    #: headers (L{gotLength}); L{_UNCHECKED} before
    _head_error: RegistryError | None | object = _UNCHECKED

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.bytes_in = 0

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_in += len(data)
        super().handleContentChunk(data)

    def connectionLost(self, reason) -> None:
        if not self.finished and not getattr(self, "_logged_gone", False):
            self._logged_gone = True
            access_log = getattr(self.channel.site, "access_log", None) if self.channel else None
            if access_log is not None:  # the server cut it (L{izreg.http.errors.cut}): the status it sent, and why
                access_log(self, None if getattr(self, CUT_ATTRIBUTE, None) is not None else CLIENT_GONE)
        super().connectionLost(reason)

    def gotLength(self, length):
        body_for = getattr(self.channel.site, "body_for", None)
        if body_for is None:
            return super().gotLength(length)
        # The channel holds the request line until the body is complete; this is
        # the one point where method and URI are known and no body byte is yet.
        self.line = (self.channel._command, self.channel._path)
        self.request_id = new_request_id(self.getHeader(REQUEST_ID_HEADER))
        refused = self._head_error = _request_error(self, self.channel._command, self.channel._version,
                                                    self.channel._path)
        if refused is not None:  # answered by L{process}, or now if a body comes
            self.content = Dropped()
            if length != 0:
                self.refuse(refused)
            return
        _origin_form(self)
        self.line = (self.channel._command, self.channel._path)
        if self.channel._path == b"*":  # the server as a whole: no route, no body kept (L{process})
            self.content = Dropped()
            if length != 0 and self.channel._command != b"OPTIONS":
                self.refuse(_not_for_the_server())
            return
        try:
            self.content = body_for(self, self.channel._command, self.channel._path, length)
        except RegistryError as e:
            self.content = Dropped()
            self.refuse(e)
        except Exception:  # a full disk while opening an upload file, ...: answered, never a dropped connection
            self.content = Dropped()
            self.refuse(as_registry_error(Failure()))

    def refuse(self, error: RegistryError) -> None:
        """Answer C{error} now, before (or in the middle of) the body, and drop the rest of it."""
        channel = self.channel
        if channel is None or not hasattr(channel, "refuse") or channel._refused or channel._handlingRequest:
            return  # gone, or the body is complete and the handler answers
        error.headers.setdefault(REQUEST_ID_HEADER.decode(), self.request_id)
        channel.refuse(error_response(error, head=getattr(channel, "_command", None) == b"HEAD"), error)
        # refused at its headers: no "100 Continue" after this final answer (twisted.web's channel sends one
        # for an Expect: 100-continue once gotLength returns; RFC 9110 10.1.1)
        self.requestHeaders.removeHeader(b"expect")
        access_log = getattr(channel.site, "access_log", None)
        if access_log is not None and not getattr(self, "_logged_gone", False):
            self._logged_gone = True  # logged with its status, not again as "client gone"
            access_log(self, error.code.status)

    def processingFailed(self, reason):
        """
        Twisted's 500 page, unless the response has begun (its head is sent):
        then the connection is cut (a reset), as a blob body that cannot be
        finished is (L{izreg.http.responses.FileSender._cut}). The page
        would have been read as the rest of the body, and the next answer
        on the connection after it.
        """
        if not started(self) or self.channel is None or self.channel.transport is None:
            return super().processingFailed(reason)
        cut(self, CUT_FAILED, reason)
        return reason

    def finish(self):
        """Not once the response is cut (L{izreg.http.errors.cut}): its connection is aborted, nothing more is sent."""
        if getattr(self, CUT_ATTRIBUTE, None) is not None:
            return None
        return super().finish()

    def getRequestHostname(self) -> bytes:
        # Klein binds its URL map to this name, and werkzeug raises (a 500) on a
        # name IDNA cannot encode (a 64-character label, "a..b"); such a Host is
        # only a client's mistake, the local address stands in for it.
        name = super().getRequestHostname()
        channel = self.channel
        known = getattr(channel, "_checked_host", None)  # the last name checked on this connection, and its answer
        if known is not None and known[0] == name:
            return known[1]
        try:
            name.decode("utf-8").encode("idna")
            answer = name
        except UnicodeError:
            answer = getattr(self.getHost(), "host", "localhost").encode("ascii", "replace")
        if channel is not None:
            channel._checked_host = (name, answer)
        return answer

    def process(self):
        self.setHeader(b"Docker-Distribution-API-Version", b"registry/2.0")
        if self.request_id == "-":
            self.request_id = new_request_id(self.getHeader(REQUEST_ID_HEADER))
        self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        refused = self._head_error  # checked at the headers (L{gotLength}): not again, its Host regex and all
        if refused is _UNCHECKED:
            refused = _request_error(self, self.method, self.clientproto, self.uri)
        if refused is not None:
            self.write(render_error(self, refused))
            self.finish()
            return
        if self.path == b"*":
            # RFC 9110 9.3.7: OPTIONS * asks about the server in general: 200 with no
            # content (as twisted.web answers); any other method on * is a client's
            # mistake, answered as every other one, an OCI error
            if self.method == b"OPTIONS":
                self.setHeader(b"Content-Length", b"0")
                self.finish()
            else:
                self.write(render_error(self, _not_for_the_server()))
                self.finish()
            return
        try:
            if b"%" in self.path or not self.path.isascii():  # else plain ASCII, valid UTF-8 as it is
                unquote_to_bytes(self.path).decode("utf-8")
        except UnicodeDecodeError:
            # Klein would answer this itself, in HTML; keep every answer an OCI error
            error = RegistryError(ErrorCode.NAME_INVALID, None, "the request path is not valid UTF-8")
            self.write(render_error(self, error))
            self.finish()
            return
        self._serve()

    def _serve(self) -> None:
        """
        C{twisted.web.server.Request.process} (the same headers, in the same
        order, the same resource lookup), with the ``Date`` from L{http_date}:
        C{datetimeToString} formats the time anew on every request. Twisted's
        own if this Twisted's C{process} is not the one copied here
        (L{izreg.http.internals.PROCESS_NEEDS}).
        """
        if not copied_process():
            return server.Request.process(self)
        self.site = self.channel.site
        self.setHeader(b"Server", server.version)
        self.setHeader(b"Date", http_date())
        self.prepath = []
        self.postpath = list(map(server.unquote, self.path[1:].split(b"/")))
        try:
            found = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())


_UNKNOWN = object()  # a request not authorized yet (no C{principal} attribute)


def _not_for_the_server() -> RegistryError:
    return RegistryError(ErrorCode.METHOD_UNKNOWN, None, "only OPTIONS applies to the server as a whole (*)",
                         headers={"Allow": "OPTIONS"})


def _framing_error(header: bytes, value: bytes, version: bytes, headers) -> str | None:
    """
    Why a C{Transfer-Encoding} or C{Content-Length} header (C{header}) leaves
    a request's body length uncertain, given the C{headers} before it, or
    C{None}: the 400 and close of RFC 9112 6.1 and 6.3. Twisted ignores
    C{Transfer-Encoding: identity} (the length is then the Content-Length's,
    or none), which a proxy in front may read otherwise (request smuggling);
    the other codings and both headers it refuses as "malformed".
    """
    both = "a request may not have both Transfer-Encoding and Content-Length (RFC 9112 6.1)"
    if header == b"Content-Length":
        return both if headers.hasHeader(b"transfer-encoding") else None
    if headers.hasHeader(b"content-length"):
        return both
    if version != b"HTTP/1.1":
        return "an HTTP/1.0 request may not have a Transfer-Encoding (RFC 9112 6.1)"
    if value.lower() != b"chunked" or headers.hasHeader(b"transfer-encoding"):
        return "the request's Transfer-Encoding is not chunked, once and last: its length is unknown (RFC 9112 6.3)"
    return None


class RegistryChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that can refuse a request before its body
    (L{refuse}), closes slow senders, and answers over-long lines.
    """

    MAX_LENGTH = MAX_LINE
    _refused = False
    _linger = None
    _lines = 0
    address = None  # the client address counted by the site's ConnectionLimits
    #: the site's L{IdleConnections} (None: no cap); the tier this channel is in there (None: busy, or in
    #: none; L{PUBLIC_REQUEST} while a request on a route open to anyone is in progress, L{AUTHENTICATED} if
    #: its caller is known; L{REFUSED} once refused, closing), and the one it goes to when idle (L{NEW};
    #: L{UNAUTHENTICATED} once a request is done, or refused authentication (401); L{AUTHENTICATED} with a
    #: device certificate or once a request authenticated)
    idle: IdleConnections | None = None
    idle_tier = None
    _tier = NEW
    #: a request's headers are all in and it is not done (its body is coming, or its answer): busy, from
    #: L{allHeadersReceived} to L{requestDone}; one still sending its headers stays idle (slowloris)
    _in_request = False
    _head_watched = False  # the head of the next request has begun and is timed (L{_watch_head})

    _checked_host = None  # (Host name, the name to use): L{RegistryRequest.getRequestHostname}'s last check
    _secure = None
    _read_closed = False  # the client half-closed (L{readConnectionLost})
    _held = False  # pipelined requests wait until the client reads its answers (L{requestDone})

    _host = _peer = None  # the connection's addresses (L{getHost}, L{getPeer})

    def getHost(self):
        """
        The local address, asked once a connection: every request asks
        (C{Request.__init__}), and TCP's C{getHost} calls getsockname(2) and
        makes a new address each time.
        """
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def getPeer(self):
        """The client's address, made once a connection (a new address object every request otherwise)."""
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def isSecure(self) -> bool:
        """Whether the transport is TLS: asked a few times a request (Klein), adapted once a connection."""
        secure = self._secure
        if secure is None:
            secure = super().isSecure()
            if self.transport is not None:
                self._secure = secure
        return secure

    def refuse(self, response: bytes, error: RegistryError | None = None) -> None:
        if self._refused or self.transport is None:
            return
        self._refused = True
        self.setTimeout(None)
        watch = getattr(self.site, "slow", None)
        if watch is not None:
            watch.done(self)
        if self.idle is not None:  # closing: the first to go for a newcomer (else a slot held for LINGER)
            self.idle.idle(self, REFUSED)
        self.transport.write(response)
        self._linger = self.callLater(LINGER, self._close_refused)

    def _close_refused(self) -> None:
        self._linger = None
        if self.transport is not None and self._abortingCall is None:
            self._close_now(self.abortTimeout)

    def _close_now(self, abort_after: float) -> None:
        """
        Close: nothing more is read; over TLS the close alert goes and the TCP connection is closed right
        after it, the client's alert not waited for (RFC 8446 6.1: a client that never answers would hold
        its place in C{max_connections} meanwhile); aborted if not closed in C{abort_after} seconds.
        """
        self.setTimeout(None)
        transport = self.transport
        self.loseConnection()  # (the channel's: it stops being the transport's producer, else TLS waits for it)
        tcp = tcp_under(transport)
        if tcp is not None and tcp is not transport:
            tcp.loseConnection()  # after the TLS close alert, which the TLS protocol has written to it
        if self._abortingCall is None:
            self._abortingCall = self.callLater(abort_after, self.forceAbortClient)

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.idle is not None:  # (TLS: in its handshake, which the handshake admission may cut short first)
            self.idle.idle(self, self._tier)

    def handshake_completed(self) -> None:
        """The TLS handshake is done (L{_Channel.handshakeCompleted}): idle from now, a device's a welcome one."""
        if self.idle is None or self.idle_tier is None:
            return
        if peer_certificate(self.transport) is not None:  # read once a connection: kept on the transport
            self._tier = AUTHENTICATED
        self.idle.idle(self, self._tier)

    def evicted(self) -> None:
        """
        Closed, idle (or refused, lingering), for a newcomer (L{IdleConnections.evict}): nothing more is
        read (a request that crossed the close is the client's to retry, as on any keep-alive connection
        the server closes), L{_close_now}. Its count is given back on the next reactor turn; it is aborted
        if it has not closed in L{EVICT_GRACE} seconds.
        """
        self._refused = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self._close_now(EVICT_GRACE)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; the rest of the body is dropped
        if data and not self._in_request and not self._head_watched:
            self._watch_head()  # its first byte: a request line sent a byte a minute is as slow as its headers
        super().dataReceived(data)
        if self._read_closed:
            self._close_after_half_close()  # what is left unparsed, if anything, can never be a whole request

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._head_watched:  # a request held unparsed (L{requestDone}) read on
            self._watch_head()
        self._lines += 1
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._answer_and_close(431, "the request headers are larger than 16 KiB in all")
            return
        if self._lines > self.maxHeaders + 1 and line:  # (Twisted's answer: 400 'malformed HTTP request')
            self._answer_and_close(431, f"the request has more than {self.maxHeaders} header lines")
            return
        if line[:1] in (b" ", b"\t") and self._lines > 1:
            # obs-fold: Twisted joins it to the header before; a proxy in front may not (RFC 9112 5.2: reject)
            self._answer_and_close(400, "a header line begins with a space or tab (obs-fold, RFC 9112 5.2)")
            return
        super().lineReceived(line)

    def _watch_head(self) -> None:
        """
        A request's head has begun: L{SlowSenders} gives it C{header_timeout} seconds, from its first byte (an
        empty line before it too), not its first whole line. Twisted's idle timeout restarts at every byte. (The
        connection is still idle, for L{IdleConnections}: busy once its headers are all in, L{allHeadersReceived}.)
        """
        self._head_watched = True
        watch = getattr(self.site, "slow", None)
        if watch is not None:
            watch.headers_started(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._lines == 0:
            self._answer_and_close(414, "the request line is longer than 16 KiB")
        else:
            self._answer_and_close(431, "a request header line is longer than 16 KiB")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._answer_and_close(400, "malformed HTTP request")

    def _answer_and_close(self, status: int, message: str) -> None:
        if self._refused or self.transport is None:
            return
        code = ErrorCode.UNSUPPORTED if status == 400 else ErrorCode.TOO_LARGE
        error = RegistryError(code, None, message)
        body = error_body(error)
        # the request this answers, when its line is in (a bad header, a malformed chunked body)
        request = self.requests[-1] if self.requests else None
        request_id = getattr(request, "request_id", "-")
        given = f"{REQUEST_ID_HEADER.decode()}: {request_id}\r\n" if request_id != "-" else ""
        self.refuse(
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{given}\r\n".encode() + body
        )
        # logged with the status it was given, not later as a client gone away (499)
        access_log = getattr(self.site, "access_log", None)
        if request is not None and access_log is not None and not request.finished \
                and not getattr(request, "_logged_gone", False):
            request._logged_gone = True
            access_log(request, status)

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        if header == b"Transfer-Encoding" or header == b"Content-Length":
            refused = _framing_error(header, data, self._version, self.requests[-1].requestHeaders)
            if refused is not None:
                self._answer_and_close(400, refused)
                self.length = None
                return False
        ok = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if type(decoder) is _ChunkedTransferDecoder:
            fast = chunked_decoder()  # None: this Twisted's is not the decoder izreg.http.chunked extends
            if fast is not None:  # the same, without copies
                self._transferDecoder = decoder = fast(decoder.dataCallback, decoder.finishCallback)
            # a trailer is held whole until its end, as the headers are: as much at most (Twisted's 64 KiB on
            # any connection, before anyone is known, for as long as it came at body_min_rate); past it, a 400
            decoder._maxTrailerHeadersSize = self.totalHeadersSize
        return ok

    def allHeadersReceived(self) -> None:
        self._lines = 0
        self._head_watched = False  # (the next request's head is watched from its first byte)
        # a request is in progress (its body, 100-continue, its answer): never closed for a newcomer. Not at its
        # first line: a client trickling header lines (slowloris) would hold its place for header_timeout
        self._in_request = True
        if self.idle_tier is not None:
            self.idle.busy(self)
        length = self.length
        super().allHeadersReceived()
        if self.idle is not None and not self._refused and self.requests \
                and getattr(self.requests[-1], "principal", _UNKNOWN) is None:
            # authorized at the headers (body_for) with no caller: a route open to anyone (/healthz, /v2/token),
            # which may be closed for a newcomer, before the idle connections of devices and key holders; on a
            # connection whose caller is known (a device, a key that authenticated a request), the caller's
            self.idle.idle(self, AUTHENTICATED if self._tier == AUTHENTICATED else PUBLIC_REQUEST)
        watch = getattr(self.site, "slow", None)
        if watch is not None and not self._refused:
            if length != 0:
                watch.body_started(self)
            else:
                watch.done(self)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._handlingRequest:
            watch = getattr(self.site, "slow", None)
            if watch is not None:
                watch.received(self, len(data))
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        watch = getattr(self.site, "slow", None)
        if watch is not None:
            watch.done(self)
        super().allContentReceived()

    def too_slow(self, reason: str) -> None:
        """Called by L{SlowSenders}: answer 408 and close."""
        error = RegistryError(ErrorCode.UNAVAILABLE, None, reason)
        body = error_body(error)
        self.refuse(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._close_refused()  # no lingering for a client this slow

    def readConnectionLost(self) -> None:
        """
        The client half-closed (C{shutdown(SHUT_WR)}: L{_Channel}, on plain
        TCP and over TLS, by a FIN or a TLS 1.3 close_notify: izreg.service.fasttls). A request whose body is whole is answered
        (the client still reads), then the connection closed; anything else
        (an idle connection, a body cut short, a refused request's rest) can
        never go on: closed now, as Twisted does on any end of stream.
        """
        if self._read_closed:
            return  # read again once the transport resumed
        self._read_closed = True
        if self.transport is None:
            return
        if self._handlingRequest and not self._refused:
            return  # answered, then closed (L{requestDone})
        self.loseConnection()  # (the channel's: its producer off the transport first, or TLS waits to shut down)

    def writeConnectionLost(self) -> None:
        pass  # the server never half-closes

    def resumeProducing(self) -> None:
        """The transport took what was waiting (the client read): the pipelined requests held are read on."""
        super().resumeProducing()
        if self._held and self.transport is not None:
            self._held = False
            self.paused = False
            self.dataReceived(b"")
            self._close_after_half_close()

    def _close_after_half_close(self) -> None:
        """
        After the client's half-close, close once no request is in progress or held, and none is left to parse:
        no other can come. A request answered at once inside LineReceiver's loop (requests pipelined behind one
        answered later, read on by its requestDone) leaves the rest of the loop's buffer to parse: the loop goes
        on, and L{dataReceived} checks again after it.
        """
        if self._read_closed and not self._handlingRequest and not self._held and self.transport is not None \
                and not self.transport.disconnecting \
                and not (getattr(self, "_busyReceiving", False) and getattr(self, "_buffer", b"")):
            self.loseConnection()  # (the channel's: its producer off the transport first, or TLS waits to shut down)

    def requestDone(self, request) -> None:
        self._in_request = False  # (set again if a pipelined request's headers are all in: super() reads them)
        if getattr(self, "_waitingForTransport", False) and self.persistent and self.transport is not None:
            # The client has not read the answers so far (the transport's buffer is full and asked us to pause):
            # the requests it pipelined behind them wait, unparsed, until it does (L{resumeProducing}). Twisted
            # stops reading the socket then, but answers every request already read, the rest of a 64 KiB read
            # and the next reads: one connection that sent requests and read nothing held ~9 bytes of answers
            # per byte it sent, without end, before it was authenticated (GET /healthz).
            self._held = True
            self.paused = True  # LineReceiver's loop stops at this line; what follows stays in its buffer
            self._networkProducer.pauseProducing()
        super().requestDone(request)
        self._close_after_half_close()
        idle = self.idle
        if idle is None or self._in_request:
            return  # (a pipelined request's headers are in: its tier is set)
        if self.persistent and not self._refused:
            principal = getattr(request, "principal", None) or getattr(request, PRINCIPAL_ATTRIBUTE, None)
            if isinstance(principal, Principal):
                self._tier = AUTHENTICATED
            elif self._tier != AUTHENTICATED or request.code == 401:
                # none yet; or refused authentication (a device revoked in the database, not in a CRL): no longer
                # ranked with the devices and key holders, until a request authenticates again
                self._tier = UNAUTHENTICATED
            idle.idle(self, self._tier)  # (its last bytes may still be on their way: IdleConnections.evict waits)
        elif self.idle_tier is not None:
            idle.busy(self)  # a public request's connection, closing: no longer in PUBLIC_REQUEST

    def connectionLost(self, reason) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        watch = getattr(self.site, "slow", None)
        if watch is not None:
            watch.done(self)
        if self.idle_tier is not None:
            self.idle.busy(self)
        limits = getattr(self.site, "connections", None)
        if limits is not None and self.address is not None:
            limits.release(self.address)
            self.address = None
        super().connectionLost(reason)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _Channel(_GenericHTTPChannelProtocol):
    """
    Twisted's channel switcher, telling the TCP transport that a client's
    half-close is the channel's to handle (L{RegistryChannel.readConnectionLost}),
    not a lost connection: the client may still read its answer; and the
    channel when its TLS handshake is done (Twisted's TLS protocol calls
    C{handshakeCompleted} on the protocol it wraps).
    """

    def handshakeCompleted(self) -> None:
        done = getattr(self._channel, "handshake_completed", None)
        if done is not None:
            done()

    def readConnectionLost(self) -> None:
        lost = getattr(self._channel, "readConnectionLost", None)
        if lost is not None:
            lost()
        elif self._channel.transport is not None:
            self._channel.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class _RefuseConnection(Protocol):
    """Answers one fixed response at connection and closes: a connection over the caps."""

    def __init__(self, response: bytes) -> None:
        self.response = response

    def connectionMade(self) -> None:
        self.transport.write(self.response)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


class RegistrySite(server.Site):
    """
    A Site that routes request bodies through C{body_for(request, method, uri, length)},
    caps connections (C{connections}) and closes slow senders (C{slow}).
    """

    requestFactory = RegistryRequest

    def __init__(self, resource, body_for, connections: ConnectionLimits | None = None,
                 slow: SlowSenders | None = None, proxies=None, access_log=None,
                 readers: SlowReaders | None = None, **kwargs) -> None:
        super().__init__(resource if resource is not None else _NotOpen(), **kwargs)
        self.body_for = body_for if body_for is not None else _not_open
        #: C{access_log(request, status=None)}, called once per request (L{izreg.http.accesslog.AccessLog})
        self.access_log = access_log
        self.proxies = proxies  # izreg.http.clientaddr.TrustedProxies
        self.connections = connections
        self.slow = slow
        self.readers = readers  # closes connections whose client stopped reading a blob (connections.send_timeout)
        self._refusals = ThrottledLog(log)

    def startFactory(self) -> None:
        super().startFactory()
        chunked_decoder()  # the self-check of Twisted's internals: any warning at start, not at the first chunked body

    def serve(self, resource, body_for) -> None:
        """
        Serve the API built once storage is open (the site, with its
        listeners, is made before twistd forks; the API after).
        """
        self.resource = resource
        self.body_for = body_for

    def protocol(self):
        return _Channel(RegistryChannel())

    def buildProtocol(self, addr):
        address = getattr(addr, "host", None) or "local"
        if self.connections is not None:
            refusal = self.connections.admit(address)
            if refusal is not None:
                error, line = refusal
                self._refusals.warn(line)
                return _RefuseConnection(error_response(error))
        p = super().buildProtocol(addr)
        if self.connections is not None:
            channel = p._channel
            channel.address = address
            channel.idle = self.connections.idle
        return p

    def log(self, request) -> None:
        if self.access_log is None:
            return super().log(request)
        self.access_log(request)


_STARTING = "the registry is starting: its storage is not open yet"


def _not_open(request, method, uri, length):
    """The site's C{body_for} until L{RegistrySite.serve} (no request reaches it before the storage opens)."""
    raise RegistryError(ErrorCode.UNAVAILABLE, None, _STARTING)


class _NotOpen(Resource):
    """The site's resource until L{RegistrySite.serve}: 503, like L{_not_open}."""

    isLeaf = True

    def render(self, request):
        return render_error(request, RegistryError(ErrorCode.UNAVAILABLE, None, _STARTING))
