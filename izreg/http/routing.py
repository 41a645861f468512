# -*- test-case-name: tests.http.test_bodies -*-
"""
The route table: every route declares what it does (its L{Access}) and what
it does with a request body (its L{Body}), and authorization is made from
the table, never by a handler.

The same table is read twice for a request:

- when its headers arrive (L{RouteTable.resolve}, from
  L{izreg.http.app.RegistryAPI.body_for}): a request that will be refused
  (no such route, bad credentials, no permission, a body too large) is
  answered at once and its body is never kept;
- before its handler runs (the wrapper L{RouteTable.route} puts around
  every handler): the same check again, on the cached principal.

Adding a route::

    @table.route("/healthz", methods=["GET"], access=Access.PUBLIC)
    def healthz(self, request): ...

    table.repository_routes[(routes.MANIFEST, "GET")] = Endpoint(Access.PULL, "get_manifest")

A Klein route made without the table (``@app.route``) has no declared
access: L{RouteTable.check_complete} refuses to build the site, so a new
route cannot forget its authorization.
"""

from __future__ import annotations

import enum
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from werkzeug.exceptions import MethodNotAllowed, NotFound

from izreg.auth.runners import settled, then
from izreg.core import routes
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import OutsideNamespaces
from izreg.http.accesslog import note_route


class Access(enum.Enum):
    """What a route does, for authorization."""

    PULL = "pull"  # read a repository (or, without one, just be authenticated: GET /v2/)
    PUSH = "push"  # write a repository
    DELETE = "delete"  # delete from a repository
    CATALOG = "catalog"  # list the caller's account
    TOKEN = "token"  # the token endpoint: it checks the credentials it is given itself
    PUBLIC = "public"  # anyone (health checks, static files)


class Body(enum.Enum):
    """What a route does with a request body."""

    NONE = "none"  # none expected: one that comes is dropped as it arrives, never kept
    SMALL = "small"  # kept in memory, at most izreg.http.sinks.FORM_BODY bytes (a form: 8 KiB)
    MANIFEST = "manifest"  # kept in memory, at most limits.max_manifest_size bytes
    UPLOAD = "upload"  # streamed into an upload session's file


@dataclass(frozen=True)
class Endpoint:
    access: Access
    handler: str  # the name of the handler method on the API object
    body: Body = Body.NONE
    bearer: bool = False  # a 401 challenges Bearer, never Basic (the browse API: a browser's fetch())


#: the Klein endpoint that hands ``/v2/<name>/...`` to the repository routes
REPOSITORY = "repository"


@dataclass(frozen=True)
class Target:
    """What a request resolved to: the endpoint, the repository (if any) and the path's arguments."""

    endpoint: Endpoint
    repository: Any = None
    route: routes.Route | None = None
    kwargs: dict = field(default_factory=dict)
    #: a name outside every account: refused (DENIED) once the caller is authenticated, never handled
    outside: OutsideNamespaces | None = None


class RouteTable:
    def __init__(self, app: Klein) -> None:
        self.app = app
        #: Klein endpoint name -> its Endpoint (None for the repository dispatcher)
        self.endpoints: dict[str, Endpoint | None] = {}
        #: (izreg.core.routes endpoint, method) -> Endpoint, for /v2/<name>/...
        self.repository_routes: dict[tuple[str, str], Endpoint] = {}

    def route(self, url: str, methods: list[str], access: Access | None, body: Body = Body.NONE,
              bearer: bool = False, **kwargs):
        """
        Declare a Klein route with its access. The handler runs only once the
        caller is authorized (``request.principal`` holds who it is).
        C{access=None} only for the repository dispatcher (L{REPOSITORY}).
        """

        def decorate(f):
            name = kwargs.get("endpoint", f.__name__)
            endpoint = None if access is None else Endpoint(access, f.__name__, body, bearer)
            self.endpoints[name] = endpoint
            if kwargs.get("branch"):
                self.endpoints[name + "_branch"] = endpoint

            # authorize may answer a Deferred (the guard reads a shared database off the reactor)
            if inspect.iscoroutinefunction(f):
                @functools.wraps(f)
                async def guarded(api, request, *args, **kw):
                    if endpoint is not None:
                        await settled(api.authorize(request, Target(endpoint, kwargs=kw)))
                    return await f(api, request, *args, **kw)
            else:
                @functools.wraps(f)
                def guarded(api, request, *args, **kw):
                    if endpoint is not None:
                        return then(api.authorize(request, Target(endpoint, kwargs=kw)),
                                    lambda _: f(api, request, *args, **kw))
                    return f(api, request, *args, **kw)

            self.app.route(url, methods=methods, **kwargs)(guarded)
            return guarded

        return decorate

    def check_complete(self) -> None:
        """Every Klein endpoint was declared here (with its access), and every handler exists."""
        missing = sorted(set(self.app.endpoints) - set(self.endpoints))
        if missing:
            raise RuntimeError(f"routes without a declared access (use RouteTable.route): {', '.join(missing)}")

    def resolve(self, method: str, target: bytes, request=None) -> Target:
        """
        The endpoint for a request line's method and target (raw, with its
        query). Raises the L{RegistryError} the request would get: unknown
        route, method not allowed, invalid repository name, bad encoding.
        With C{request}, a repository route is noted on it for the access log.
        """
        raw = target.partition(b"?")[0]
        try:
            path = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise RegistryError(ErrorCode.NAME_INVALID, None, "the request path is not valid UTF-8") from None
        adapter = self.app.url_map.bind("localhost", "")
        try:
            name, kwargs = adapter.match(path, method)
        except MethodNotAllowed as e:
            rest = self._repository_path(adapter, path)
            if rest is not None:  # OPTIONS on a repository route: its own methods, not every route's
                return self.resolve_repository(method, rest, request)
            raise RegistryError(ErrorCode.METHOD_UNKNOWN, {"method": method[:20]},
                                headers={"Allow": ", ".join(e.valid_methods or [])}) from None
        except NotFound:
            raise RegistryError(ErrorCode.NOT_FOUND, {"path": path[:300]}) from None
        except Exception:  # werkzeug redirects (strict slashes) and the like: not a body target
            raise RegistryError(ErrorCode.NOT_FOUND, {"path": path[:300]}) from None
        endpoint = self.endpoints.get(name)
        if name not in self.endpoints:
            raise RegistryError(ErrorCode.NOT_FOUND, {"path": path[:300]})
        if endpoint is not None:
            return Target(endpoint, kwargs=kwargs)
        return self.resolve_repository(method, kwargs.get("rest", ""), request)

    def _repository_path(self, adapter, path: str) -> str | None:
        """The path after ``/v2/`` if the repository dispatcher (L{REPOSITORY}) is C{path}'s GET route, else C{None}."""
        try:
            name, kwargs = adapter.match(path, "GET")
        except Exception:  # werkzeug's NotFound, MethodNotAllowed, redirects: no GET route there
            return None
        return kwargs.get("rest", "") if name in self.endpoints and self.endpoints[name] is None else None

    def resolve_repository(self, method: str, rest: str, request=None) -> Target:
        """
        C{rest}: the path after ``/v2/``. With C{request}, the route matched is
        noted on it (L{note_route}): the access log does not match the path again.
        """
        if rest == "_catalog":
            raise RegistryError(ErrorCode.METHOD_UNKNOWN, {"method": method[:20]}, headers={"Allow": "GET"})
        try:
            route = routes.match(rest)
        except OutsideNamespaces as e:
            # a name of the spec's grammar in no account (HOST/app:v1): the caller first, then DENIED
            return Target(self._endpoint(e.endpoint, method), outside=e)
        if request is not None:
            note_route(request, route)
        return Target(self._endpoint(route.endpoint, method), route.repository, route)

    def _endpoint(self, endpoint: str, method: str) -> Endpoint:
        found = self.repository_routes.get((endpoint, method))
        if found is None:
            raise RegistryError(ErrorCode.METHOD_UNKNOWN, {"method": method[:20]}, headers={"Allow": self.allowed(endpoint)})
        return found

    def allowed(self, endpoint: str, without: str | None = None) -> str:
        """The ``Allow`` of a 405 on a repository route: its methods (but C{without}, one that is turned off)."""
        return ", ".join(m for (e, m) in self.repository_routes if e == endpoint and m != without)
