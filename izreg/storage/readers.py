# -*- test-case-name: tests.storage.test_readers -*-
"""
Readers for blob GETs.

The HTTP layer streams a blob from a reader: C{read(n)} after C{seek(offset)},
and C{close()}. A reader may also offer C{sendfile(out_fd, offset, count) ->
int}: hand C{count} bytes from C{offset} straight to a socket (the kernel
copies them, Python never sees them). The HTTP producer uses it on plain TCP
and reads otherwise (TLS). Only this module calls C{os} on an open blob file.
"""

from __future__ import annotations

import os

from zope.interface import implementer

from izreg.storage.interfaces import IBlobReader


@implementer(IBlobReader)
class FileReader:
    """An open blob file: C{read}/C{seek}/C{close}, plus C{sendfile} (os.sendfile)."""

    def __init__(self, raw) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        return self._raw.read(n)

    def seek(self, offset: int) -> int:
        return self._raw.seek(offset)

    def sendfile(self, out_fd: int, offset: int, count: int) -> int:
        """
        Send up to C{count} bytes from C{offset} to the socket C{out_fd}; the
        number sent (0 at the end of the file). A non-blocking socket that is
        full raises C{BlockingIOError}; the file position does not move.
        """
        return os.sendfile(out_fd, self._raw.fileno(), offset, count)

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def __enter__(self) -> "FileReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_file(path: str) -> FileReader | None:
    """A L{FileReader} on C{path} (unbuffered), or C{None} if it does not exist."""
    try:
        return FileReader(open(path, "rb", buffering=0))
    except FileNotFoundError:
        return None
