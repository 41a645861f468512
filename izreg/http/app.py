# -*- test-case-name: tests.http.test_smoke -*-
"""
The registry API: Klein routes, each a few lines over L{Registry}.

Every route is declared in the route table (L{izreg.http.routing}) with
what it does (pull, push, delete, catalog, token, public): the caller is
authorized from the table when the headers arrive (L{RegistryAPI.body_for})
and again before the handler runs; handlers never check access themselves.
Paths under ``/v2/<name>/`` are split by L{izreg.core.routes.match} (names
may contain ``/manifests/``-like components, so werkzeug's converters are
not enough) and looked up by (endpoint, method) in C{table.repository_routes}.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, quote

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from izreg.auth.policy import Action
from izreg.auth.runners import settled, then
from izreg.core import mediatypes as mt
from izreg.core import routes
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import referrers_index
from izreg.core.names import Repository, parse_reference
from izreg.core.ranges import parse_content_range, parse_range, upload_range
from izreg.http.bodies import BoundedBuffer, Dropped, out_of_budget
from izreg.http.errors import as_registry_error, render_error
from izreg.http import health, pullreports
from izreg.http.guard import _client_address
from izreg.http.limits import BodyBudget
from izreg.http.pending import BODY_ERROR, PendingBody
from izreg.http.responses import FileBody, shield
from izreg.http.routing import REPOSITORY, Access, Body, Endpoint, RouteTable, Target
from izreg.http.ui.pages import StaticPages
from izreg.inuse import FORCE_HEADER
from izreg.registry import Registry
from izreg.storage.failures import storage_error
from izreg.storage.interfaces import IBodySink

PULL, PUSH, DELETE = Action.PULL, Action.PUSH, Action.DELETE
ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
#: the largest page a client may ask for with ``n`` (tags, catalog, browse); without ``n``
#: a listing answers up to 100 times as many entries in one page, as distribution answers all
MAX_PAGE = 10000
#: the largest form body (the token endpoint's POST) kept in memory
SMALL_BODY = 64 * 1024
#: the largest page of the browse API's manifest listing (each entry parses a manifest)
BROWSE_PAGE = 1000


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _header(request, name: str) -> str | None:
    # by a bytes name: Twisted would decode the value as UTF-8 for a str name and fail on other bytes
    value = request.getHeader(name.encode("ascii"))
    return value.decode("latin-1") if value is not None else None


def _set(request, **headers) -> None:
    for name, value in headers.items():
        request.setHeader(name.replace("_", "-").encode(), str(value).encode())


def _principal(request):
    """Who the route's authorization found the caller to be (C{None}: open route or no auth)."""
    return getattr(request, "principal", None)


class RegistryAPI:
    app = Klein()
    # "/v2//x" is a bad name, not a redirect (werkzeug would merge the slashes with a 308)
    app.url_map.merge_slashes = False
    table = RouteTable(app)
    route = table.route
    log = Logger()

    #: every /v2/<name>/... route: (izreg.core.routes endpoint, method) -> what it does
    table.repository_routes.update({
        (routes.MANIFEST, "GET"): Endpoint(Access.PULL, "get_manifest"),
        (routes.MANIFEST, "HEAD"): Endpoint(Access.PULL, "get_manifest"),
        (routes.MANIFEST, "PUT"): Endpoint(Access.PUSH, "put_manifest", Body.MANIFEST),
        (routes.MANIFEST, "DELETE"): Endpoint(Access.DELETE, "delete_manifest"),
        (routes.BLOB, "GET"): Endpoint(Access.PULL, "get_blob"),
        (routes.BLOB, "HEAD"): Endpoint(Access.PULL, "get_blob"),
        (routes.BLOB, "DELETE"): Endpoint(Access.DELETE, "delete_blob"),
        (routes.UPLOADS, "POST"): Endpoint(Access.PUSH, "post_upload", Body.UPLOAD),
        (routes.UPLOAD, "GET"): Endpoint(Access.PUSH, "upload_status"),
        (routes.UPLOAD, "PATCH"): Endpoint(Access.PUSH, "patch_upload", Body.UPLOAD),
        (routes.UPLOAD, "PUT"): Endpoint(Access.PUSH, "put_upload", Body.UPLOAD),
        (routes.UPLOAD, "DELETE"): Endpoint(Access.PUSH, "cancel_upload"),
        (routes.TAGS, "GET"): Endpoint(Access.PULL, "list_tags"),
        (routes.TAGS, "HEAD"): Endpoint(Access.PULL, "list_tags"),
        (routes.REFERRERS, "GET"): Endpoint(Access.PULL, "list_referrers"),
        (routes.REFERRERS, "HEAD"): Endpoint(Access.PULL, "list_referrers"),
        (routes.BROWSE, "GET"): Endpoint(Access.PULL, "browse_manifests", bearer=True),
    })

    def __init__(self, registry: Registry, guard, now, *, chunk_min_length: int = 0, authenticator=None,
                 pulls=None, budget: BodyBudget | None = None, ui: bool = True, browser=None, readiness=None,
                 events=None) -> None:
        """
        Built complete, once the storage is open (L{izreg.service.services.RegistryService}).

        @param guard: who may do what (L{izreg.http.guard.AccessGuard}); no default: a registry never runs open.
        """
        self.registry = registry
        self.guard = guard
        self.now = now
        self.chunk_min_length = chunk_min_length
        self.authenticator = authenticator  # for the token endpoint, when it is on
        self.pulls = pulls  # records device pulls (izreg.auth.devicestore.PullRecorder)
        self.budget = budget  # request bodies kept in memory, across connections
        self.ui = StaticPages() if ui else None  # the browse page at /ui/ ([ui] enabled)
        self.browser = browser  # izreg.browse.Browser (the browse API)
        self.readiness = readiness  # izreg.http.health.Readiness (/readyz, pushes refused on a low disk)
        self.events = events  # izreg.service.webhooks.Events (pull events), or None

    def resource(self):
        self.table.check_complete()
        return self.app.resource()

    # -- plumbing ---------------------------------------------------------------

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return render_error(request, as_registry_error(failure))

    def authorize(self, request, target: Target):
        """
        The one authorization, from the route table (at headers time and before
        the handler): the principal, or a Deferred of it while the guard reads
        a shared database (L{izreg.http.guard}).
        """
        if target.endpoint.bearer:
            with _browse_challenge():
                principal = self.guard.authorize(request, target.endpoint.access, target.repository)
            if isinstance(principal, Deferred):
                principal.addErrback(_browse_challenge.rechallenge)
        else:
            principal = self.guard.authorize(request, target.endpoint.access, target.repository)

        def known(principal):
            request.principal = principal
            return principal

        return then(principal, known)

    def body_for(self, request, method: bytes, uri: bytes, length: int | None):
        """
        Where a request body goes (see L{izreg.http.bodies}), decided when the
        headers are in: the route is resolved and the caller authorized first,
        so a request that will be refused raises its error now and its body is
        never kept.
        """
        if length == 0:
            return BoundedBuffer(0)
        target = self.table.resolve(method.decode("ascii", "replace").upper(), uri)
        authorized = self.authorize(request, target)
        if isinstance(authorized, Deferred):  # the caller is read off the reactor: hold the body meanwhile
            return PendingBody(request, authorized, lambda: self._sink(request, target, method, uri, length))
        return self._sink(request, target, method, uri, length)

    def _sink(self, request, target: Target, method: bytes, uri: bytes, length: int | None):
        self._check_push(target)
        kind = target.endpoint.body
        if kind is Body.NONE:
            return Dropped()
        if kind is Body.UPLOAD:
            sink = self._upload_sink(request, target, method, uri, length)
            if IBodySink.providedBy(sink):
                # a full disk mid-body: answered at once (507), the session stays as acknowledged
                sink.on_error = lambda error: request.refuse(
                    storage_error(error) or RegistryError(ErrorCode.UNAVAILABLE, None, "storage error"))
            return sink
        limit = SMALL_BODY if kind is Body.SMALL else self.registry.limits.max_manifest_size
        if length is not None and length > limit:
            raise RegistryError(ErrorCode.TOO_LARGE, {"size": length, "limit": limit}, "request body too large")
        buffer = BoundedBuffer(limit, self.budget, request.refuse)
        if length is not None and not buffer.reserve(length):
            raise out_of_budget(self.budget)
        return buffer

    def _upload_sink(self, request, target: Target, method: bytes, uri: bytes, length: int | None):
        repository = target.repository
        if target.route.endpoint == routes.UPLOADS:
            args = parse_qs(uri.partition(b"?")[2].decode("utf-8", "replace"))
            if "digest" not in args or "mount" in args:
                return Dropped()
            return _throttled(self.registry.monolithic_writer(repository, Digest.parse(args["digest"][0])), request)
        return _throttled(self._chunk_sink(request, repository, target.route.argument, length), request)

    def _check_push(self, target: Target) -> None:
        """Low disk or an unwritable data dir: refuse a push before its first byte (L{health})."""
        if self.readiness is None or target.route is None or target.endpoint.access is not Access.PUSH:
            return
        if target.route.endpoint in (routes.MANIFEST, routes.UPLOADS, routes.UPLOAD):
            refusal = self.readiness.push_refusal()
            if refusal is not None:
                raise refusal

    def _chunk_sink(self, request, repository: Repository, upload_id: str, length: int | None):
        session = self.registry.upload(repository, upload_id)
        location = self._upload_location(repository, upload_id)
        if session.busy:
            raise RegistryError(ErrorCode.RANGE_INVALID, {"reason": "another request is writing to this upload"},
                                headers={"Location": location, "Range": upload_range(session.offset)})
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

    # -- routes ---------------------------------------------------------------------

    @route("/v2/", methods=["GET", "HEAD"], access=Access.PULL, strict_slashes=False)
    def base(self, request):
        return self._json(request, {})

    @route("/healthz", methods=["GET", "HEAD"], access=Access.PUBLIC)
    def healthz(self, request):
        return health.alive(request)

    @route("/readyz", methods=["GET", "HEAD"], access=Access.PUBLIC)
    async def readyz(self, request):
        return await health.ready(request, self.readiness)

    @route("/v2/_catalog", methods=["GET"], access=Access.CATALOG)
    def catalog(self, request):
        principal = _principal(request)
        account = principal.account if principal is not None else None
        limit, last = self._page(request)
        names, more = self.registry.catalog(account, limit, last)
        if more and names:
            self._link(request, "/v2/_catalog", limit, names[-1])
        return self._json(request, {"repositories": names})

    @route("/v2/_izreg/repositories", methods=["GET"], access=Access.CATALOG, bearer=True)
    def browse_repositories(self, request):
        """The caller's account's repositories with their counters (docs/api.rst)."""
        principal = _principal(request)
        account = principal.account if principal is not None else None
        wanted = _arg(request, "account")
        if wanted is not None and account is not None and wanted != account:
            raise RegistryError(ErrorCode.DENIED, {"account": wanted[:64]}, "a key may only list its own account")
        account = account or wanted
        if account is None:
            raise RegistryError(ErrorCode.NAME_INVALID, None, "name the account: ?account=<32 hex>")
        limit, last = self._page(request)
        found, more = self.browser.repositories(account, limit, last)
        if more and found:
            self._link(request, "/v2/_izreg/repositories", limit, found[-1]["name"])
        return self._json(request, {"account": account, "repositories": found})

    @route("/v2/_izreg/pulls", methods=["POST"], access=Access.PULL, body=Body.MANIFEST)
    def pull_reports(self, request):
        """An edge gateway's pulls served from its cache (L{izreg.http.pullreports})."""
        principal = _principal(request)
        if principal is None or principal.kind != "device":
            raise RegistryError(ErrorCode.DENIED, None, "only a device certificate may report pulls")
        body = self._body(request).getvalue()
        if len(body) > pullreports.BODY_LIMIT:
            raise RegistryError(ErrorCode.TOO_LARGE, {"limit": pullreports.BODY_LIMIT}, "pull report too large")
        for repository, digest, at in pullreports.parse(body, principal.account, self.now()):
            self.pulls.record(principal.account, principal.device_id, repository, digest, at)
        request.setResponseCode(202)
        return self._json(request, {})

    @route("/v2/token", methods=["GET", "POST"], access=Access.TOKEN, body=Body.SMALL)
    def token(self, request):
        """The Docker token endpoint (``[auth] token_service = true``)."""
        if self.authenticator is None:
            raise RegistryError(ErrorCode.NOT_FOUND, None, "the token service is not enabled")
        params = dict(request.args)
        body = request.content.getvalue() if hasattr(request.content, "getvalue") else b""
        if request.method == b"POST" and body:
            params.update(parse_qs(body, keep_blank_values=True))
        answer = self.authenticator.issue_token(
            request.method, request.getHeader(b"authorization"), params, _client_address(request))
        return then(answer, lambda answer: self._json(request, answer))

    @route("/ui", methods=["GET", "HEAD"], access=Access.PUBLIC)
    @route("/ui/", methods=["GET", "HEAD"], access=Access.PUBLIC)
    @route("/ui/<name>", methods=["GET", "HEAD"], access=Access.PUBLIC)
    def ui_page(self, request, name=""):
        """The browse page (L{izreg.http.ui.pages}); C{/ui} redirects to C{/ui/}."""
        if self.ui is None:
            raise RegistryError(ErrorCode.NOT_FOUND, None, "the browse page is off ([ui] enabled = false)")
        if request.path == b"/ui":
            request.redirect(b"/ui/")
            return b""
        return self.ui.render(request, name)

    @route("/v2/<path:rest>", methods=ALL_METHODS, access=None, endpoint=REPOSITORY)
    async def dispatch(self, request, rest):
        method = request.method.decode("ascii", "replace").upper()
        target = self.table.resolve_repository(method, rest)
        await settled(self.authorize(request, target))
        self._check_push(target)
        return await getattr(self, target.endpoint.handler)(request, target.route)

    # -- manifests ---------------------------------------------------------------------

    async def get_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        accepted = mt.parse_accept(request.requestHeaders.getRawHeaders(b"Accept", []))
        found = await self.registry.get_manifest(repo, _lookup_reference(route.argument), accepted)
        if principal is not None and principal.kind == "device" and request.method == b"GET" and self.pulls:
            self.pulls.record(principal.account, principal.device_id, repo.name, str(found.digest), self.now())
        if self.events is not None and request.method == b"GET":
            reference = parse_reference(route.argument)
            self.events.pulled(principal, repo, found.digest, found.media_type,
                               None if isinstance(reference, Digest) else reference)
        _set(request, Content_Type=found.media_type, Docker_Content_Digest=found.digest,
             Content_Length=len(found.data), ETag=f'"{found.digest}"')
        return b"" if request.method == b"HEAD" else found.data

    async def put_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        reference = parse_reference(route.argument)
        body = self._body(request)
        if body.overflow:
            raise RegistryError(ErrorCode.TOO_LARGE, {"limit": body.limit}, "manifest too large")
        digest, manifest = await self.registry.put_manifest(repo, reference, body.getvalue(), _header(request, "Content-Type"),
                                                         _who(request, principal))
        request.setResponseCode(201)
        _set(request, Location=f"/v2/{repo}/manifests/{digest}", Docker_Content_Digest=digest, Content_Length=0)
        if manifest.subject is not None:
            _set(request, OCI_Subject=manifest.subject.digest)
        return b""

    async def delete_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        force = (_header(request, FORCE_HEADER) or "").strip().lower() == "true"
        await self.registry.delete_manifest(repo, _lookup_reference(route.argument), _who(request, principal), force)
        request.setResponseCode(202)
        return b""

    # -- blobs -------------------------------------------------------------------------------

    async def get_blob(self, request, route):
        repo = route.repository
        await self.registry.hold_blob(repo, Digest.parse(route.argument))
        blob = self.registry.get_blob(repo, Digest.parse(route.argument), redirect=request.method == b"GET")
        if blob.redirect is not None:
            # the store's short-lived URL ([storage.s3] redirect): the bytes bypass izreg
            request.setResponseCode(307)
            _set(request, Location=blob.redirect, Docker_Content_Digest=blob.digest, Content_Length=0)
            return b""
        try:
            wanted = parse_range(_header(request, "Range"), blob.size)
        except RegistryError:
            _close(blob)
            raise
        _set(request, Content_Type="application/octet-stream", Docker_Content_Digest=blob.digest,
             Accept_Ranges="bytes", ETag=f'"{blob.digest}"')
        start, length = 0, blob.size
        if wanted is not None:
            request.setResponseCode(206)
            _set(request, Content_Range=wanted.content_range())
            start, length = wanted.start, wanted.length
        _set(request, Content_Length=length)
        if request.method == b"HEAD":
            _close(blob)
            return b""
        if blob.data is not None:
            return blob.data[start:start + length]
        return FileBody(blob.file, start, length)

    async def delete_blob(self, request, route):
        principal = _principal(request)
        repo = route.repository
        await self.registry.delete_blob(repo, Digest.parse(route.argument), _who(request, principal))
        request.setResponseCode(202)
        return b""

    # -- uploads -----------------------------------------------------------------------------

    def _upload_location(self, repo: Repository, upload_id: str) -> str:
        return f"/v2/{repo}/blobs/uploads/{upload_id}"

    def _upload_accepted(self, request, repo, session, code: int = 202) -> bytes:
        request.setResponseCode(code)
        _set(request, Location=self._upload_location(repo, session.id), Range=upload_range(session.offset),
             Docker_Upload_UUID=session.id, Content_Length=0)
        return b""

    def _blob_created(self, request, repo, digest) -> bytes:
        request.setResponseCode(201)
        _set(request, Location=f"/v2/{repo}/blobs/{digest}", Docker_Content_Digest=digest, Content_Length=0)
        return b""

    async def post_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        mount = _arg(request, "mount")
        if mount is not None:
            digest = Digest.parse(mount)
            source = _arg(request, "from")
            source_repo = Repository.parse(source) if source else None
            if source_repo is not None:
                await settled(self.guard.check(request, source_repo, PULL))
            if await self.registry.mount(repo, digest, source_repo) is not None:
                return self._blob_created(request, repo, digest)
        elif _arg(request, "digest") is not None:
            digest = Digest.parse(_arg(request, "digest"))
            writer = body if IBodySink.providedBy(body) else None
            session = writer.session if writer else self.registry.pending_upload(repo, digest)
            await shield(self.registry.commit_upload(repo, session, digest, writer))
            return self._blob_created(request, repo, digest)
        session = await self.registry.start_upload(repo)
        if self.chunk_min_length:
            _set(request, OCI_Chunk_Min_Length=self.chunk_min_length)
        return self._upload_accepted(request, repo, session)

    async def upload_status(self, request, route):
        repo = route.repository
        session = self.registry.upload(repo, route.argument)
        return self._upload_accepted(request, repo, session, 204)

    async def patch_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        if IBodySink.providedBy(body):
            await shield(self.registry.chunk_done(body))
            session = body.session
        else:
            session = self.registry.upload(repo, route.argument)
        return self._upload_accepted(request, repo, session)

    async def put_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        digest_text = _arg(request, "digest")
        if digest_text is None:
            raise RegistryError(ErrorCode.DIGEST_INVALID, {"reason": "the digest query parameter is required"})
        digest = Digest.parse(digest_text)
        writer = body if IBodySink.providedBy(body) else None
        session = writer.session if writer else self.registry.upload(repo, route.argument)
        await shield(self.registry.commit_upload(repo, session, digest, writer))
        return self._blob_created(request, repo, digest)

    async def cancel_upload(self, request, route):
        repo = route.repository
        await self.registry.cancel_upload(repo, route.argument)
        request.setResponseCode(204)
        return b""

    # -- listings --------------------------------------------------------------------------

    async def list_tags(self, request, route):
        repo = route.repository
        limit, last = self._page(request)
        tags, more = self.registry.tags(repo, limit, last)
        if more and tags:
            self._link(request, f"/v2/{repo}/tags/list", limit, tags[-1])
        return self._json(request, {"name": repo.name, "tags": tags})

    async def list_referrers(self, request, route):
        repo = route.repository
        artifact_type = _arg(request, "artifactType")
        found = self.registry.referrers(repo, Digest.parse(route.argument), artifact_type)
        if artifact_type is not None:
            _set(request, OCI_Filters_Applied="artifactType")
        return self._json(request, referrers_index(found), mt.OCI_INDEX)

    async def browse_manifests(self, request, route):
        """The repository's manifests with tags, sizes, platforms and device pulls (docs/api.rst)."""
        repo = route.repository
        limit, last = self._page(request)
        found, more = await self.registry.run_io(self.browser.manifests, repo.name, min(limit, BROWSE_PAGE), last)
        if not found and last is None and not self.registry.repo_exists(repo):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, {"name": repo.name})
        if more and found:
            self._link(request, f"/v2/{repo}/_izreg/manifests", min(limit, BROWSE_PAGE), found[-1]["digest"])
        return self._json(request, {"name": repo.name, "manifests": found})

    # -- helpers ----------------------------------------------------------------------------------

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
            return MAX_PAGE * 100, _arg(request, "last")
        if not re.fullmatch(r"[0-9]{1,9}", n):
            raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, {"n": n[:20]})
        return min(int(n), MAX_PAGE), _arg(request, "last")

    def _link(self, request, path: str, limit: int, last: str) -> None:
        _set(request, Link=f'<{path}?n={limit}&last={quote(last, safe="")}>; rel="next"')

    def _json(self, request, value, content_type: str = "application/json") -> bytes:
        body = json.dumps(value).encode()
        _set(request, Content_Type=content_type, Content_Length=len(body))
        return body


def _throttled(sink, request):
    """Let an upload sink pause reading from the connection while its store catches up."""
    if IBodySink.providedBy(sink):
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            sink.throttle(transport)
    return sink


def _who(request, principal) -> tuple[str, str]:
    """The audit log's actor and client address for a request (never a secret)."""
    if principal is None:
        actor = "anonymous"
    elif principal.kind == "device":
        actor = f"device:{principal.account}/{principal.device_id}"
    else:
        actor = f"key:{principal.key_id}"
    return actor, _client_address(request)


class _browse_challenge:
    """A 401 on ``/v2/_izreg/`` challenges with Bearer, never Basic (a browser would show its own login prompt)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, RegistryError) and error.code is ErrorCode.UNAUTHORIZED:
            challenge = error.headers.get("WWW-Authenticate", "")
            if not challenge.startswith("Bearer"):
                error.headers["WWW-Authenticate"] = 'Bearer realm="izreg"'
        return False

    @classmethod
    def rechallenge(cls, failure):
        """The same, for a refusal that comes as a failed Deferred."""
        cls().__exit__(failure.type, failure.value, None)
        return failure


def _lookup_reference(text: str):
    """
    A reference to look up (GET, HEAD, DELETE): a tag that is not valid names
    no manifest, so it is 404 MANIFEST_UNKNOWN; only a PUT to one is 400
    TAG_INVALID (OCI conformance v1.1.1). A malformed digest stays 400 DIGEST_INVALID.
    """
    try:
        return parse_reference(text)
    except RegistryError as e:
        if e.code is ErrorCode.TAG_INVALID:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, {"reference": text[:200]},
                                "no manifest has this reference: it is not a valid tag") from None
        raise


def _close(blob) -> None:
    if blob.file is not None:
        blob.file.close()
