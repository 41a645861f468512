# -*- test-case-name: tests.http.test_bodies,tests.e2e.test_drain -*-
"""
What a client may hold of the server before it is known to be welcome:
request bodies in memory (L{BodyBudget}), connections (L{ConnectionLimits},
with the idle ones it may close to make room: L{IdleConnections}) and time
(L{SlowSenders}). Configured under ``[connections]`` and ``[limits]``
(etc/izreg.toml).
"""

from __future__ import annotations

import array
import fcntl
import resource
import sys
import time
from collections import OrderedDict

from twisted.logger import Logger

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.netgroup import address_group
from izreg.http.clientaddr import client_address

log = Logger()


class ThrottledLog:
    """One warning line per C{interval} seconds at most, saying how many were left out."""

    def __init__(self, logger: Logger, interval: float = 10.0, clock=time.monotonic) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last = None
        self._skipped = 0

    def warn(self, line: str) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return
        if self._skipped:
            line = f"{line} (and {self._skipped} more like it in the last {now - self._last:.0f} s)"
        self._last, self._skipped = now, 0
        self.logger.warn("{line}", line=line)


class BodyBudget:
    """
    Bytes held in memory across every connection: request bodies
    (C{limits.body_memory}, L{izreg.http.bodies.BoundedBuffer}), or large response bodies not yet sent
    (C{limits.response_memory}, L{izreg.http.responses.held_body}). Each reservation names its owner
    (L{budget_owner}): with a C{share}, one owner holds at most that much.
    """

    def __init__(self, limit: int, share: int | None = None, setting: str | None = None,
                 holder: str = "the registry") -> None:
        self.limit = limit
        #: the setting that bounds it, as its refusals name it (L{refusal}: else the one of the body kind refused)
        self.setting = setting
        #: who holds it, as its refusals say ("the registry", "the edge")
        self.holder = holder
        self.used = 0
        #: reservations refused (each a 503), since the start (izreg_response_memory_refused_total,
        #: izreg_body_memory_refused_total)
        self.refused = 0
        #: the most one owner (an account, or a client address group) may hold while it holds anything
        #: (its first body is always let through if the whole budget has room): None, no share. Without
        #: it one account's clients that read nothing (responses), or that send a manifest's first bytes
        #: and stall (request bodies), could hold all of C{limit}, and every other account's large answers,
        #: or manifest pushes, would be 503 for as long as they kept it up
        self.share = share
        self.by_owner: dict[str, int] = {}

    def reserve(self, length: int, owner: str | None = None) -> bool:
        if self.used + length > self.limit or self.over_share(length, owner):
            self.refused += 1
            return False
        if owner is not None and self.share is not None:
            self.by_owner[owner] = self.by_owner.get(owner, 0) + length
        self.used += length
        return True

    def release(self, length: int, owner: str | None = None) -> None:
        self.used = max(0, self.used - length)
        if owner is not None and owner in self.by_owner:
            left = self.by_owner[owner] - length
            if left > 0:
                self.by_owner[owner] = left
            else:
                del self.by_owner[owner]

    def owner(self, request) -> str | None:
        """Whose share C{request}'s body is held in (L{budget_owner}); C{None} without a share (none counted)."""
        return None if self.share is None else budget_owner(request)

    def over_share(self, length: int, owner: str | None) -> bool:
        """Whether C{owner}'s share, whatever the rest of the budget, refuses (or would) C{reserve(length, owner)}."""
        held = self.by_owner.get(owner, 0) if owner is not None and self.share is not None else 0
        return bool(held) and held + length > self.share


def refusal(budget: BodyBudget, what: str, setting: str, owner: str | None = None, length: int = 0) -> RegistryError:
    """
    The 503 of C{budget} refusing C{length} more bytes of C{what} ("request bodies") to C{owner}
    (call it before they give back what they held): its share, when that is what refused it
    (L{BodyBudget.over_share}: this client is told it is its own share that is full, not the
    whole budget), else the whole budget. C{setting} names the bound unless the budget does.
    """
    setting = budget.setting or setting
    if budget.over_share(length, owner):
        return RegistryError(
            ErrorCode.UNAVAILABLE,
            {"share": budget.share, "limit": budget.limit},
            f"this client (its account, or unauthenticated its address) is holding as many {what} in memory"
            f" as its share of {setting} allows (a quarter, at least one max_manifest_size); retry later",
            headers={"Retry-After": "1"},
        )
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        {"limit": budget.limit},
        f"{budget.holder} is holding as many {what} in memory as it may, for all its clients ({setting});"
        " retry later",
        headers={"Retry-After": "1"},
    )


def budget_owner(request) -> str:
    """
    Whose share of a L{BodyBudget} a request's body is held in: the caller's account once the request is
    authenticated (C{request.principal}), else its client address group (an IPv4 address, an IPv6 /64;
    behind a trusted proxy the client's, not the proxy's: L{izreg.http.clientaddr.client_address}).
    An account's callers that only pull (its devices: edge gateways in the field; its read-only keys)
    hold a share apart from its keys that push: else one gateway that stalls its pull reports, or reads
    nothing of large manifests, would make its account's pushes, or large tag lists, 503.
    """
    principal = getattr(request, "principal", None)
    if principal is not None and getattr(principal, "account", None):
        return ("puller:" if getattr(principal, "read_only", False) else "account:") + principal.account
    return "address:" + address_group(client_address(request))


class ConnectionLimits:
    """
    Open connections, in total and per client address. Addresses in
    C{exempt} (trusted reverse proxies, whose connections carry many
    clients) count towards the total only. A limit of 0 is no limit.

    IPv6 addresses count per /64 (L{address_group}): a host picks addresses
    in its /64 at will, so per address there would be no cap at all, and a
    /64 is one site as one IPv4 address behind a NAT is. IPv4 addresses
    count each, whatever C{[tls] group_ipv4_prefix} says: this cap refuses
    (429), where the handshake slots only make a connection wait, and a /24
    holds unrelated clients (a provider's pool, cloud neighbours).
    """

    def __init__(self, max_total: int, max_per_address: int, exempt=()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.exempt = exempt
        self.total = 0
        self.peak = 0  # the most open at once since L{izreg.service.bursttrim.BurstTrim} last reset it
        self.by_address: dict[str, int] = {}
        #: C{() -> bool}: close a TLS connection that has not completed its handshake, at C{max_total}
        #: (L{izreg.service.tls.admission.HandshakeAdmission.evict}; None: there is no TLS listener)
        self.evict = None
        #: the connections between requests, the ones closed to make room when C{evict} finds none
        self.idle = IdleConnections()

    def admit(self, address: str) -> tuple[RegistryError, str] | None:
        """
        Count a new connection from C{address}; or (the error to answer, a log line) if it is over a cap.
        At C{max_total}, one connection is closed to make room if there is one: a TLS connection that
        has not completed its handshake (C{evict}), else an idle one (L{IdleConnections.evict}); the
        newcomer is counted at once (the closed one gives its count back when its loss is reported,
        on the next reactor turn). Only when every connection is in the middle of a request or a
        response is the newcomer refused.
        """
        group = self._group(address)
        count = self.by_address.get(group, 0)
        over = bool(self.max_per_address and count >= self.max_per_address and not _exempt(address, self.exempt))
        if self.max_total and self.total >= self.max_total and (over or not self._make_room()):
            return (
                RegistryError(ErrorCode.UNAVAILABLE, None, "the registry has as many connections open as it may; retry later",
                              headers={"Retry-After": "1"}),
                f"refused a connection from {address}: {self.total} connections open"
                f" (connections.max_connections = {self.max_total})",
            )
        if over:
            return (
                RegistryError(ErrorCode.TOOMANYREQUESTS, None, "too many connections from your address; retry later",
                              headers={"Retry-After": "1"}),
                f"refused a connection from {address}: {count} connections open from"
                f" {'this address' if group == address else group}"
                f" (connections.max_per_address = {self.max_per_address})",
            )
        self.total += 1
        if self.total > self.peak:
            self.peak = self.total
        self.by_address[group] = count + 1
        return None

    def _make_room(self) -> bool:
        evict = self.evict
        return (evict is not None and evict()) or self.idle.evict()

    def _group(self, address: str) -> str:
        group = address_group(address)
        if group != address and _exempt(address, self.exempt):
            return address  # a trusted proxy's many connections do not count against its /64's other hosts
        return group

    def release(self, address: str) -> None:
        self.total = max(0, self.total - 1)
        group = self._group(address)
        count = self.by_address.get(group, 0) - 1
        if count > 0:
            self.by_address[group] = count
        else:
            self.by_address.pop(group, None)


#: the tiers of L{IdleConnections}, the first evicted first: refused (L{REFUSED}: a request answered before
#: its body, 401, 404, 413, 431..., the connection closing once its answer has had L{izreg.http.bodies.LINGER}
#: seconds to be read); idle connections that have completed no request and shown no device certificate;
#: idle ones that have completed requests, none authenticated (or whose last request was refused
#: authentication, 401); busy with a request on a route open to anyone (L{PUBLIC_REQUEST}: /healthz,
#: /v2/token, the browse page) from a caller not known; idle ones of a device (a verified client certificate
#: at the handshake) or on which a request authenticated (an access key, a token), and a request of theirs
#: on a route open to anyone (the tier follows the caller)
REFUSED, NEW, UNAUTHENTICATED, PUBLIC_REQUEST, AUTHENTICATED = 0, 1, 2, 3, 4
TIER_NAMES = ("refused", "new", "unauthenticated", "public_request", "authenticated")
#: the tiers whose connections keep their place while bytes of theirs are still to be sent (L{sending}): a
#: response on its way to a caller of standing is never cut; a stranger's (a 401, a refusal) is, under
#: pressure, or one that stops reading would hold its slot until idle_timeout
DELIVERED_FIRST = frozenset({PUBLIC_REQUEST, AUTHENTICATED})
#: how many idle connections L{IdleConnections.evict} looks at, at most, for one whose bytes are all delivered
EVICT_SCAN = 16
#: seconds an evicted connection may take to close before it is aborted (it closes at once: its TCP
#: connection is closed right after the TLS close alert, the client's alert not waited for)
EVICT_GRACE = 2.0


class IdleConnections:
    """
    The connections a newcomer may close: those with no request in progress (between requests on a
    keep-alive connection, none sent yet, or one whose headers are still coming), those whose request
    in progress is on a route open to anyone, and those refused, closing, in five tiers (L{REFUSED},
    L{NEW}, L{UNAUTHENTICATED}, L{PUBLIC_REQUEST}, L{AUTHENTICATED}), each the longest there first: what
    L{ConnectionLimits} closes, one per newcomer, when C{max_connections} are open and no TLS handshake
    is left to cut short (as nginx reuses its idle keep-alive connections when it runs out of
    C{worker_connections}). Without it a thousand cheap idle
    connections (a completed handshake, or a plain TCP connect, and then nothing) locked every device out
    for C{connections.idle_timeout}.

    A channel (L{izreg.http.bodies.RegistryChannel}) reports itself L{idle} (at connection, once its
    request is answered, to move to another tier, and refused: L{REFUSED}), L{busy} (a request's headers
    are all in) and gone (L{busy} too). Not busy at a request's first line: a
    client that sends a request line and then trickles header lines (slowloris) would hold its place
    until C{connections.header_timeout}; it stays where it was, idle since its connection or its last
    answer. A legitimate client sends its headers at once, and one closed in the middle of them is where
    a client is when a server closes its idle keep-alive connection: it retries on a new one.

    A request whose caller is authenticated (a key, a token, a device) is never cut short; one on a
    route that authenticates nobody (C{Access.PUBLIC}, C{Access.TOKEN}) is in L{PUBLIC_REQUEST} from its
    headers until it is answered (L{idle} in its tier then): else anyone could trickle a small body to
    C{GET /healthz} or C{POST /v2/token} (body_grace plus 64 s at body_min_rate) on every slot it takes,
    each arrival closing a device's idle connection. It goes after the idle unauthenticated ones and
    before a device's or a key holder's idle connection. On a connection whose caller is known already (a
    device's certificate, a request that authenticated) it is that caller's: in L{AUTHENTICATED}, with
    its idle connections, never closed before a stranger's.

    A refused request (L{izreg.http.bodies.RegistryChannel.refuse}: answered before its body, the rest
    read and dropped for C{LINGER} seconds, then closed) is in L{REFUSED}, the first closed: busy, as it
    was, anyone could hold every slot against newcomers with one refused request per slot every
    C{LINGER} seconds (a POST with a body and no credentials), and over TLS for C{abortTimeout} more
    while its close waited for the client's close alert.

    Its C{idle_tier} attribute is this object's (the tier it is in, None when in none), each call an
    OrderedDict insertion or deletion (~0.2 us a request). L{evict} takes the first of the lowest tier
    that is not empty: O(1), and at most L{EVICT_SCAN} looked at when the first ones still have response
    bytes to send (L{sending}, in the tiers of L{DELIVERED_FIRST}: never cut short; each one passed over
    goes to the end of its tier). A stranger's response is cut: else a client that sends requests and
    reads no answer (a few KiB of 401s fill its receive window) held its slot until idle_timeout.
    """

    def __init__(self) -> None:
        #: channel -> None, the longest idle first (OrderedDicts: a dict's first key, after many deletions at
        #: its front, is found past every deleted slot, ~100 us at 200,000; an OrderedDict's at once)
        self.tiers: tuple[OrderedDict, ...] = tuple(OrderedDict() for _ in TIER_NAMES)
        self.evicted = [0] * len(TIER_NAMES)  # by tier
        self._log = ThrottledLog(log)

    def __len__(self) -> int:
        return sum(map(len, self.tiers))

    def idle(self, channel, tier: int) -> None:
        """C{channel} has nothing in progress (again), or a public request (L{PUBLIC_REQUEST}), in C{tier}: last in it."""
        old = channel.idle_tier
        if old is not None:
            del self.tiers[old][channel]
        self.tiers[tier][channel] = None
        channel.idle_tier = tier

    def busy(self, channel) -> None:
        """C{channel} has a request in progress (an authenticated caller's, or not known yet), or has gone."""
        tier = channel.idle_tier
        if tier is not None:
            del self.tiers[tier][channel]
            channel.idle_tier = None

    def evict(self) -> bool:
        """Close the least welcome connection for a newcomer: C{False} if there is none (all busy)."""
        left = EVICT_SCAN
        for tier, channels in enumerate(self.tiers):
            for _ in range(min(len(channels), left)):
                left -= 1
                channel = next(iter(channels))
                del channels[channel]
                transport = channel.transport
                if transport is None or transport.disconnecting:
                    channel.idle_tier = None  # closing already: it gives its count back soon
                    continue
                if tier in DELIVERED_FIRST and sending(transport):
                    channels[channel] = None  # its response is still on its way: the end of the line
                    continue
                channel.idle_tier = None
                self.evicted[tier] += 1
                self._log.warn(f"closed a connection ({TIER_NAMES[tier]}) from {channel.address or '?'}"
                               " for a newer one: connections.max_connections are open")
                channel.evicted()
                return True
        return False


    def close_idle(self) -> int:
        """
        A stopping server's (L{izreg.service.services.RegistryService}): close every connection that has
        nothing in progress and its response delivered (not counted as evictions); a request in progress
        on a route open to anyone (L{PUBLIC_REQUEST}) is left to finish. How many were closed.
        """
        closed = 0
        for tier, channels in enumerate(self.tiers):
            if tier == PUBLIC_REQUEST:
                continue
            for channel in list(channels):
                transport = channel.transport
                if transport is not None and not transport.disconnecting and tier in DELIVERED_FIRST \
                        and sending(transport):
                    continue  # its response is still on its way
                del channels[channel]
                channel.idle_tier = None
                if transport is not None and not transport.disconnecting:
                    channel.evicted()
                    closed += 1
        return closed


#: Linux's ioctl for the bytes of a TCP socket's send queue not sent yet (linux/sockios.h); elsewhere none
SIOCOUTQNSD = 0x894B if sys.platform.startswith("linux") else None


def sending(transport) -> bool:
    """
    Whether bytes written to C{transport} (TLS or TCP) are still to be sent: in the TCP transport's buffer,
    or in the kernel's send queue, not sent yet (C{SIOCOUTQNSD}, a system call: the last megabytes of a pull
    that a slow client has not made room for). Bytes sent and not yet acknowledged do not count (a delayed
    ACK holds the last segment of every response for up to 40 ms): an orderly close delivers them.
    """
    tcp = tcp_under(transport)
    if tcp is None:
        return False
    return _buffered(tcp) > 0 or _socket_queue(tcp, SIOCOUTQNSD) > 0


def _buffered(tcp) -> int:
    """Bytes in the TCP transport's own buffer (Twisted's), not yet handed to the socket."""
    return getattr(tcp, "_tempDataLen", 0) + len(getattr(tcp, "dataBuffer", b"")) - getattr(tcp, "offset", 0)


def _socket_queue(tcp, request) -> int:
    """The kernel's count C{request} (an ioctl: C{SIOCOUTQNSD}, C{SIOCOUTQ}) of C{tcp}'s socket; 0 without it."""
    sock = getattr(tcp, "socket", None)
    if sock is None or request is None:
        return 0
    value = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), request, value)
    except (OSError, ValueError):
        return 0
    return value[0]


def tcp_under(transport):
    """The TCP transport (a FileDescriptor) of C{transport}: itself, or under its TLS protocol or wrapper."""
    # (the class's attribute: a ProtocolWrapper's instance answers for its transport's attributes)
    while transport is not None and not hasattr(type(transport), "disconnected"):
        transport = getattr(transport, "transport", None)
    return transport


def _exempt(address: str, exempt) -> bool:
    if callable(exempt):
        return exempt(address)
    return address in exempt


class _Sweeps:
    """One timer for all the connections watched (C{watched}): C{_sweep} every C{interval} seconds while any is."""

    clock = interval = None
    watched: dict
    _call = None

    def _arm(self) -> None:
        if self._call is None and self.watched:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class SlowSenders(_Sweeps):
    """
    Closes connections whose request headers take longer than
    C{header_timeout} seconds, or whose body, once C{body_grace} seconds
    have passed, has come at less than C{body_min_rate} bytes a second on
    average. (twisted's idle timeout alone restarts on every byte: one byte
    every 30 s would hold a connection for ever.) One timer for all
    connections, every C{interval} seconds while any is being watched.
    """

    def __init__(self, clock, header_timeout: float, body_min_rate: int, body_grace: float,
                 interval: float = 1.0) -> None:
        self.clock = clock
        self.header_timeout = header_timeout
        self.body_min_rate = body_min_rate
        self.body_grace = body_grace
        self.interval = interval
        self.watched: dict[object, list] = {}  # channel -> [phase, started, bytes]
        self._call = None
        self._log = ThrottledLog(log)

    def headers_started(self, channel) -> None:
        self.watched[channel] = ["headers", self.clock.seconds(), 0]
        self._arm()

    def body_started(self, channel) -> None:
        self.watched[channel] = ["body", self.clock.seconds(), 0]
        self._arm()

    def received(self, channel, count: int) -> None:
        state = self.watched.get(channel)
        if state is not None:
            state[2] += count

    def done(self, channel) -> None:
        self.watched.pop(channel, None)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for channel, (phase, started, count) in list(self.watched.items()):
            elapsed = now - started
            reason = None
            if phase == "headers" and self.header_timeout and elapsed > self.header_timeout:
                reason = f"the request headers took longer than {self.header_timeout:g} s"
            elif (phase == "body" and self.body_min_rate and elapsed > self.body_grace
                  and count < self.body_min_rate * elapsed):
                reason = f"the request body came slower than {self.body_min_rate} bytes/s"
            if reason is not None:
                self.watched.pop(channel, None)
                address = getattr(channel, "address", None) or "?"
                self._log.warn(f"closed a connection from {address}: {reason} (connections.header_timeout,"
                               " connections.body_min_rate)")
                channel.too_slow(reason)
        self._arm()


#: TIOCOUTQ (SIOCOUTQ): bytes in a TCP socket's send queue not yet acknowledged by the peer (Linux)
SIOCOUTQ = 0x5411 if sys.platform.startswith("linux") else None


def queued_bytes(transport) -> int:
    """
    Bytes written to C{transport} that its client has not yet acknowledged: in the TCP transport's buffer
    and in the kernel's send queue (C{SIOCOUTQ}); the buffer alone where that ioctl is missing.
    """
    tcp = tcp_under(transport)
    if tcp is None:
        return 0
    return _buffered(tcp) + _socket_queue(tcp, SIOCOUTQ)


class SlowReaders(_Sweeps):
    """
    Closes connections whose client has read nothing of a blob (or of a
    large response held in memory: L{izreg.http.responses.MemoryBody}) being
    sent to it for C{send_timeout} seconds (as nginx's C{send_timeout}): while a
    response is sent Twisted's idle timeout is off, and a connection in the
    middle of a request is never evicted, so a client that stopped reading
    held its connection, and over TLS the records and state kept for it
    (~200 KiB, docs/benchmark.md "tlsmem"), for ever. Each look that sees
    nothing read tells the sender (C{stalled}), which has the TLS layer give
    back what it need not keep.

    A sender (L{izreg.http.responses.FileSender}) is watched from its start to
    its end (L{started}, L{done}), with its C{handed} count of bytes given to
    the transport. The client read something since the last look when the
    sender handed more, or fewer bytes wait for its acknowledgment
    (L{queued_bytes}), or nothing waits for it (the sender is waiting on
    its reader, a stream from S3: not the client's doing): a slow reader that
    makes progress is never cut. One timer for all, every C{interval} seconds
    while any is watched (L{_Sweeps}).
    """

    def __init__(self, clock, send_timeout: float, interval: float = 5.0, queued=queued_bytes,
                 setting: str = "connections.send_timeout") -> None:
        self.clock = clock
        self.send_timeout = send_timeout
        self.setting = setting  # named in the line logged for each close (the edge's: edge.send_timeout)
        self.interval = min(interval, send_timeout) if send_timeout else interval
        self.queued = queued
        self.watched: dict[object, list] = {}  # sender -> [transport, handed, queued, since]
        self._call = None
        self._log = ThrottledLog(log)

    def started(self, sender, transport) -> None:
        if self.send_timeout:
            self.watched[sender] = [transport, -1, 0, self.clock.seconds()]
            self._arm()

    def done(self, sender) -> None:
        self.watched.pop(sender, None)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for sender, state in list(self.watched.items()):
            transport, handed, queued, since = state
            now_queued = self.queued(transport)
            if sender.handed != handed or now_queued < queued or not now_queued:
                # it read something, or nothing waits for it (the sender waits on its reader: S3)
                state[1:] = [sender.handed, now_queued, now]
            elif now - since < self.send_timeout:
                stalled = getattr(sender, "stalled", None)
                if stalled is not None:
                    stalled()  # nothing read since the last look: the TLS layer keeps only what must be sent
            else:
                self.watched.pop(sender, None)
                address = getattr(getattr(transport, "getPeer", lambda: None)(), "host", None) or "?"
                what = getattr(sender, "what", "a blob")
                self._log.warn(f"closed a connection from {address}: its client read nothing of {what} for"
                               f" {now - since:.0f} s ({self.setting})")
                sender.too_slow()
        self._arm()


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit of open files towards C{wanted} (never past the hard limit)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
