# -*- test-case-name: tests.service.test_admission -*-
"""
TLS handshakes a few at a time: what a client that has not authenticated may hold.

A TLS connection in its handshake holds OpenSSL's C{SSL} object and its
buffers (~66 KiB each, measured: docs/design.rst), before the client has
shown anything. Bounded only by C{[connections] max_connections}, a thousand
silent clients would hold ~66 MB. Here at most C{[tls] max_handshakes}
connections of the TLS listeners are in their handshake at once
(L{HandshakeAdmission}); a connection accepted beyond that waits with its
reading paused (the kernel keeps whatever it sent) and no OpenSSL object (the
TLS protocol is built, not connected: a few hundred bytes of Python objects).

Clients count by group (L{izreg.core.netgroup.address_group}): an IPv4
address (or, with C{[tls] group_ipv4_prefix}, its /24 or other prefix), an
IPv6 /64 (C{group_ipv6_prefix}: any host picks addresses in its /64 at will),
an IPv4-mapped IPv6 address as the IPv4 one. One group holds at most half of
the slots (L{HandshakeAdmission.per_group}), and a freed slot goes to the
waiting connection of the group that holds the fewest slots (groups that
hold as many take turns; within a group, first come first served): a client
that keeps the slots with silent or slow handshakes, reconnecting as they
time out, from one address or many, would otherwise make every other device
wait behind all of its connections (a Go client, as containerd's and
docker's, gives up a handshake after 10 s). So a device whose group holds
no slot gets the next one that frees, while the attacker holds every other.
An attacker with more groups than there are slots has groups that hold none
too: a group whose connection held a slot for half the handshake timeout or
more without completing its handshake is struck for a while
(L{HandshakeAdmission._strike}), and goes after the groups that hold as
many slots and are not; so once the attacker's groups have each had a
silent connection time out, the device's comes first again. A strike
needs the slot held for half the timeout: an attacker that gives each slot
up just before (and whose groups keep coming back, fresh) is never struck.
So a group in which a request authenticated as a device (its certificate
verified at the handshake, then not revoked and of an account that exists:
L{HandshakeAdmission.device_request}, the last L{MAX_KNOWN}) goes before
every group that holds as many slots and is not known (unless it is struck
itself: a stolen certificate is no way around a strike): a device that
pulled before gets the next slot that frees, however many groups an
attacker without a valid device certificate has (a revoked one completes
a handshake, revocation being the request's check, but knows no group).
One device (account and device id) counts at most L{MAX_DEVICE_GROUPS}
known groups, the last it made known: past them its least recent one is
forgotten, unless another device counts it too (devices behind one NAT
address share its group, each also on its own LTE address, say), so one
valid certificate used from a /52 of IPv6 /64s cannot push the fleet's
groups out of the last L{MAX_KNOWN} (nor get there, and stay there, the
waiting connections it queued while they were known: a group that becomes
known or is forgotten moves to its place among those waiting). The known
groups and the devices that count them outlive a restart
(L{HandshakeAdmission.remember}, L{izreg.service.tls.known}), so the cap
holds across one; the groups of a device forgotten for L{MAX_KNOWN} devices
more recent are counted by no device, and stay known until they age out of
the last L{MAX_KNOWN} (as do those read back from a file of an older izreg,
which names no device). A slot frees when its handshake completes or its
connection ends.

At most C{[tls] max_waiting} connections wait (their memory is taken before
anyone is known: a few KiB each, bench/pending_tls.py, and the kernel's
socket buffers): past it the oldest waiting connection of the group with the
most waiting is closed (the longest queue loses its head, the connection
likeliest to have been given up by its client); among groups with as many
waiting (the first L{EVICT_SCAN} to reach that length), a struck group's
goes first, then one that is not known.

Time limits, both closing the connection (an abort: no TLS alert), checked
by one timer for all connections, every second while any is watched:

  - C{[tls] handshake_timeout}: from getting a slot to a completed handshake
    (a silent or slow client cannot keep a slot);
  - C{[connections] idle_timeout}: the longest a connection waits for a slot.

Waiting connections count in C{[connections] max_connections} and
C{max_per_address} (per IPv4 address, per IPv6 /64) as any other (the site admits them when they are
accepted; one lost while waiting is reported to the site's protocol, which
gives its count back).

When C{[connections] max_connections} are open and another arrives, the
site (L{izreg.http.limits.ConnectionLimits}) asks L{HandshakeAdmission.evict}
to close one connection that has not completed its handshake, rather than refuse the
newcomer (silent connections, held until they time out, would otherwise lock
every device out): the oldest waiting connection of the group with the most
waiting (struck groups first, then those not known, among the first
L{EVICT_SCAN} of that length: as past C{max_waiting}), else, none waiting,
the oldest in its handshake (likewise). When every open connection has
completed its handshake, the site closes an idle one instead, TLS or plain
(L{izreg.http.limits.IdleConnections}: no request in progress and its
response sent; new ones first, then those with no authenticated
request, then devices' and authenticated ones, the longest idle first); only
when every connection is in the middle of a request or a response is the
newcomer refused (503).

The TLS protocol (izreg's, or Twisted's stock one: L{izreg.service.tls.fallback})
gets the real TCP transport, so nothing changes once it runs; until its
handshake is done the gate (L{_Gate}) passes it the bytes read and watches
for the end of the handshake, then gets out of the way (the transport's calls
go straight to the TLS protocol's methods). With handshake threads
(L{izreg.service.tlsthreads}) a handshake ends in a step's callback, which
the gate watches too.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from izreg.core.netgroup import address_group
from izreg.http.limits import ThrottledLog, tcp_under
from izreg.http.plain import ON_TLS_ANSWER, plain_on_tls

log = Logger()

#: a gate's states
_WAITING, _SHAKING, _DONE = 0, 1, 2


class HandshakeAdmission:
    """
    The slots of every TLS listener of the process (C{limit}; 0: no limit), and
    the connections waiting for one, by client group (L{address_group}).

    @param clock: the reactor (C{seconds}, C{callLater}).
    @param handshake_timeout: seconds from a slot to a completed handshake (0: no limit).
    @param wait_timeout: seconds a connection may wait for a slot (0: no limit).
    @param max_waiting: connections waiting at most (0: no limit); past it the
        oldest waiting connection of the group with the most waiting is closed.
    @param ipv4_prefix: IPv4 addresses count per this prefix (32: each address).
    @param ipv6_prefix: IPv6 addresses count per this prefix (64: a site's or host's network).

    One timer for all connections (not one each: a C{DelayedCall} set and
    cancelled per connection cost ~14 us of its ~2 ms), every C{interval}
    while any is watched; a timeout is kept to within that interval.
    """

    def __init__(self, clock, limit: int, handshake_timeout: float = 10, wait_timeout: float = 60,
                 max_waiting: int = 0, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> None:
        self.clock = clock
        self.limit = limit
        self.handshake_timeout = handshake_timeout
        self.wait_timeout = wait_timeout
        self.max_waiting = max_waiting
        self.ipv4_prefix, self.ipv6_prefix = ipv4_prefix, ipv6_prefix
        self.interval = min([1.0] + [t / 4 for t in (handshake_timeout, wait_timeout) if t])
        self.in_progress = 0  # connections in their handshake (holding a slot)
        #: the most slots one group holds at once (see the module's docstring)
        self.per_group = max(1, limit // 2) if limit else 0
        self.holding: dict[str, int] = {}  # group -> slots it holds (groups holding none: absent)
        self.waiting: dict[_Gate, float] = {}  # -> deadline; insertion-ordered: the oldest first
        #: group -> its waiting connections, the oldest first (a list: 64 bytes for one, a dict 224; the ones
        #: taken out are mostly the first, and a removal is a scan in C of a group's at most max_waiting)
        self.queues: dict[str, list[_Gate]] = {}
        #: [3n], [3n + 1] and [3n + 2]: the groups with connections waiting that hold n slots (< per_group),
        #: known (L{_know}) and not struck, neither, and struck (L{_strike}) when the group last came to n, in the
        #: order they came
        self._ready: list[dict[str, None]] = [{} for _ in range(3 * self.per_group)]
        self._struck: dict[str, float] = {}  # group -> when last struck, the oldest first (at most MAX_STRUCK)
        self._known: dict[str, None] = {}  # groups of devices (L{_know}), the least recent first (at most MAX_KNOWN)
        #: (account, device id) -> the known groups it counts (L{device_request}), the least recent first (at most
        #: L{MAX_DEVICE_GROUPS}); the devices least recent first (at most MAX_KNOWN, each counting one group or more)
        self._devices: dict[tuple[str, str], dict[str, None]] = {}
        #: known group -> the devices that count it (none: absent; a group whose devices were all forgotten, or
        #: restored by L{remember} with none, is counted by none and known until it ages out of the last MAX_KNOWN)
        self._counted: dict[str, set[tuple[str, str]]] = {}
        self.known_changes = 0  # calls of L{_know}: whether the known groups changed since a count
        #: n -> the groups with n connections waiting (n > 0), in the order they came to n; and the largest n
        self._by_length: dict[int, dict[str, None]] = {}
        self._longest = 0
        self.shaking: dict[_Gate, float] = {}  # in their handshake, with a timeout -> deadline
        self.timed_out = 0  # connections closed for a handshake or a wait too long
        self.dropped = 0  # waiting connections closed for a newer one (max_waiting)
        #: in their handshake (holding a slot), the oldest first: the connections L{evict} may close when none waits
        self.unsettled: dict[_Gate, None] = {}
        self.evicted = 0  # connections closed by L{evict}
        self._evictions = ThrottledLog(log)
        self._call = None

    def wrap(self, factory: Factory) -> Factory:
        """The listener's factory: C{factory}'s (TLS) connections, admitted here (with no cap too: see L{_Gate})."""
        return AdmissionFactory(self, factory)

    def group_of(self, address: str) -> str:
        return address_group(address, self.ipv4_prefix, self.ipv6_prefix)

    def _arrived(self, gate: "_Gate") -> None:
        # a waiting connection is never admissible while a slot is free (L{_release} admits it at once),
        # so one that may have a slot takes it now (with no cap, every one)
        group = gate.group
        if not self.limit or (self.in_progress < self.limit and self.holding.get(group, 0) < self.per_group):
            self._admit(gate)
            return
        self.waiting[gate] = self.clock.seconds() + self.wait_timeout if self.wait_timeout else _NEVER
        queue = self.queues.get(group)
        if queue is None:
            queue = self.queues[group] = [gate]  # 64 bytes; appended to an empty list, 88
            self._place(group, self.holding.get(group, 0))
        else:
            queue.append(gate)
        self._resized(group, len(queue) - 1, len(queue))
        gate._wait()
        if self.max_waiting and len(self.waiting) > self.max_waiting:
            self.dropped += 1
            self._unqueue_least_welcome()._expired()
        self._arm()

    def _unqueue_least_welcome(self) -> "_Gate":
        """
        Take out the waiting connection to close, past C{max_waiting} or for a newcomer over
        C{max_connections}: the oldest of the longest queue (the likeliest to have been given up by its
        client: a Go client gives up a handshake after 10 s), of a struck group, else of one not known,
        among the first L{EVICT_SCAN} groups to reach that length; a device's, else, would go as soon as
        the newcomers from an attacker's fresh groups outnumber max_waiting (each reconnecting as it is
        dropped).
        """
        gate = self.queues[self._least_welcome(self._by_length[self._longest], _itself)][0]
        self._unqueue(gate)
        return gate

    def evict(self) -> bool:
        """
        Close one connection that has not completed its handshake, for a newcomer over
        C{[connections] max_connections}: C{False} if there is none (see the module's docstring).
        """
        if self.waiting:
            gate = self._unqueue_least_welcome()
            where = "waiting for its TLS handshake"
        elif self.unsettled:
            gate = self._least_welcome(self.unsettled, lambda gate: gate.group)
            del self.unsettled[gate]
            where = "in its TLS handshake"
        else:
            return False
        self.evicted += 1
        self._evictions.warn(f"closed a connection from {gate.address or '?'} {where} for a newer one:"
                             " connections.max_connections are open")
        gate._expired()
        return True

    def _least_welcome(self, items: dict, group_of):
        """Of the first L{EVICT_SCAN} of C{items} (oldest first), the first of a struck group, else of one not known."""
        now = self.clock.seconds()
        struck, known = self._struck, self._known
        fallback = None
        for n, item in enumerate(items):
            if n == EVICT_SCAN:
                break
            group = group_of(item)
            when = struck.get(group)
            if when is not None and now - when < STRIKE_SECONDS:
                return item
            if fallback is None and group not in known:
                fallback = item
        return fallback if fallback is not None else next(iter(items))

    def _admit(self, gate: "_Gate") -> None:
        self.in_progress += 1
        self.unsettled[gate] = None
        group = gate.group
        held = self.holding.get(group, 0)
        self.holding[group] = held + 1
        if group in self.queues:
            self._moved(group, held, held + 1)
        if self.handshake_timeout:
            self.shaking[gate] = self.clock.seconds() + self.handshake_timeout
            self._arm()
        gate._start()

    def _moved(self, group: str, held: int, now: int) -> None:
        """C{group}, with connections waiting, held C{held} slots and now C{now}."""
        self._unplace(group, held)
        self._place(group, now)

    def _place(self, group: str, held: int) -> None:
        if held < self.per_group:
            when = self._struck.get(group)
            if when is not None and self.clock.seconds() - when < STRIKE_SECONDS:
                tier = 2  # known or not: a stolen device certificate is no way around a strike
            else:
                tier = 0 if group in self._known else 1
            self._ready[3 * held + tier][group] = None

    def _unplace(self, group: str, held: int) -> None:
        if held < self.per_group:
            for ready in self._ready[3 * held:3 * held + 3]:
                if group in ready:
                    del ready[group]
                    return

    def known_groups(self) -> list[str]:
        """The groups of devices known (L{_know}), the least recent first: what L{remember} takes back."""
        return list(self._known)

    def known_devices(self) -> list[tuple[tuple[str, str], list[str]]]:
        """
        The devices (account, device id) that count known groups, the least recent first, each with its groups, the
        least recent first (L{_count}): what L{remember} takes back as C{devices}.
        """
        return [(device, list(groups)) for device, groups in self._devices.items()]

    def remember(self, groups, devices=()) -> None:
        """
        Know C{groups} (the least recent first) as if a device of each had just connected, in that
        order, then count each of C{devices} (the least recent first: account and device id, with the
        groups it counts, the least recent first) as L{device_request} did: the known groups and devices
        of the process before a restart (L{izreg.service.tls.known}), so that the fleet reconnecting at
        once after it still goes before groups never seen, and a device still counts at most
        L{MAX_DEVICE_GROUPS} (its groups from before the restart among them). A device's group not known
        is skipped (every group a device counts is known). A group no device counts stays known until it
        ages out of the last L{MAX_KNOWN} (or a device makes it known again, and counts it from then on).
        """
        for group in groups:
            self._know(group)
        known = self._known
        for device, counted in devices:
            for group in counted:
                if group in known:
                    self._count(device, group)

    def device_request(self, transport, account: str, device_id: str) -> None:
        """
        A request on C{transport}'s connection (the request's: the TLS protocol over the TCP transport
        whose protocol is the L{_Gate}) authenticated as device C{device_id} of C{account}, past the
        revocation and the account checks (L{izreg.http.guard.AccessGuard}'s C{on_device}): its group is
        known (L{_know}), once a connection. Not at the handshake: a revoked certificate still completes
        one (revocation is the request's check), and with many IPv6 /64s it would push the fleet's groups
        out of the last L{MAX_KNOWN}.

        Nor does a valid certificate: one device counts at most L{MAX_DEVICE_GROUPS} groups, the last it
        made known; its group past them is forgotten (L{_count}), unless another device counts it too
        (devices behind one NAT address share a group), so one certificate used from a /52 of IPv6 /64s
        holds as many known groups as a device that roams, not all of them.
        """
        gate = getattr(tcp_under(transport), "protocol", None)
        gate = getattr(gate, "wrappedProtocol", gate)  # under a haproxy: listener's PROXY header reader
        if isinstance(gate, _Gate) and not gate.device:
            gate.device = True
            self._know(gate.group, (account, device_id))

    def _count(self, device: tuple[str, str], group: str) -> None:
        """C{device} made C{group} (known) known: it counts it, the most recent of its groups and of the devices."""
        devices = self._devices
        groups = devices.pop(device, None)
        if groups is None:
            groups = {}
            if len(devices) >= MAX_KNOWN:  # the least recent device counts none: its groups stay known, as restored
                oldest = next(iter(devices))
                for old in devices.pop(oldest):
                    self._uncounted(oldest, old)
        devices[device] = groups
        if group in groups:
            del groups[group]
        else:
            self._counted.setdefault(group, set()).add(device)
        groups[group] = None
        if len(groups) > MAX_DEVICE_GROUPS:
            oldest = next(iter(groups))
            del groups[oldest]
            if self._uncounted(device, oldest):
                self._forget(oldest)

    def _uncounted(self, device: tuple[str, str], group: str) -> bool:
        """C{device} counts C{group} no more: whether no device counts it now."""
        counted = self._counted[group]
        counted.discard(device)
        if counted:
            return False
        del self._counted[group]
        return True

    def _know(self, group: str, device: tuple[str, str] | None = None) -> None:
        """
        A request of C{group}'s authenticated as C{device} (L{device_request}), or C{group} known before a
        restart (L{remember}; no device): the group goes before those that hold as many slots and are not
        known. Past L{MAX_KNOWN}, the least recent known group is forgotten (after the device's own past
        L{MAX_DEVICE_GROUPS}), for every device that counted it.
        """
        known = self._known
        if group in known:
            del known[group]
            known[group] = None
        else:
            known[group] = None
            self._retier(group)
        self.known_changes += 1
        if device is not None:
            self._count(device, group)
        if len(known) > MAX_KNOWN:
            oldest = next(iter(known))
            for other in self._counted.get(oldest, ()):  # a shared group: each device counts it no more
                groups = self._devices[other]
                del groups[oldest]
                if not groups:
                    del self._devices[other]
            self._counted.pop(oldest, None)
            self._forget(oldest)

    def _forget(self, group: str) -> None:
        """C{group} is known no more (no device counts it: L{_count}, L{_know})."""
        del self._known[group]
        self.known_changes += 1
        self._retier(group)

    def _retier(self, group: str) -> None:
        """C{group} became known or is known no more: with connections waiting, it goes where that puts it."""
        if group in self.queues:
            held = self.holding.get(group, 0)
            self._moved(group, held, held)

    def _strike(self, group: str) -> None:
        """
        A connection of C{group}'s held a slot for half the handshake timeout or more and did not
        complete its handshake (a silent client's; a device's takes milliseconds, a refused one ends at
        once): for L{STRIKE_SECONDS} its group goes after those that hold as many slots and are not struck.
        """
        struck = self._struck
        struck.pop(group, None)
        struck[group] = self.clock.seconds()
        if len(struck) > MAX_STRUCK:
            del struck[next(iter(struck))]

    def _unqueue(self, gate: "_Gate") -> None:
        """C{gate} waits no more (admitted, closed or timed out); nothing if it was not waiting."""
        if self.waiting.pop(gate, None) is None:
            return
        group = gate.group
        queue = self.queues[group]
        if queue[0] is gate:
            del queue[0]
        else:
            queue.remove(gate)
        self._resized(group, len(queue) + 1, len(queue))
        if not queue:
            del self.queues[group]
            self._unplace(group, self.holding.get(group, 0))

    def _resized(self, group: str, length: int, now: int) -> None:
        """C{group}'s queue had C{length} connections and now C{now} (one more or one less)."""
        by_length = self._by_length
        if length:
            groups = by_length[length]
            del groups[group]
            if not groups:
                del by_length[length]
                if length == self._longest and now < length:
                    self._longest = now  # the longest but one are now, with this group among them (or none waits)
        if now:
            by_length.setdefault(now, {})[group] = None
            if now > self._longest:
                self._longest = now

    def _left(self, gate: "_Gate") -> None:
        """A waiting connection ended."""
        self._unqueue(gate)

    def _release(self, gate: "_Gate", completed: bool = True) -> None:
        """
        C{gate}'s handshake is over (C{completed}, or its connection ended): its slot goes to the oldest waiting connection of the group that holds the fewest
        slots (groups holding as many: known ones first, then those not struck, then in turn).
        """
        deadline = self.shaking.pop(gate, None)  # None: it timed out (or there is no timeout)
        self.unsettled.pop(gate, None)
        group = gate.group
        if not completed and self.handshake_timeout and (
                deadline is None or deadline - self.clock.seconds() <= self.handshake_timeout / 2):
            self._strike(group)
        self.in_progress -= 1
        held = self.holding.pop(group, 1) - 1
        if held:
            self.holding[group] = held
        if group in self.queues:
            self._moved(group, held + 1, held)
        while self.waiting and self.in_progress < self.limit:
            for groups in self._ready:
                if groups:
                    chosen = self.queues[next(iter(groups))][0]
                    break
            else:
                return  # every group waiting holds its share
            self._unqueue(chosen)
            self._admit(chosen)

    def _arm(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for watched in (self.waiting, self.shaking):
            late = []
            for gate, deadline in watched.items():  # in arrival order, one timeout each: the late ones first
                if deadline > now:
                    break
                late.append(gate)
            for gate in late:
                if watched is self.waiting:
                    self._unqueue(gate)
                else:
                    del watched[gate]
                self.timed_out += 1
                gate._expired()
        if self.waiting or self.shaking:
            self._arm()


#: the deadline of a connection with no time limit
_NEVER = float("inf")


def _itself(group: str) -> str:
    return group


#: how long a group stays struck (L{HandshakeAdmission._strike}), and how many are remembered (~150 bytes each)
STRIKE_SECONDS = 300
MAX_STRUCK = 1024
#: how many connections (or groups) L{HandshakeAdmission.evict} looks at for a struck or not known group
EVICT_SCAN = 16
#: how many groups of devices are remembered (L{HandshakeAdmission._know}; ~150 bytes each), and how many devices
#: (L{HandshakeAdmission._count}; with MAX_DEVICE_GROUPS each, ~8 MiB in all, measured with tracemalloc)
MAX_KNOWN = 4096
#: how many known groups one device counts, the last it made known (L{HandshakeAdmission._count}): a device roams
#: between a few networks (home, LTE, a gateway's two uplinks), and a valid certificate used from a /52 of IPv6
#: /64s must not push the fleet's groups out of the last MAX_KNOWN
MAX_DEVICE_GROUPS = 8


class AdmissionFactory(Factory):
    """The TLS listener's factory, its connections behind a L{_Gate} each."""

    def __init__(self, admission: HandshakeAdmission, wrapped: Factory) -> None:
        self.admission = admission
        self.wrapped = wrapped

    def logPrefix(self):
        return self.wrapped.logPrefix()

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        # the TLS protocol and, under it, the site's (which counts the connection); no SSL object yet
        tls = self.wrapped.buildProtocol(addr)
        if tls is None:
            return None
        return _Gate(self.admission, tls)


@implementer(IHalfCloseableProtocol)
class _Gate(Protocol):
    """One accepted connection: waits for a slot, then runs the TLS protocol over the transport."""

    #: the client's address, and its group (its share of the slots: L{HandshakeAdmission.per_group})
    address = group = ""
    #: a request on this connection authenticated as a device (L{HandshakeAdmission.device_request})
    device = False

    def __init__(self, admission: HandshakeAdmission, tls) -> None:
        self.admission = admission
        self.tls = tls
        self.state = _WAITING

    #: the first bytes were looked at (L{plain_on_tls})
    _heard = False

    def makeConnection(self, transport) -> None:
        self.connected = 1
        self.transport = transport
        self.address = getattr(transport.getPeer(), "host", "")
        self.group = self.admission.group_of(self.address)
        self.admission._arrived(self)

    def _wait(self) -> None:
        self.transport.pauseProducing()  # read nothing meanwhile: the kernel holds it

    def _start(self) -> None:
        """A slot: the TLS protocol takes the connection (its SSL object is made now)."""
        self.state = _SHAKING
        tls, transport = self.tls, self.transport
        if getattr(type(tls), "_stepped", None) is not None:  # izreg.service.tlsthreads: handshakes end in a callback
            tls._stepped = self._stepped
        tls.makeConnection(transport)
        transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._heard:
            self._heard = True
            if plain_on_tls(data):  # no TLS record yet: the TLS protocol has written nothing, the answer is plain
                self.transport.write(ON_TLS_ANSWER)
                self.transport.loseConnection()
                return
        tls = self.tls
        tls.dataReceived(data)
        if self.state == _SHAKING and getattr(tls, "_handshakeDone", False):
            self._done()

    def _stepped(self, ok, result) -> None:
        tls = self.tls
        type(tls)._stepped(tls, ok, result)
        if self.state == _SHAKING and getattr(tls, "_handshakeDone", False):
            self._done()

    def _done(self) -> None:
        """The handshake is complete: the slot is free, and the transport talks to the TLS protocol directly."""
        self.state = _DONE
        tls = self.tls
        self.dataReceived = tls.dataReceived
        self.connectionLost = tls.connectionLost
        if "_stepped" in tls.__dict__:
            del tls._stepped
        self.admission._release(self)

    def connectionLost(self, reason) -> None:
        state, self.state = self.state, _DONE
        if state == _WAITING:
            self.admission._left(self)
            # never connected to the TLS protocol: the site's protocol under it gives its connection count back
            self.tls.wrappedProtocol.connectionLost(reason)
            return
        if state == _SHAKING:
            self.admission._release(self, completed=False)
        self.tls.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """The client's FIN: the TLS protocol's once its handshake is done (it answers a whole request), else the end."""
        half = IHalfCloseableProtocol(self.tls, None) if self.state == _DONE else None
        if half is not None:  # (izreg's TLS protocol: Twisted's stock one is not half-closeable)
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass  # the server never half-closes

    def _expired(self) -> None:
        """Waited or shook hands too long (L{HandshakeAdmission._sweep}): closed, its connectionLost follows."""
        self.transport.abortConnection()
