# -*- test-case-name: tests.http.test_ui -*-
"""
The browse page's files, served at ``/ui/`` with strict security headers.

Only the files named in L{FILES} are served (no path from the request ever
reaches the file system); they are read once, when the API is built, from
the package's ``static/`` folder. Every answer under ``/ui/`` (404s too)
carries the same headers:

- a Content-Security-Policy that allows scripts, styles, images and
  ``fetch()`` from this origin only, no inline script or style, no framing,
  no form submission (the key form is handled by script, so a page without
  script cannot send the key anywhere);
- ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``;
- ``Cache-Control: no-cache`` with an ``ETag``: browsers revalidate (a 304
  costs nothing) so an upgraded server never runs an old script.
"""

from __future__ import annotations

import hashlib
from importlib import resources

#: URL name under /ui/ -> (file in static/, Content-Type)
FILES: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class StaticPages:
    """The page's files in memory (a few kilobytes), with their ETags."""

    def __init__(self, files: dict[str, tuple[str, str]] = FILES) -> None:
        folder = resources.files(__package__) / "static"
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for name, (filename, content_type) in files.items():
            data = (folder / filename).read_bytes()
            etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            self.files[name] = (data, content_type, etag)

    def render(self, request, name: str) -> bytes:
        """The answer for ``/ui/<name>`` (C{""} is the page itself)."""
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header.encode(), value.encode())
        found = self.files.get(name)
        if found is None:
            return _plain(request, 404, b"not found\n")
        data, content_type, etag = found
        request.setHeader(b"ETag", etag.encode())
        if etag in _etags(request.getHeader(b"if-none-match")):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        return data


def _etags(header: bytes | None) -> list[str]:
    if not header:
        return []
    return [part.strip().removeprefix("W/") for part in header.decode("latin-1").split(",")]


def _plain(request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body
