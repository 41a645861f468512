"""What every store's upload body sink shares (L{izreg.storage.interfaces.IBodySink})."""

from __future__ import annotations


class SinkBase:
    """
    The file-like face Twisted sees (C{tell}, C{seek}, C{read}: the body is
    never read back), the size limit, and the state an abort restores.
    Subclasses set C{_finished} in C{done} and C{abort}.
    """

    def __init__(self, session, limit: int | None, expected: int | None) -> None:
        self.session = session
        self.limit = limit
        self.expected = expected
        self.start = session.offset
        self.written = 0
        self.overflow = False
        self._finished = False
        self._hasher_before = session.hasher.copy() if session.hasher is not None else None
        session.busy = True

    def _accept(self, data: bytes) -> bool:
        """Whether to keep C{data} (counted in C{written}); past the limit, nothing more is kept."""
        if self.overflow or self._finished:
            return False
        if self.limit is not None and self.written + len(data) > self.limit:
            self.overflow = True
            return False
        self.written += len(data)
        return True

    def _keep(self, keep_busy: bool) -> int:
        """C{done}'s bookkeeping: the body is kept, the session's offset moves past it."""
        self._finished = True
        self.session.offset = self.start + self.written
        self.session.busy = keep_busy
        return self.session.offset

    def _restore(self) -> None:
        """C{abort}'s bookkeeping: the session's hash is as before this body, and free."""
        self.session.hasher = self._hasher_before
        self.session.busy = False

    def throttle(self, producer) -> None:
        """Nothing to pause by default: the store keeps up with the network."""

    def tell(self) -> int:
        return self.written

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        if not self._finished:
            self.abort()
