# -*- test-case-name: tests.e2e.test_operations -*-
"""
``GET /healthz`` (the process answers) and ``GET /readyz`` (it can take
pushes: index open, data directory writable, free disk above the floor,
with S3 the bucket answering), both JSON, 200 or 503, without
authentication.

L{Readiness} also gates pushes: a push is refused with 503 ``UNAVAILABLE``
before its first byte is written when the data directory was found
unwritable (by the last probe: every C{/readyz}; while it is closed, a probe
every L{RECHECK} seconds and at each refused push open it again once the
directory is writable, so it never waits for someone to ask C{/readyz}) or
the disk is below ``[server] min_free_disk`` (checked on every push, one
C{statvfs}). Pulls go on.
"""

from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.errors import json_body
from izreg.storage.capacity import DiskFloor

#: how long a client should wait before pushing again after a 503, seconds
RETRY_AFTER = 60
#: the disk check's error (the figures: on /metrics and in the refusal a pusher gets)
LOW_DISK = "the free disk space is below server.min_free_disk"
#: seconds a /readyz waits for the write probe (a data directory on a hung mount: it never ends)
PROBE_TIMEOUT = 10.0
#: seconds between two write probes while the push gate is closed (the data directory found unwritable)
RECHECK = 5.0


class Readiness:
    """
    @param index_error: a quick check of the index (C{None} when it is open).
    @param probe_writable: runs the write probe in a thread (C{None} when writable).
    @param disk: the free-space floor.
    @param more: further checks by name (the S3 bucket's: L{CachedCheck}), each giving C{None} when
        fine, else why; run beside the others.
    @param reactor: with it, a /readyz waits at most L{PROBE_TIMEOUT} for the write probe (then the
        check fails, "did not finish"; the push gate keeps the last outcome: a probe slow behind a busy
        I/O pool is not an unwritable disk).
    """

    log = Logger()

    def __init__(self, index_error: Callable[[], str | None | Deferred],
                 probe_writable: Callable[[], Awaitable[str | None]], disk: DiskFloor,
                 more: dict[str, Callable[[], Deferred]] | None = None, reactor=None) -> None:
        self.index_error = Shared(index_error)  # with PostgreSQL a ping in a database thread: one at a time too
        # a storm of /readyz is one write probe at a time
        self.probe_writable = Shared(probe_writable, reactor, PROBE_TIMEOUT if reactor is not None else None)
        self.disk = disk
        self.more = more or {}
        self.unwritable: str | None = None
        self.reactor = reactor
        self._recheck_call = None  # the next probe while the gate is closed (with a reactor)

    async def refresh(self) -> dict:
        """Run every check; remember the write probe's outcome for the push gate."""
        checks: dict[str, dict] = {}
        more = {name: check() for name, check in self.more.items()}  # under way while the others run
        index = await self.index_error()  # a database round trip (izreg.service.backends), or at once
        checks["index"] = _check(index)
        try:
            unwritable = await self.probe_writable()
        except defer.TimeoutError:  # still running (a hung mount?): not ready now, the push gate as it was
            late = f"the write probe did not finish within {PROBE_TIMEOUT:g} s"
            checks["data_dir"] = _check(late)
        except Exception as e:  # the probe itself failed: not ready, and say why
            unwritable = f"write probe failed: {e}"
        if "data_dir" not in checks:
            self._gate(unwritable)
            checks["data_dir"] = _check(unwritable)
        try:
            space = self.disk.space()
            # no figures: anyone may ask /readyz (they are on /metrics, izreg_disk_*_bytes, for the operator)
            checks["disk"] = _check(LOW_DISK if space.low else None)
        except OSError as e:
            checks["disk"] = _check(e.strerror)
        for name, outcome in more.items():
            error = await outcome
            checks[name] = _check(error)
        return checks

    def _gate(self, unwritable: str | None) -> None:
        """The write probe's outcome: the push gate closed (why) or open; while closed, probed again."""
        if unwritable != self.unwritable:
            if unwritable:
                self.log.error("not ready: {reason}; pushes are refused", reason=unwritable)
            else:
                self.log.info("the data directory is writable again")
        self.unwritable = unwritable
        if unwritable and self.reactor is not None and self._recheck_call is None:
            self._recheck_call = self.reactor.callLater(RECHECK, self._recheck)

    def _recheck(self) -> None:
        """
        A write probe for the closed push gate (the timer's, or a refused push's: one at a time, L{Shared}).
        A probe that fails or does not finish leaves the gate as it is; the timer tries again.
        """
        if self.probe_writable.waiting is not None:
            return  # one in flight: its outcome sets the gate (a storm of refused pushes is one probe)
        if self._recheck_call is not None and self._recheck_call.active():
            self._recheck_call.cancel()
        self._recheck_call = None
        self.probe_writable().addCallbacks(self._gate, lambda _: self._gate(self.unwritable))

    def stop(self) -> None:
        """No more probes of the closed gate (the service stops)."""
        if self._recheck_call is not None and self._recheck_call.active():
            self._recheck_call.cancel()
        self._recheck_call = None
        self.reactor = None

    def push_refusal(self) -> RegistryError | None:
        """The error a push gets now, or C{None}."""
        reason = self.unwritable
        if reason is not None:
            self._recheck()  # writable again? The next push knows, not the next /readyz (nothing may ask it)
        if reason is None:
            try:
                reason = self.disk.refusal()
            except OSError as e:
                reason = f"cannot read the free disk space: {e.strerror}"
        if reason is None:
            return None
        return RegistryError(ErrorCode.UNAVAILABLE, {"reason": reason}, "the registry cannot take pushes now: " + reason,
                             headers={"Retry-After": str(RETRY_AFTER)})


class Shared:
    """
    C{call} (a coroutine function, one returning a Deferred, or a plain value) run one at a time: those
    who ask while it runs get the outcome of the run in flight, not a run of their own. With C{timeout}
    (and C{reactor}), one who waits longer gets L{defer.TimeoutError} and is let go (a run that never
    ends holds no one, and no list of them grows).
    """

    def __init__(self, call: Callable[[], Any], reactor=None, timeout: float | None = None) -> None:
        self.call, self.reactor, self.timeout = call, reactor, timeout
        #: those waiting for the run in flight, or C{None} when none is
        self.waiting: list[Deferred] | None = None

    def __call__(self) -> Deferred:
        answer: Deferred = Deferred(canceller=self._let_go)
        self.start(answer)
        if self.timeout is not None:
            answer.addTimeout(self.timeout, self.reactor)
        return answer

    def start(self, answer: Deferred | None = None) -> None:
        """A run unless one is in flight; C{answer} gets its outcome."""
        if self.waiting is None:
            self.waiting = [answer] if answer is not None else []
            defer.ensureDeferred(_awaited(self.call)).addBoth(self._done)
        elif answer is not None:
            self.waiting.append(answer)

    def _done(self, outcome) -> None:
        answers, self.waiting = self.waiting or [], None
        for answer in answers:
            answer.callback(outcome)  # a Failure is each one's error

    def _let_go(self, answer: Deferred) -> None:  # its timeout cancelled it
        if self.waiting is not None and answer in self.waiting:
            self.waiting.remove(answer)


async def _awaited(call: Callable[[], Any]):
    outcome = call()
    return await outcome if isinstance(outcome, Deferred) or inspect.isawaitable(outcome) else outcome


class CachedCheck:
    """
    A readiness check that costs a remote call (the S3 bucket's HEAD): C{probe()} runs it off the
    reactor (a Deferred of C{None} when fine, else why). Its outcome is kept C{ttl} seconds, so a
    storm of probes is one remote call every C{ttl}; one call runs at a time (L{Shared}). While it
    runs, callers get the last outcome, until the call is C{timeout} seconds old; the first caller, and
    those after that, wait for it, at most C{timeout} seconds (then the check fails, "no answer", kept
    as the outcome). A change between fine and failing is logged.
    """

    log = Logger()

    def __init__(self, what: str, probe: Callable[[], Deferred], reactor, timeout: float, ttl: float) -> None:
        self.what, self.probe, self.reactor, self.timeout, self.ttl = what, probe, reactor, timeout, ttl
        self.outcome: str | None = None
        self._at: float | None = None
        self._started = 0.0  # when the call in flight began
        self._call = Shared(self._run, reactor, timeout)

    def __call__(self) -> Deferred:
        now = self.reactor.seconds()
        if self._at is not None and now - self._at < self.ttl:
            return defer.succeed(self.outcome)
        if self._at is not None:
            self._call.start()
            if now - self._started < self.timeout:
                # a refresh is in flight, not yet late: the last outcome meanwhile (a storm of probes on a
                # busy node, whose call waits behind theirs in the I/O pool, does not make it unready)
                return defer.succeed(self.outcome)
        return self._call().addErrback(self._late)

    def _run(self) -> Deferred:
        self._started = self.reactor.seconds()
        return self.probe().addErrback(lambda f: f"the {self.what} check failed: {f.getErrorMessage()}").addCallback(
            self._keep)

    def _late(self, failure) -> str:
        failure.trap(defer.TimeoutError)  # let go by L{Shared}: not kept until the call ends, which may be never
        return self._keep(f"the {self.what} did not answer within {self.timeout:g} s")

    def _keep(self, outcome: str | None) -> str | None:
        if (outcome is None) != (self.outcome is None):
            if outcome is None:
                self.log.info("the {what} answers again", what=self.what)
            else:
                self.log.error("not ready: {reason}", reason=outcome)
        self.outcome, self._at = outcome, self.reactor.seconds()
        return outcome


def _check(error: str | None) -> dict:
    """A check in /readyz's body: C{{"ok": true}}, or C{{"ok": false, "error": why}}."""
    return {"ok": True} if error is None else {"ok": False, "error": error}


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
        return _answer(request, 503, {"status": "unavailable", "checks": {"index": _check("not open")}})
    checks = await readiness.refresh()
    ok = all(check["ok"] for check in checks.values())
    return _answer(request, 200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
