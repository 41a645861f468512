# -*- test-case-name: tests.e2e.test_operations -*-
"""
``GET /healthz`` (the process answers) and ``GET /readyz`` (it can take
pushes: index open, data directory writable, free disk above the floor),
both JSON, 200 or 503, without authentication.

L{Readiness} also gates pushes: a push is refused with 503 ``UNAVAILABLE``
before its first byte is written when the data directory was found
unwritable (by the last probe: every C{/readyz} and a timer) or the disk is
below ``[server] min_free_disk`` (checked on every push, one C{statvfs}).
Pulls go on.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.errors import json_body
from izreg.storage.capacity import DiskFloor

#: how long a client should wait before pushing again after a 503, seconds
RETRY_AFTER = 60


class Readiness:
    """
    @param index_error: a quick check of the index (C{None} when it is open).
    @param probe_writable: runs the write probe in a thread (C{None} when writable).
    @param disk: the free-space floor.
    """

    log = Logger()

    def __init__(self, index_error: Callable[[], str | None],
                 probe_writable: Callable[[], Awaitable[str | None]], disk: DiskFloor) -> None:
        self.index_error = index_error
        self.probe_writable = probe_writable
        self.disk = disk
        self.unwritable: str | None = None

    async def refresh(self) -> dict:
        """Run every check; remember the write probe's outcome for the push gate."""
        checks: dict[str, dict] = {}
        index = self.index_error()
        if isinstance(index, Deferred):  # a database round trip (izreg.service.backends)
            index = await index
        checks["index"] = {"ok": index is None, **({"error": index} if index else {})}
        try:
            unwritable = await self.probe_writable()
        except Exception as e:  # the probe itself failed: not ready, and say why
            unwritable = f"write probe failed: {e}"
        if unwritable != self.unwritable:
            if unwritable:
                self.log.error("not ready: {reason}; pushes are refused", reason=unwritable)
            else:
                self.log.info("the data directory is writable again")
        self.unwritable = unwritable
        checks["data_dir"] = {"ok": unwritable is None, **({"error": unwritable} if unwritable else {})}
        try:
            space = self.disk.space()
            checks["disk"] = {"ok": not space.low, "free": space.free, "total": space.total, "floor": space.minimum}
        except OSError as e:
            checks["disk"] = {"ok": False, "error": e.strerror}
        return checks

    def push_refusal(self) -> RegistryError | None:
        """The error a push gets now, or C{None}."""
        reason = self.unwritable
        if reason is None:
            try:
                reason = self.disk.refusal()
            except OSError as e:
                reason = f"cannot read the free disk space: {e.strerror}"
        if reason is None:
            return None
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": reason}, "the registry cannot take pushes now: " + reason,
                             headers={"Retry-After": str(RETRY_AFTER)})


def _answer(request, status: int, value: dict) -> bytes:
    body = json_body(value)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.setHeader(b"Cache-Control", b"no-store")
    return b"" if request.method == b"HEAD" else body


def alive(request) -> bytes:
    return _answer(request, 200, {"status": "ok"})


async def ready(request, readiness: Readiness | None) -> bytes:
    if readiness is None:
        return _answer(request, 503, {"status": "unavailable", "checks": {"index": {"ok": False, "error": "not open"}}})
    checks = await readiness.refresh()
    ok = all(check["ok"] for check in checks.values())
    return _answer(request, 200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
