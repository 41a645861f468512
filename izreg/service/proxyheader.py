# -*- test-case-name: tests.e2e.test_proxy_protocol -*-
"""
A C{haproxy:} listener (C{haproxy:tcp:5443:interface=10.0.0.11}, behind haproxy's C{mode tcp} with
C{send-proxy-v2}, docs/deploy.rst): the PROXY protocol header read I{before} the connection is handed to
the listener's factory, so that what counts a connection when it opens (the connection caps of
L{izreg.http.limits.ConnectionLimits}, C{max_per_address}; the TLS handshake queue's client groups,
L{izreg.service.tls.admission}) counts the client the header names, not haproxy.

Twisted's own C{haproxy:} wrapper (C{twisted.protocols.haproxy}) builds the wrapped protocol at
connect, when only haproxy's address is known: behind it every device shared one client group in the
handshake queue and one per-address count (haproxy's, exempt as a trusted proxy: no cap at all), so one
flooding client competed with every device as if it were them.

Until its header is in, a connection (L{ProxyHeaderProtocol}) holds a few hundred bytes of objects and
its header's bytes, at most L{MAX_HEADER}; it counts in C{max_connections} and C{max_per_address} as its
TCP peer's (haproxy's, exempt from the latter when C{trusted_proxies} lists it), and is closed if its
header is not in within L{HEADER_TIMEOUT} seconds (haproxy sends it at once, with its connection) or is
not one (no TLS, no HTTP is read there). With the header, that count is given back and the connection is
the named client's: the listener's factory builds its protocol for that address, counting it as any other.
A C{LOCAL} header (haproxy's own health checks) names none: the connection is the peer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

from izreg.http.limits import ConnectionLimits, ThrottledLog, _Sweeps

log = Logger()

#: the endpoint prefix read here (Twisted's own parser for it is not used)
PREFIX = "haproxy:"
#: seconds a connection may take to send its PROXY header
HEADER_TIMEOUT = 5.0
#: bytes a PROXY header may have: a v1 line is 107 at most; a v2 header 16 and its addresses (12 or 36) and
#: TLVs (haproxy's: a few dozen, a few hundred with its SSL ones)
MAX_HEADER = 4096
#: a v1 header's line, its CRLF included, at most (the PROXY protocol's specification)
V1_MAX = 107


class ProxyHeaders(_Sweeps):
    """
    The connections of the process's C{haproxy:} listeners whose PROXY header is not in yet: counted in
    C{limits} (as their TCP peer's) meanwhile, and closed past C{timeout} seconds (one timer for all).
    """

    def __init__(self, clock, limits: ConnectionLimits | None, timeout: float = HEADER_TIMEOUT,
                 interval: float = 1.0) -> None:
        self.clock, self.limits, self.timeout = clock, limits, timeout
        self.interval = min(interval, timeout / 4)
        self.watched: dict[ProxyHeaderProtocol, float] = {}  # -> deadline, the oldest first (one timeout for all)
        self.timed_out = 0
        self._log = ThrottledLog(log)

    def opened(self, protocol: "ProxyHeaderProtocol", address: str) -> bool:
        """A connection from C{address} opened: counted and watched; C{False} if the caps refuse it."""
        if self.limits is not None:
            refusal = self.limits.admit(address)
            if refusal is not None:
                self._log.warn(refusal[1])
                return False
        self.watched[protocol] = self.clock.seconds() + self.timeout
        self._arm()
        return True

    def done(self, protocol: "ProxyHeaderProtocol", address: str) -> None:
        """C{protocol}'s header came, or its connection ended first: its count, as C{address}'s, is given back."""
        self.watched.pop(protocol, None)
        if self.limits is not None:
            self.limits.release(address)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        late = []
        for protocol, deadline in self.watched.items():
            if deadline > now:
                break
            late.append(protocol)
        for protocol in late:
            del self.watched[protocol]
            self.timed_out += 1
            self._log.warn(f"closed a connection from {protocol.peer}: no PROXY protocol header within"
                           f" {self.timeout:g} s (a haproxy: listener)")
            protocol.transport.abortConnection()
        self._arm()


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    One connection of a C{haproxy:} listener: reads its PROXY header (v1 or v2), then builds the
    listener's protocol for the address it names and stands as its transport (C{getPeer}, C{getHost}:
    the header's addresses). Bytes after the header wait while that protocol has paused it (a TLS
    connection waiting for a handshake slot).
    """

    peer = "?"  # the TCP peer's address (haproxy's), counted until the header is in
    _info = None  # the header's C{ProxyInfo}, once read
    _counted = False  # counted as C{peer} in the caps (until the header is in)
    _paused = False
    _held = b""  # bytes after the header, kept while the protocol built for it has paused reading

    def __init__(self, factory: "ProxyHeaderFactory") -> None:
        super().__init__(factory, None)
        self._buffer = b""

    def logPrefix(self):
        return "PROXY"

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))  # (as Twisted's wrappers: what the transport is, this is)
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self.peer = getattr(transport.getPeer(), "host", None) or "local"
        self._counted = self.factory.headers.opened(self, self.peer)
        if not self._counted:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            if self._paused or self._held:
                self._held += data
            else:
                self.wrappedProtocol.dataReceived(data)
            return
        if self._info is not None:
            return  # refused by the listener's factory: closing
        buffer = self._buffer = self._buffer + data
        try:
            info, rest = self._parse(buffer)
        except InvalidProxyHeader:
            info = rest = None
        if info is None:
            if rest is None or len(buffer) > MAX_HEADER:
                self._end_of_header()
                self.transport.abortConnection()  # not a PROXY header: nothing is answered
            return
        self._buffer = b""
        self._end_of_header()
        self._info = info
        source = info.source if info.source is not None else self.transport.getPeer()
        protocol = self.factory.wrappedFactory.buildProtocol(source)
        if protocol is None:
            self.transport.abortConnection()
            return
        self.wrappedProtocol = protocol
        self._half_closeable = IHalfCloseableProtocol.providedBy(protocol)
        protocol.makeConnection(self)
        if rest and self.wrappedProtocol is not None:
            self.dataReceived(rest)

    @staticmethod
    def _parse(buffer: bytes):
        """(info, bytes after it) once a whole header is in, (None, b"") while it may still be one, (None, None) if not."""
        if buffer[:len(V2Parser.PREFIX)] == V2Parser.PREFIX[:len(buffer)]:
            if len(buffer) < 16:
                return None, b""
            if buffer[12] & 0xF0 != 0x20 or 16 + int.from_bytes(buffer[14:16], "big") > MAX_HEADER:
                return None, None
            info, rest = V2Parser().feed(buffer)
            return (info, rest) if info is not None else (None, b"")
        if buffer[:len(V1Parser.PROXYSTR)] == V1Parser.PROXYSTR[:len(buffer)]:
            if b"\r\n" not in buffer:
                return (None, b"") if len(buffer) < V1_MAX else (None, None)
            return V1Parser().feed(buffer)
        return None, None

    def _end_of_header(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.headers.done(self, self.peer)

    def getPeer(self):
        info = self._info
        return info.source if info is not None and info.source is not None else self.transport.getPeer()

    def getHost(self):
        info = self._info
        return info.destination if info is not None and info.destination is not None else self.transport.getHost()

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()
        held, self._held = self._held, b""
        if held and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(held)

    _half_closeable = False

    def readConnectionLost(self) -> None:
        """The client's FIN: its protocol's, if it takes a half-close; else the end."""
        if self._half_closeable and self.wrappedProtocol is not None:
            self.wrappedProtocol.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self._end_of_header()
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ProxyHeaderFactory(WrappingFactory):
    """A C{haproxy:} listener's factory: C{wrapped}'s protocols, each built once its PROXY header is in."""

    protocol = ProxyHeaderProtocol

    def __init__(self, wrapped, headers: ProxyHeaders) -> None:
        super().__init__(wrapped)
        self.headers = headers

    def buildProtocol(self, addr):
        return self.protocol(self)

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        return f"{prefix() if prefix else type(self.wrappedFactory).__name__} (PROXY)"


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class ProxyHeaderEndpoint:
    """A stream server endpoint whose connections start with a PROXY header (L{ProxyHeaderFactory})."""

    wrapped: IStreamServerEndpoint
    headers: ProxyHeaders

    def listen(self, factory):
        return self.wrapped.listen(ProxyHeaderFactory(factory, self.headers))


def is_proxied(description: str) -> bool:
    """Whether the endpoint string C{description} is a C{haproxy:} one."""
    return description[:len(PREFIX)].lower() == PREFIX


def server_endpoint(reactor, description: str, headers: ProxyHeaders | None) -> IStreamServerEndpoint:
    """
    The endpoint of C{description}: with the C{haproxy:} prefix and C{headers}, a L{ProxyHeaderEndpoint}
    over the rest of it; else Twisted's (C{serverFromString}).
    """
    if headers is not None and is_proxied(description):
        return ProxyHeaderEndpoint(serverFromString(reactor, description[len(PREFIX):]), headers)
    return serverFromString(reactor, description)

