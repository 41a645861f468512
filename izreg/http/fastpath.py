# -*- test-case-name: tests.http.test_request_path -*-
"""
The site's root resource: a request to a repository route goes straight to
the API's repository dispatcher; every other request goes through Klein.

Every ``/v2/<name>/...`` request (a manifest, blob, tag list or upload) is
routed by izreg's own matcher (L{izreg.core.routes}, via
L{izreg.http.routing.RouteTable.resolve_repository}) in
L{izreg.http.app.RegistryAPI.dispatch}: Klein's part in it is only to see
that the path is under ``/v2/`` and not one of the fixed ``/v2/`` routes,
then to run the handler. Klein's way costs about a fifth of a small
request's CPU (binding werkzeug's URL map, its matcher, URL parts,
several Deferreds): so a request Klein would send to that dispatcher is
sent there directly, and answered as Klein answers (the handler's bytes or
resource, its errors through the API's error handler, a handler cancelled
when its client goes away).

A handler that answers without waiting (every read inline, as on LMDB) is
run to its end at once and its answer written with no Deferred at all
(L{RepositoryFastPath.render}); one that waits (a body still coming, a
store read on a thread) goes on under a Deferred from where it stopped
(L{_resume}), cancelled as before when its client goes away.

Which requests: a method of the dispatcher's rule (L{METHODS}), a path
``/v2/<rest>`` whose decoded C{rest} is printable ASCII, does not start
with ``/`` and is not the path of a fixed Klein route (C{_catalog},
C{token}, ...: L{fixed_paths}, read from Klein's own URL map). For those,
werkzeug's map has only the dispatcher's rule to match; any other request
(a fixed route, an odd path, another method) still goes through Klein.
Authorization is unchanged: the dispatcher authorizes from the route table.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from izreg.http.errors import cut, started

log = Logger()

#: a path rest the fast path takes: printable ASCII, no space, not starting with "/"
_PLAIN = re.compile(rb"[!-.0-~][!-~]*")


def fixed_paths(url_map, prefix: str = "/v2/") -> frozenset[bytes]:
    """The rests (after C{prefix}) of the Klein routes under it that have no variable part."""
    return frozenset(rule.rule[len(prefix):].encode("utf-8") for rule in url_map.iter_rules()
                     if rule.rule.startswith(prefix) and "<" not in rule.rule)


class RepositoryFastPath(Resource):
    """
    @param dispatch: C{dispatch(request, rest)}, the repository routes' handler (a coroutine function).
    @param error: C{error(request, failure)}, the API's error handler (bytes to answer).
    @param klein: Klein's resource, for every other request.
    @param fixed: L{fixed_paths} of Klein's URL map.
    @param methods: the dispatcher rule's methods.
    """

    isLeaf = True

    def __init__(self, dispatch, error, klein, fixed: frozenset[bytes], methods) -> None:
        super().__init__()
        self.dispatch = dispatch
        self.error = error
        self.klein = klein
        self.fixed = fixed
        self.methods = frozenset(m.encode("ascii") for m in methods)

    def rest_of(self, request) -> str | None:
        """The dispatcher's C{rest} for this request, or C{None} if it is Klein's to route."""
        path = request.path
        if not path.startswith(b"/v2/") or request.method not in self.methods:
            return None
        rest = unquote_to_bytes(path[4:])
        if not _PLAIN.fullmatch(rest) or rest in self.fixed:
            return None
        return rest.decode("ascii")

    def render(self, request):
        rest = self.rest_of(request)
        if rest is None:
            return self.klein.render(request)
        coroutine = self.dispatch(request, rest)
        try:
            awaited = coroutine.send(None)
        except StopIteration as done:  # answered without waiting: written now, no Deferred
            self._settled(request, done.value, None)
            return NOT_DONE_YET
        except BaseException:
            self._settled(request, None, Failure())
            return NOT_DONE_YET
        finished = _finished(request)  # notifyFinish, asked now, would never fire for a request finished already
        d = None

        def gone(result) -> None:
            finished.append(result)
            if d is not None and isinstance(result, Failure):  # the client went away: stop the handler
                d.cancel()

        if not finished:
            request.notifyFinish().addBoth(gone)
        d = ensureDeferred(_resume(coroutine, awaited))
        d.addCallback(self._answer, request, finished)
        d.addErrback(self._failed, request, finished)  # the handler's failure, or its answer's (a resource's render)
        d.addErrback(lambda failure: log.failure("Unhandled error writing response", failure))
        return NOT_DONE_YET

    def _settled(self, request, body, failure: Failure | None) -> None:
        """The answer of a handler that ran to its end in L{render}: C{body}, or C{failure}."""
        finished = _finished(request)
        try:
            if failure is None:
                try:
                    self._answer(body, request, finished)
                    return
                except Exception:  # its answer failed (a resource's render): as the handler's failure
                    failure = Failure()
            self._failed(failure, request, finished)
        except Exception:
            log.failure("Unhandled error writing response")

    def _failed(self, failure: Failure, request, finished: list):
        if finished:  # the client went away: nothing to answer
            if not failure.check(CancelledError):
                log.failure("Unhandled error processing request", failure)
            return None
        if started(request):  # too late for an error answer: it would be read as the rest of the body
            cut(request, failure=failure)
            return None
        try:
            body = self.error(request, failure)
        except Exception:
            request.processingFailed(Failure())
            return None
        return self._answer(body, request, finished)

    def _answer(self, body, request, finished: list) -> None:
        if body is None and finished:
            return
        if IResource.providedBy(body):
            request.render(getChildForRequest(body, request))
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, bytes):
            request.write(body)
        if not finished:
            request.finish()


def _finished(request) -> list:
    """C{[True]} if C{request} is finished (by its handler) or its client gone, else C{[]}: L{render}'s C{finished}."""
    return [True] if request.finished or getattr(request, "_disconnected", False) else []


def _resume(coroutine, awaited):
    """
    The rest of C{coroutine}, started and now waiting on C{awaited}, as a
    generator for L{ensureDeferred}: what Twisted sends or throws into it goes
    on into the coroutine, so it runs (and is cancelled) as if driven from
    its start.
    """
    while True:
        try:
            sent = yield awaited
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as error:
            step, value = coroutine.throw, error
        else:
            step, value = coroutine.send, sent
        try:
            awaited = step(value)
        except StopIteration as done:
            return done.value
