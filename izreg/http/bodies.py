# -*- test-case-name: tests.http.test_uploads -*-
"""
Request bodies that go where they belong as they arrive.

twisted.web buffers a whole request body (in memory, or an anonymous temp
file) before any resource runs. For blob uploads that would mean a second
copy of every layer, so L{RegistryRequest} asks the site, as soon as the
headers are in, for the object the body should be written into:

- an upload's L{ChunkWriter} (hashing while it appends to the session file),
- a L{BoundedBuffer} for everything else (manifests and small bodies), which
  stops keeping bytes past its limit so memory stays bounded, or
- a L{Rejected} sink that drops the body and remembers why (unknown upload,
  out-of-order chunk, no permission): the handler then answers that error.
"""

from __future__ import annotations

import io
import time
from urllib.parse import unquote_to_bytes

from twisted.web import server

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.accesslog import CLIENT_GONE, REQUEST_ID_HEADER, new_request_id
from izreg.http.errors import render_error


class BoundedBuffer(io.BytesIO):
    """A BytesIO that drops everything past C{limit} bytes and says so."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.overflow = False
        self.received = 0

    def write(self, data) -> int:
        self.received += len(data)
        if self.overflow or self.received > self.limit:
            self.overflow = True
            return len(data)
        return super().write(data)


class Rejected:
    """A body nobody will read: counted and dropped. C{error} says why."""

    def __init__(self, error: RegistryError | None) -> None:
        self.error = error
        self.received = 0

    def write(self, data) -> None:
        self.received += len(data)

    def tell(self) -> int:
        return self.received

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class RegistryRequest(server.Request):
    """
    A request whose body sink is chosen by C{site.body_for} once the headers
    are in. It counts its body bytes and carries a request id (for the
    access log, L{izreg.http.accesslog}).
    """

    request_id = "-"
    #: (method, URI) as soon as the headers are in (before C{method}/C{path} are set)
    line = (b"-", b"")

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
            if access_log is not None:
                access_log(self, CLIENT_GONE)
        super().connectionLost(reason)

    def gotLength(self, length):
        body_for = getattr(self.channel.site, "body_for", None)
        if body_for is None:
            return super().gotLength(length)
        # The channel holds the request line until the body is complete; this is
        # the one point where method and URI are known and no body byte is yet.
        self.line = (self.channel._command, self.channel._path)
        self.content = body_for(self, self.channel._command, self.channel._path, length)

    def process(self):
        self.setHeader(b"Docker-Distribution-API-Version", b"registry/2.0")
        self.request_id = new_request_id(self.getHeader(REQUEST_ID_HEADER))
        self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        try:
            unquote_to_bytes(self.path).decode("utf-8")
        except UnicodeDecodeError:
            # Klein would answer this itself, in HTML; keep every answer an OCI error
            error = RegistryError(ErrorCode.NAME_INVALID, None, "the request path is not valid UTF-8")
            body = render_error(self, error)
            self.write(body)
            self.finish()
            return
        return super().process()


class RegistrySite(server.Site):
    """A Site that routes request bodies through C{body_for(request, method, uri, length)}."""

    requestFactory = RegistryRequest
    #: C{access_log(request, status=None)}, called once per request (L{izreg.http.accesslog.AccessLog})
    access_log = None

    def __init__(self, resource, body_for, **kwargs) -> None:
        super().__init__(resource, **kwargs)
        self.body_for = body_for

    def log(self, request) -> None:
        if self.access_log is None:
            return super().log(request)
        self.access_log(request)
