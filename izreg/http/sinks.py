# -*- test-case-name: tests.http.test_bodies -*-
"""
Where a request body goes, decided when its headers are in (beside
L{izreg.http.bodies}, which asks): the route is resolved from the table and
the caller authorized first, so a refused request's body is never kept;
then a small body gets a bounded buffer in the shared budget, an upload a
sink of its session (L{izreg.storage.interfaces.IBodySink}).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.internet.defer import Deferred

from izreg.auth.runners import then

from izreg.core import routes
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.core.ranges import parse_content_range, upload_range
from izreg.http.bodies import BoundedBuffer, Dropped, out_of_budget
from izreg.http.handlers import Handlers, _header
from izreg.http.pending import PendingBody
from izreg.http.uploadholder import freed, hold, holder_gone
from izreg.http.routing import Access, Body, Target
from izreg.storage.failures import storage_error
from izreg.storage.interfaces import IBodySink

#: the most of a body a route that reads none drops before it refuses it (413)
SMALL_BODY = 64 * 1024
#: the largest form body kept in memory (L{Body.SMALL}: the token endpoint's POST, reserved before anyone is
#: authenticated): grant_type, service, scope and a refresh token or a password, a few hundred bytes from
#: docker, oras, helm (docs/api.rst)
FORM_BODY = 8 * 1024
#: request attributes: the upload session of a chunk read off the reactor, the Deferred the handler waits on,
#: and whether the chunk already took over from a gone holder (once a request)
FOUND_SESSION = "_izreg_upload_session"
BODY_READY = "_izreg_body_ready"
TOOK_OVER = "_izreg_took_over"


class BodySinks(Handlers):
    """C{body_for} of L{izreg.http.bodies.RegistrySite} (mixed into L{izreg.http.app.RegistryAPI})."""

    def body_for(self, request, method: bytes, uri: bytes, length: int | None):
        """
        Where a request body goes (see L{izreg.http.bodies}), decided when the
        headers are in: the route is resolved and the caller authorized first,
        so a request that will be refused raises its error now and its body is
        never kept.
        """
        if length == 0:
            return BoundedBuffer(0)
        target = self.table.resolve(method.decode("ascii", "replace"), uri, request)
        authorized = self.authorize(request, target)
        if target.endpoint.body is Body.UPLOAD and target.route is not None and target.route.endpoint == routes.UPLOAD \
                and not self.registry.reads_inline:  # (no route: a name outside the accounts, refused)
            # a chunk, on a shared index: its session is read off the reactor, once the caller is known
            authorized = then(authorized, lambda principal: self._find_session(request, target, principal))
            setattr(request, BODY_READY, authorized)  # the handler waits for the sink (L{dispatch})
        if isinstance(authorized, Deferred):  # the caller is read off the reactor: hold the body meanwhile
            return PendingBody(request, authorized, lambda: self._sink(request, target, method, uri, length),
                               self.budget)
        return self._sink(request, target, method, uri, length)

    def _find_session(self, request, target: Target, principal) -> Deferred:
        async def find():
            setattr(request, FOUND_SESSION, await self.registry.upload(target.repository, target.route.argument))
            return principal
        return defer.ensureDeferred(find())

    def _sink(self, request, target: Target, method: bytes, uri: bytes, length: int | None):
        self._check_push(target)
        if target.endpoint.handler == "token":
            self.token_service()  # off: 404 now, before a body byte is read or any budget reserved
        kind = target.endpoint.body
        if kind is Body.NONE:
            # a body on a route that reads none (GET /healthz, open to anyone): refused past SMALL_BODY, not read
            # for as long as the client trickles it (body_min_rate from Content-Length: 100 MB held a slot a day)
            if length is not None and length > SMALL_BODY:
                raise RegistryError(ErrorCode.TOO_LARGE, {"size": length, "limit": SMALL_BODY},
                                    "this route takes no request body")
            return Dropped(SMALL_BODY, request.refuse)
        if kind is Body.UPLOAD:
            sink = self._upload_sink(request, target, method, uri, length)
            if IBodySink.providedBy(sink):
                # a full disk mid-body: answered at once (507), the session stays as acknowledged
                sink.on_error = lambda error: request.refuse(
                    storage_error(error) or RegistryError(ErrorCode.UNAVAILABLE, None, "storage error"))
            return sink
        limit = FORM_BODY if kind is Body.SMALL else self.registry.limits.max_manifest_size
        if length is not None and length > limit:
            raise RegistryError(ErrorCode.TOO_LARGE, {"size": length, "limit": limit}, "request body too large")
        # the caller is known (authorized before the sink is made): its account's share, else its address's
        owner = self.budget.owner(request) if self.budget is not None else None
        buffer = BoundedBuffer(limit, self.budget, request.refuse, owner)
        if length is not None and not buffer.reserve(length):
            raise out_of_budget(self.budget, owner, length)
        return buffer

    def _upload_sink(self, request, target: Target, method: bytes, uri: bytes, length: int | None):
        repository = target.repository
        if target.route.endpoint == routes.UPLOADS:
            args = parse_qs(uri.partition(b"?")[2].decode("utf-8", "replace"))
            if "digest" not in args or "mount" in args:
                return Dropped()
            return _throttled(self.registry.monolithic_writer(repository, Digest.parse(args["digest"][0])), request)
        again = lambda: self._sink(request, target, method, uri, length)  # noqa: E731 - once a gone holder let go
        return _throttled(self._chunk_sink(request, repository, target.route.argument, length, again), request)

    def _check_push(self, target: Target) -> None:
        """Low disk or an unwritable data dir: refuse a push before its first byte (L{health})."""
        if self.readiness is None or target.route is None or target.endpoint.access is not Access.PUSH:
            return
        if target.route.endpoint in (routes.MANIFEST, routes.UPLOADS, routes.UPLOAD):
            refusal = self.readiness.push_refusal()
            if refusal is not None:
                raise refusal

    def _chunk_sink(self, request, repository: Repository, upload_id: str, length: int | None, again=None):
        session = getattr(request, FOUND_SESSION, None) or self.registry.live_upload(repository, upload_id)
        location = self._upload_location(repository, upload_id)
        if session.busy:
            busy = RegistryError(ErrorCode.RANGE_INVALID, {"reason": "another request is writing to this upload"},
                                 headers={"Location": location, "Range": upload_range(session.offset)})
            gone = holder_gone(session) if again is not None and not hasattr(request, TOOK_OVER) else None
            if gone is not None:  # a retry after a reset the server has not read yet (izreg.http.uploadholder)
                setattr(request, TOOK_OVER, True)
                ready = freed(session, gone, busy)
                setattr(request, BODY_READY, ready)  # the handler waits for the sink (L{dispatch})
                return PendingBody(request, ready, again, self.budget)
            raise busy
        content_range = _header(request, "Content-Range")
        if content_range is not None:
            start, end = parse_content_range(content_range)
            if start != session.offset:
                raise RegistryError(
                    ErrorCode.RANGE_INVALID,
                    {"reason": "chunk out of order", "offset": session.offset, "start": start},
                    headers={"Location": location, "Range": upload_range(session.offset)},
                )
            if length is not None and end - start + 1 != length:
                raise RegistryError(ErrorCode.SIZE_INVALID, {"content-range": content_range, "content-length": length})
            return self.registry.chunk_writer(session, expected=end - start + 1)
        return self.registry.chunk_writer(session)


def _throttled(sink, request):
    """Let an upload sink pause reading from the connection while its store catches up."""
    if IBodySink.providedBy(sink):
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            sink.throttle(transport)
            hold(sink, transport, request.channel)
    return sink
