# -*- test-case-name: tests.service.test_tap -*-
"""
Pieces of a service tree (the server's, L{izreg.tap.make_server}, and the
edge's, L{izreg.edge.service.make_edge}), each given everything it needs
by its constructor: no attribute is set on a built service from outside.
"""

from __future__ import annotations

from twisted.application import internet, service
from twisted.application.internet import StreamServerEndpointService


class Listener(StreamServerEndpointService):
    """A listener whose bind error is raised at start (one line: L{izreg.service.services.RegistryService})."""

    #: as C{twisted.application.strports.service} sets it: a port in use fails the start
    _raiseSynchronously = True


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
