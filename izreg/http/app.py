# -*- test-case-name: tests.http.test_smoke -*-
"""
The registry API: Klein routes, each a few lines over L{Registry}.

This module holds the API object (its collaborators, the route table, the
one authorization) and the routes outside a repository; the repository
routes are grouped by resource (L{izreg.http.manifests},
L{izreg.http.blobs}, L{izreg.http.uploads}, L{izreg.http.listings}) and
where a request body goes is L{izreg.http.sinks}.

Every route is declared in the route table (L{izreg.http.routing}) with
what it does (pull, push, delete, catalog, token, public): the caller is
authorized from the table when the headers arrive (L{RegistryAPI.body_for})
and again before the handler runs; handlers never check access themselves.
Paths under ``/v2/<name>/`` are split by L{izreg.core.routes.match} (names
may contain ``/manifests/``-like components, so werkzeug's converters are
not enough) and looked up by (endpoint, method) in C{table.repository_routes}.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed

from izreg.auth.runners import settled, then
from izreg.core import routes
from izreg.core.errors import ErrorCode, RegistryError
from izreg.http import health, pullreports
from izreg.http.blobs import BlobRoutes
from izreg.http.errors import BASE_BODY, as_registry_error, cut, render_error, started
from izreg.http.fastpath import RepositoryFastPath, fixed_paths
from izreg.http.handlers import _arg, _principal
from izreg.http.clientaddr import client_address
from izreg.http.limits import BodyBudget
from izreg.http.listings import ListingRoutes, TagPages
from izreg.http.manifests import ManifestRoutes
from izreg.http.routing import REPOSITORY, Access, Body, Endpoint, RouteTable, Target
from izreg.http.sinks import BODY_READY, BodySinks
from izreg.http.ui.pages import StaticPages
from izreg.http.uploads import UploadRoutes
from izreg.registry import Registry

ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]


class RegistryAPI(BodySinks, ManifestRoutes, BlobRoutes, UploadRoutes, ListingRoutes):
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
        (routes.UPLOAD, "HEAD"): Endpoint(Access.PUSH, "upload_status"),  # RFC 9110 9.1: HEAD wherever GET
        (routes.UPLOAD, "PATCH"): Endpoint(Access.PUSH, "patch_upload", Body.UPLOAD),
        (routes.UPLOAD, "PUT"): Endpoint(Access.PUSH, "put_upload", Body.UPLOAD),
        (routes.UPLOAD, "DELETE"): Endpoint(Access.PUSH, "cancel_upload"),
        (routes.TAGS, "GET"): Endpoint(Access.PULL, "list_tags"),
        (routes.TAGS, "HEAD"): Endpoint(Access.PULL, "list_tags"),
        (routes.REFERRERS, "GET"): Endpoint(Access.PULL, "list_referrers"),
        (routes.REFERRERS, "HEAD"): Endpoint(Access.PULL, "list_referrers"),
        (routes.BROWSE, "GET"): Endpoint(Access.PULL, "browse_manifests", bearer=True),
        (routes.BROWSE, "HEAD"): Endpoint(Access.PULL, "browse_manifests", bearer=True),
    })

    def __init__(self, registry: Registry, guard, now, *, chunk_min_length: int, ui: bool, tokens=None,
                 pulls=None, budget: BodyBudget | None = None, responses: BodyBudget | None = None, browser=None,
                 readiness=None, events=None) -> None:
        """
        Built complete, once the storage is open (L{izreg.service.services.RegistryService}).

        @param guard: who may do what (L{izreg.http.guard.AccessGuard}); no default: a registry never runs open.
        """
        self.registry = registry
        self.guard = guard
        self.now = now
        self.chunk_min_length = chunk_min_length
        self.tokens = tokens  # the token endpoint (izreg.auth.tokenservice.TokenService), when it is on
        self.pulls = pulls  # records device pulls (izreg.auth.devicestore.PullRecorder)
        self.budget = budget  # request bodies kept in memory, across connections
        self.responses = responses  # large response bodies held in memory until sent (limits.response_memory)
        self.ui = StaticPages() if ui else None  # the browse page at /ui/ ([ui] enabled)
        self.browser = browser  # izreg.browse.Browser (the browse API)
        self.readiness = readiness  # izreg.http.health.Readiness (/readyz, pushes refused on a low disk)
        self.events = events  # izreg.service.webhooks.Events (pull events), or None
        self.tag_pages = TagPages()  # tags/list answers while the index is unchanged (izreg.http.listings)

    def resource(self):
        """The site's root: repository routes straight to L{dispatch}, the rest through Klein (L{fastpath})."""
        self.table.check_complete()
        return RepositoryFastPath(self.dispatch, self._error, self.app.resource(), fixed_paths(self.app.url_map),
                                  ALL_METHODS)

    # -- plumbing ---------------------------------------------------------------

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        if started(request):  # too late for an error answer: it would be read as the rest of the body
            cut(request, failure=failure)
            return None
        error = as_registry_error(failure)
        if failure.check(MethodNotAllowed):  # Klein's, for every route: a repository route's own methods
            try:
                self.table.resolve(request.method.decode("ascii", "replace"), request.uri)
            except RegistryError as e:
                error = e
        return render_error(request, error)

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
        elif target.route is not None and _blob_head(request, target.route.endpoint):
            try:
                principal = self.guard.authorize(request, target.endpoint.access, target.repository)
            except RegistryError as error:
                raise _unseen_blob(error, target) from None
            if isinstance(principal, Deferred):
                def unseen(failure):
                    failure.trap(RegistryError)
                    raise _unseen_blob(failure.value, target)

                principal.addErrback(unseen)
        else:
            principal = self.guard.authorize(request, target.endpoint.access, target.repository)

        def known(principal):
            if target.outside is not None:
                raise _outside(request, target, principal)
            request.principal = principal
            return principal

        return then(principal, known)

    # -- routes ---------------------------------------------------------------------

    @route("/v2/", methods=["GET", "HEAD"], access=Access.PULL, strict_slashes=False)
    def base(self, request):
        return self._answer_json(request, BASE_BODY)

    @route("/healthz", methods=["GET", "HEAD"], access=Access.PUBLIC)
    def healthz(self, request):
        return health.alive(request)

    @route("/readyz", methods=["GET", "HEAD"], access=Access.PUBLIC)
    async def readyz(self, request):
        return await health.ready(request, self.readiness)

    @route("/v2/_catalog", methods=["GET"], access=Access.CATALOG)
    async def catalog(self, request):
        principal = _principal(request)
        account = principal.account if principal is not None else None
        limit, last = self._page(request)
        names, more = await self.registry.catalog(account, limit, last)
        if more and names:
            self._link(request, "/v2/_catalog", limit, names[-1])
        return self._json(request, {"repositories": names})

    @route("/v2/_izreg/repositories", methods=["GET"], access=Access.CATALOG, bearer=True)
    async def browse_repositories(self, request):
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
        found, more = await settled(self.registry.run_read(self.browser.repositories, account, limit, last))
        if more and found:
            self._link(request, "/v2/_izreg/repositories", limit, found[-1]["name"])
        return self._json(request, {"account": account, "repositories": found})

    @route("/v2/_izreg/pulls", methods=["POST"], access=Access.PULL, body=Body.MANIFEST)
    def pull_reports(self, request):
        """An edge gateway's pulls served from its cache (L{izreg.http.pullreports})."""
        principal = _principal(request)
        pullreports.check_reporter(principal)  # (and before its body: L{izreg.http.sinks})
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
        tokens = self.token_service()
        params = dict(request.args)
        body = request.content.getvalue() if hasattr(request.content, "getvalue") else b""
        if request.method == b"POST" and body:
            params.update(parse_qs(body, keep_blank_values=True))
        answer = tokens.issue_token(
            request.method, request.getHeader(b"authorization"), params, client_address(request))
        return then(answer, lambda answer: self._json(request, answer))

    def token_service(self):
        """The token endpoint's service; 404 when it is off (at the headers too, before any body: L{body_for})."""
        if self.tokens is None:
            raise RegistryError(ErrorCode.NOT_FOUND, None, "the token service is not enabled")
        return self.tokens

    @route("/", methods=["GET", "HEAD"], access=Access.PUBLIC)
    @route("/ui", methods=["GET", "HEAD"], access=Access.PUBLIC)
    @route("/ui/", methods=["GET", "HEAD"], access=Access.PUBLIC)
    @route("/ui/<name>", methods=["GET", "HEAD"], access=Access.PUBLIC)
    def ui_page(self, request, name=""):
        """
        The browse page (L{izreg.http.ui.pages}); C{/ui} and C{/} redirect to C{/ui/}: the URL the
        start-up line prints ("izreg serving http://127.0.0.1:5000/"), opened in a browser, leads there.
        """
        if self.ui is None:
            off = "the browse page is off ([ui] enabled = false)"
            raise RegistryError(ErrorCode.NOT_FOUND, None,
                                off + "; the registry API is at /v2/" if request.path == b"/" else off)
        if request.path in (b"/", b"/ui"):
            request.redirect(b"/ui/")
            return b""
        return self.ui.render(request, name)

    @route("/v2/<path:rest>", methods=ALL_METHODS, access=None, endpoint=REPOSITORY)
    async def dispatch(self, request, rest):
        method = request.method.decode("ascii", "replace")  # case-sensitive (RFC 9110 9.1): "get" is not GET
        target = self.table.resolve_repository(method, rest, request)
        await settled(self.authorize(request, target))
        ready = getattr(request, BODY_READY, None)
        while ready is not None:  # a body still waiting for its sink (PendingBody): the sink first
            await ready
            ready, waited = getattr(request, BODY_READY, None), ready
            if ready is waited:
                break  # else it waits again (a chunk taking over from a gone holder, izreg.http.uploadholder)
        self._check_push(target)
        return await getattr(self, target.endpoint.handler)(request, target.route)


def _blob_head(request, endpoint: str) -> bool:
    """A blob C{HEAD}: its refusal has no body to say why, so it is answered "not there" (L{_outside}, L{_unseen_blob})."""
    return request.method == b"HEAD" and endpoint == routes.BLOB


def _outside(request, target: Target, principal) -> RegistryError:
    """
    The answer to an authenticated caller about a name in no account
    (L{izreg.core.names.OutsideNamespaces}): DENIED, with the form and the
    caller's account id. But a blob C{HEAD} has no body to carry that
    message: there it is "not there" (true: no repository of that name
    holds anything), so that skopeo, podman and docker go on to start the
    upload and are refused with the message, not with a bare "403 (Forbidden)".
    """
    outside = target.outside
    if principal is None:  # no caller (an open guard): as any bad name
        return outside
    if _blob_head(request, outside.endpoint):
        return RegistryError(ErrorCode.BLOB_UNKNOWN, {"name": outside.name})
    return outside.denied(principal.account)


def _unseen_blob(error: RegistryError, target: Target) -> RegistryError:
    """
    A blob C{HEAD} in another account's repository: "not there" (BLOB_UNKNOWN, 404), not a bare 403,
    as L{_outside} answers for a name in no account. A C{HEAD} is a pull, so the only DENIED it can get
    is another account's (a read-only key and a device may pull); skopeo, podman and docker then go on
    to start the upload and are refused there with the message, and whether the blob is there is not
    said either way. Other refusals (401) are left as they are.
    """
    if error.code is not ErrorCode.DENIED:
        return error
    return RegistryError(ErrorCode.BLOB_UNKNOWN, {"name": target.repository.name})


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
