# -*- test-case-name: tests.http.test_smoke -*-
"""The blob routes: GET/HEAD (ranges, redirects, streamed) and DELETE ``/v2/<name>/blobs/<digest>``."""

from __future__ import annotations

from twisted.logger import Logger

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.ranges import parse_range
from izreg.http.conditional import check_preconditions, not_modified, range_applies, request_precondition
from izreg.http.handlers import Handlers, _header, _principal, _set, _who
from izreg.http.responses import FileBody

log = Logger()


class BlobRoutes(Handlers):
    async def get_blob(self, request, route):
        repo, digest = route.repository, Digest.parse(route.argument)
        expect = request_precondition(request)  # malformed: 400, before anything is opened
        await self.registry.hold_blob(repo, digest)
        blob = await self.registry.get_blob(repo, digest, redirect=request.method == b"GET")
        if blob.redirect is not None:
            # the store's short-lived URL ([storage.s3] redirect): the bytes bypass izreg
            request.setResponseCode(307)
            _set(request, Location=blob.redirect, Docker_Content_Digest=blob.digest, Content_Length=0)
            return b""
        etag = f'"{blob.digest}"'
        try:
            check_preconditions(expect, str(blob.digest))
        except RegistryError:
            _close(blob)
            raise
        if not_modified(expect, str(blob.digest)):
            _close(blob)
            request.setResponseCode(304)
            _set(request, Docker_Content_Digest=blob.digest, ETag=etag)
            return b""
        ranged = _header(request, "Range")
        try:
            wanted = parse_range(ranged, blob.size) if ranged is not None and range_applies(
                _header(request, "If-Range"), etag) else None
        except RegistryError:
            _close(blob)
            raise
        start, length = (wanted.start, wanted.length) if wanted is not None else (0, blob.size)
        if request.method == b"GET" and length:
            await _begin(blob, start)
        _set(request, Content_Type="application/octet-stream", Docker_Content_Digest=blob.digest,
             Accept_Ranges="bytes", ETag=etag)
        if wanted is not None:
            request.setResponseCode(206)
            _set(request, Content_Range=wanted.content_range())
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
        self._check_delete(route)  # disabled: 405 with its Allow
        await self.registry.delete_blob(repo, Digest.parse(route.argument), _who(request, principal))
        request.setResponseCode(202)
        _set(request, Content_Length=0)  # no body: not an empty chunked one
        return b""


async def _begin(blob, start: int) -> None:
    """
    Open a reader that waits on the network (S3: C{begin}) at C{start}
    before the head is sent: a store out of reach is a 503 with
    ``Retry-After``, a missing object a 404, where after a 200 the connection
    could only be cut.
    """
    begin = getattr(blob.file, "begin", None)
    if begin is None:
        return
    blob.file.seek(start)
    try:
        await begin()
    except FileNotFoundError:
        _close(blob)
        log.error("blob {digest} is indexed but its object is missing", digest=str(blob.digest))
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, {"digest": str(blob.digest)}) from None
    except BaseException:
        _close(blob)
        raise


def _close(blob) -> None:
    if blob.file is not None:
        blob.file.close()
