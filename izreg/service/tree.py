# -*- test-case-name: tests.service.test_tap -*-
"""
Pieces of a service tree (the server's, L{izreg.tap.make_server}, and the
edge's, L{izreg.edge.service.make_edge}), each given everything it needs
by its constructor: no attribute is set on a built service from outside.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Iterable

from twisted.application import internet, service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError

from izreg import StartupError

#: what to do, by the errno of a bind that failed (C{{where}}: the listener's setting, L{Listener.setting})
LISTEN_HINTS = {
    errno.EADDRINUSE: "another process listens there, another izreg perhaps: stop it or choose a free port{where}",
    errno.EADDRNOTAVAIL: ("no interface of this machine has that address: use 127.0.0.1, 0.0.0.0 or one of its"
                          " own{where}"),
}
#: what to do when binding a port below 1024 is not permitted
PRIVILEGED_PORT_HINT = ("ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up{where}, or"
                        " give the process the capability (AmbientCapabilities=CAP_NET_BIND_SERVICE under systemd)")


#: the address a user on this machine opens for a listener bound to every interface of a family
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class ListenerBindError(CannotListenError):
    """A L{Listener}'s bind error, with the setting that chose its address (L{cannot_listen} names it)."""

    def __init__(self, error: CannotListenError, setting: str | None) -> None:
        super().__init__(error.interface, error.port, error.socketError)
        self.setting = setting


class Listener(StreamServerEndpointService):
    """
    A listener whose bind error is raised at start (one line: L{start_listening}), naming C{setting}
    (C{"--listen or [server] listen"}): where the user changes its address. C{kind} is what it
    serves: C{"http"}, C{"https"} or C{"metrics"} (the start-up line, L{serving}).
    """

    #: as C{twisted.application.strports.service} sets it: a port in use fails the start
    _raiseSynchronously = True

    def __init__(self, endpoint, factory, setting: str | None = None, kind: str = "http") -> None:
        super().__init__(endpoint, factory)
        self.setting, self.kind = setting, kind
        #: the bound port (C{IListeningPort}) once listening succeeded, else C{None}
        self.port = None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise ListenerBindError(e, self.setting) from None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port):
        self.port = port
        return port

    def url(self) -> str | None:
        """
        Where this listener serves: C{http://127.0.0.1:5000/} (the real port of a C{tcp:0}),
        C{unix:/run/izreg.sock}; C{None} before it is bound. A listener on every interface
        (C{0.0.0.0}, C{::}: no address a client can open) is given as its loopback address,
        C{http://127.0.0.1:5000/}, which L{serving} says is all interfaces (L{everywhere}).
        """
        host = self.port.getHost() if self.port is not None else None
        if isinstance(host, UNIXAddress):
            return f"unix:{os.fsdecode(host.name)}"
        if not isinstance(host, (IPv4Address, IPv6Address)):
            return None
        address = LOOPBACK.get(host.host, host.host)
        where = f"[{address}]:{host.port}" if isinstance(host, IPv6Address) else f"{address}:{host.port}"
        return f"{'https' if self.kind == 'https' else 'http'}://{where}/{'metrics' if self.kind == 'metrics' else ''}"

    def everywhere(self) -> bool:
        """Whether this listener is bound to every interface (C{0.0.0.0} or C{::})."""
        host = self.port.getHost() if self.port is not None else None
        return getattr(host, "host", None) in LOOPBACK


def serving(name: str, listeners: Iterable) -> str:
    """
    The start-up line of a service tree whose listeners are bound: C{izreg serving
    http://127.0.0.1:5000/ (TLS: https://127.0.0.1:5443/; metrics: http://127.0.0.1:9100/metrics)};
    a listener on every interface is named by its loopback address, C{http://127.0.0.1:5000/ (all
    interfaces)} (L{Listener.url}).
    """
    urls: dict[str, list[str]] = {"http": [], "https": [], "metrics": []}
    for listener in listeners:
        if isinstance(listener, Listener) and listener.url() is not None:
            urls[listener.kind].append(listener.url() + (" (all interfaces)" if listener.everywhere() else ""))
    main, tls = urls["http"] or urls["https"], urls["https"] if urls["http"] else []
    extra = [f"TLS: {', '.join(tls)}"] if tls else []
    extra += [f"metrics: {', '.join(urls['metrics'])}"] if urls["metrics"] else []
    return f"{name} serving {', '.join(main) or 'nothing'}" + (f" ({'; '.join(extra)})" if extra else "")


def cannot_listen(error: CannotListenError) -> str:
    """The one line of a listener that cannot bind: where, the socket's error, and what to do about it."""
    message = f"cannot listen on {error.interface or '*'}:{error.port}: {error.socketError}"
    code = getattr(error.socketError, "errno", None)
    hint = LISTEN_HINTS.get(code)
    if code in (errno.EACCES, errno.EPERM) and isinstance(error.port, int) and 0 < error.port < 1024:
        hint = PRIVILEGED_PORT_HINT
    setting = getattr(error, "setting", None)
    if hint:
        hint = hint.format(where=f" in {setting}" if setting else "")
    return f"{message} ({hint})" if hint else message


def start_listening(tree: service.MultiService, start: Callable[[], None], log, name: str) -> None:
    """
    Call C{start} (C{tree}'s C{privilegedStartService}, where twistd binds the L{Listener}s): a bind
    that fails is logged and raised as a L{StartupError} of one line (L{cannot_listen}), not a traceback;
    once all are bound, one line says where C{name} serves (L{serving}).
    """
    try:
        start()
    except CannotListenError as e:
        message = cannot_listen(e)
        log.error("{message}", message=message)
        raise StartupError(message) from None
    log.info("{serving}", serving=serving(name, tree))


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
