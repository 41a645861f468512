# -*- test-case-name: tests.http.test_smoke -*-
"""The manifest routes: GET/HEAD, PUT and DELETE ``/v2/<name>/manifests/<reference>``."""

from __future__ import annotations

from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import parse_reference
from izreg.http.conditional import check_preconditions, not_modified, request_precondition
from izreg.http.handlers import Handlers, _header, _principal, _set, _who
from izreg.http.responses import LARGE_BODY, MemoryBody, held_body
from izreg.inuse import FORCE_HEADER


class ManifestRoutes(Handlers):
    async def get_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        accepted = mt.parse_accept(request.requestHeaders.getRawHeaders(b"Accept", []))
        reference = _lookup_reference(route.argument)
        expect = request_precondition(request)  # malformed: 400, as for a PUT or DELETE
        found = await self.registry.get_manifest(repo, reference, accepted)
        etag = f'"{found.digest}"'
        check_preconditions(expect, str(found.digest))  # 412: nothing served, no pull recorded
        unchanged = not_modified(expect, str(found.digest))
        body = b"" if unchanged or request.method == b"HEAD" else found.data
        if len(body) > LARGE_BODY:  # held in limits.response_memory: a 503 here, before a pull is recorded or a header set
            body = held_body(request, body, self.responses)
        try:
            if principal is not None and principal.kind == "device" and request.method == b"GET" and self.pulls:
                self.pulls.record(principal.account, principal.device_id, repo.name, str(found.digest), self.now())
            if self.events is not None and request.method == b"GET":
                self.events.pulled(principal, repo, found.digest, found.media_type,
                                   None if isinstance(reference, Digest) else reference)
        except BaseException:
            if isinstance(body, MemoryBody):  # what it holds of limits.response_memory goes back: never sent
                body.reader.close()
            raise
        if unchanged:
            request.setResponseCode(304)
            _set(request, Docker_Content_Digest=found.digest, ETag=etag)
            return b""
        _set(request, Content_Type=found.media_type, Docker_Content_Digest=found.digest,
             Content_Length=len(found.data), ETag=etag)
        return body

    async def put_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        reference = parse_reference(route.argument)
        expect = request_precondition(request)
        body = self._body(request)
        if body.overflow:
            raise RegistryError(ErrorCode.TOO_LARGE, {"limit": body.limit}, "manifest too large")
        digest, manifest = await self.registry.put_manifest(repo, reference, body.getvalue(), _header(request, "Content-Type"),
                                                         _who(request, principal), expect)
        request.setResponseCode(201)
        # the ETag a GET of the reference now answers: the next If-Match of a client that chains moves
        _set(request, Location=f"/v2/{repo}/manifests/{digest}", Docker_Content_Digest=digest, ETag=f'"{digest}"',
             Content_Length=0)
        if manifest.subject is not None:
            _set(request, OCI_Subject=manifest.subject.digest)
        return b""

    async def delete_manifest(self, request, route):
        principal = _principal(request)
        repo = route.repository
        force = (_header(request, FORCE_HEADER) or "").strip().lower() == "true"
        reference = _lookup_reference(route.argument)
        self._check_delete(route)  # disabled: 405, whatever the conditional headers say
        await self.registry.delete_manifest(repo, reference, _who(request, principal), force, request_precondition(request))
        request.setResponseCode(202)
        _set(request, Content_Length=0)  # no body: not an empty chunked one
        return b""


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
