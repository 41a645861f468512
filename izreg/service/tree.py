# -*- test-case-name: tests.service.test_tap -*-
"""
Pieces of a service tree (the server's, L{izreg.tap.make_server}, and the
edge's, L{izreg.edge.service.make_edge}), each given everything it needs
by its constructor: no attribute is set on a built service from outside.
"""

from __future__ import annotations

import errno
from typing import Callable

from twisted.application import internet, service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError

from izreg import StartupError

#: what to do, by the errno of a bind that failed
LISTEN_HINTS = {
    errno.EADDRINUSE: "another process listens there, another izreg perhaps: stop it or choose a free port",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: use 127.0.0.1, 0.0.0.0 or one of its own",
}
#: what to do when binding a port below 1024 is not permitted
PRIVILEGED_PORT_HINT = ("ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up, or"
                        " give the process the capability (AmbientCapabilities=CAP_NET_BIND_SERVICE under systemd)")


class Listener(StreamServerEndpointService):
    """A listener whose bind error is raised at start (one line: L{start_listening})."""

    #: as C{twisted.application.strports.service} sets it: a port in use fails the start
    _raiseSynchronously = True


def cannot_listen(error: CannotListenError) -> str:
    """The one line of a listener that cannot bind: where, the socket's error, and what to do about it."""
    message = f"cannot listen on {error.interface or '*'}:{error.port}: {error.socketError}"
    code = getattr(error.socketError, "errno", None)
    hint = LISTEN_HINTS.get(code)
    if code in (errno.EACCES, errno.EPERM) and isinstance(error.port, int) and 0 < error.port < 1024:
        hint = PRIVILEGED_PORT_HINT
    return f"{message} ({hint})" if hint else message


def start_listening(start: Callable[[], None], log) -> None:
    """
    Call C{start} (a service tree's C{privilegedStartService}, where twistd binds the L{Listener}s): a bind
    that fails is logged and raised as a L{StartupError} of one line (L{cannot_listen}), not a traceback.
    """
    try:
        start()
    except CannotListenError as e:
        message = cannot_listen(e)
        log.error("{message}", message=message)
        raise StartupError(message) from None


class Timer(internet.TimerService):
    """A C{TimerService} calling C{call} every C{step} seconds on C{clock}, the first time at start."""

    def __init__(self, step: float, call, clock) -> None:
        super().__init__(step, call)
        self.clock = clock


class AfterFirstInterval(Timer):
    """
    A L{Timer} whose first call is one interval after start (not at start):
    a sweep during start-up is not wanted. (It was first added as a workaround
    for a deadlock: a store built on the reactor opened its LMDB database with
    a write transaction of its own while the sweep held the write lock. The
    root cause is fixed: every named database is opened once, with the
    environment, in L{izreg.storage.lmdbenv.open_env}.)
    """

    def startService(self) -> None:
        from twisted.internet import task

        service.Service.startService(self)
        call, args, kwargs = self.call
        self._loop = task.LoopingCall(call, *args, **kwargs)
        self._loop.clock = self.clock
        self._loopFinished = self._loop.start(self.step, now=False)
        self._loopFinished.addErrback(self._failed)
