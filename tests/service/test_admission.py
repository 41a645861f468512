"""
L{HandshakeAdmission} in-process, over real sockets: a connection that waits for a slot and
is closed meanwhile gives its place in the connection caps back; a silent one in a slot is
closed after the handshake timeout and its slot goes to the next. And its policy alone (pure
logic, a fake clock): client groups, their shares, the fair pick, the bound on the waiting, the
known groups (a few per device).
"""

from __future__ import annotations

import random
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater

from izreg.core.errors import ErrorCode
from izreg.core.netgroup import address_group
from izreg.http.bodies import RegistrySite
from izreg.http.limits import ConnectionLimits
from izreg.service.tls import ServerTLS, TLSEndpoint
from izreg.service.tls import admission as admission_module
from izreg.service.tls.admission import (MAX_DEVICE_GROUPS, MAX_KNOWN, STRIKE_SECONDS, HandshakeAdmission,
                                         _Gate)
from tests.service.test_tls import Certs


async def until(condition, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{what}: not true after {timeout} s")


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest_twisted.ensureDeferred
async def test_waiting_connections_time_out_and_give_their_count_back(tmp_path):
    limits = ConnectionLimits(100, 0)
    site = RegistrySite(None, None, connections=limits)
    admission = HandshakeAdmission(reactor, 1, handshake_timeout=1.0, wait_timeout=0.3)
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), ServerTLS(Certs(tmp_path).files()),
                           clock=reactor, admission=admission)
    port = await endpoint.listen(site)
    address = ("127.0.0.1", port.getHost().port)
    clients = [socket.create_connection(address) for _ in range(3)]
    try:
        await until(lambda: limits.total == 3, "three connections counted")
        assert admission.in_progress == 1 and len(admission.waiting) == 2
        # the two waiting time out first (0.3 s), giving their count back without ever having been TLS
        await until(lambda: limits.total == 1 and not admission.waiting, "the waiting ones closed")
        assert admission.in_progress == 1 and admission.timed_out == 2
        assert [closed_by_server(c) for c in clients[1:]] == [True, True]
        # the silent one in the slot: closed after the handshake timeout
        await until(lambda: limits.total == 0 and admission.in_progress == 0, "the silent one closed")
        assert admission.timed_out == 3
    finally:
        for c in clients:
            c.close()
        await port.stopListening()



class _Stub:
    """A gate as L{HandshakeAdmission} sees it: an address and its group, started or waiting."""

    def __init__(self, address: str, admission: HandshakeAdmission | None = None) -> None:
        self.address = address
        self.group = admission.group_of(address) if admission is not None else address_group(address)
        self.admission = admission
        self.state = "new"

    def _wait(self) -> None:
        self.state = "waiting"

    admitted = False

    def _start(self) -> None:
        self.state = "shaking"
        self.admitted = True
        admission = self.admission
        if admission is not None:  # the fair pick: no group waiting held fewer slots than this one's had
            had = admission.holding[self.group] - 1
            assert all(admission.holding.get(g, 0) >= had for g in admission.queues if g != self.group)

    def _expired(self) -> None:
        self.state = "expired"


def arrive(admission: HandshakeAdmission, *addresses: str) -> list[_Stub]:
    gates = [_Stub(address, admission) for address in addresses]
    for gate in gates:
        admission._arrived(gate)
    return gates


def consistent(admission: HandshakeAdmission) -> None:
    """The admission's books agree with each other."""
    assert admission.in_progress == sum(admission.holding.values()) <= admission.limit
    assert all(0 < held <= admission.per_group for held in admission.holding.values())
    assert sorted(map(id, admission.waiting)) == sorted(id(g) for q in admission.queues.values() for g in q)
    assert all(queue and all(g.group == group for g in queue) for group, queue in admission.queues.items())
    ready = {group: n // 3 for n, groups in enumerate(admission._ready) for group in groups}
    assert sum(map(len, admission._ready)) == len(ready)  # each group in one place
    assert ready == {g: admission.holding.get(g, 0) for g in admission.queues
                     if admission.holding.get(g, 0) < admission.per_group}
    if admission.in_progress < admission.limit:  # a free slot: no one waiting may take it
        assert not ready
    if admission.max_waiting:
        assert len(admission.waiting) <= admission.max_waiting
    lengths = {group: n for n, groups in admission._by_length.items() for group in groups}
    assert lengths == {group: len(queue) for group, queue in admission.queues.items()}
    assert admission._longest == max(lengths.values(), default=0) and all(admission._by_length.values())
    # a group waiting is where being known puts it (a struck one: known or not)
    assert all((n % 3 == 0) == (group in admission._known) for n, groups in enumerate(admission._ready)
               if n % 3 < 2 for group in groups)
    devices_consistent(admission)


def devices_consistent(admission: HandshakeAdmission) -> None:
    """The devices' known groups agree with the known groups, and are bounded."""
    devices, counted, known = admission._devices, admission._counted, admission._known
    bound, per_device = admission_module.MAX_KNOWN, admission_module.MAX_DEVICE_GROUPS  # (a test may lower them)
    assert len(known) <= bound and len(devices) <= bound
    assert all(0 < len(groups) <= per_device for groups in devices.values())
    assert {(device, group) for device, groups in devices.items() for group in groups} == {
        (device, group) for group, counting in counted.items() for device in counting}
    assert all(counted.values()) and set(counted) <= set(known)


class _TCP:
    """A TCP transport as L{HandshakeAdmission.device_request} finds it under a request's: its protocol, the gate."""

    disconnected = False

    def __init__(self, protocol) -> None:
        self.protocol = protocol


def device_request(admission: HandshakeAdmission, address: str, device: str, account: str = "acme") -> None:
    """A request authenticated as C{device} of C{account} on a new connection from C{address}."""
    gate = _Gate(admission, None)
    gate.address, gate.group = address, admission.group_of(address)
    admission.device_request(_TCP(gate), account, device)


def test_one_address_cannot_hold_every_slot():
    """
    A client that fills the slots with silent handshakes (and reconnects as they time out) holds
    at most half of them: another address's connection gets a slot at once, not after all of its.
    """
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    attacker = [_Stub("192.0.2.1") for _ in range(20)]
    for gate in attacker:
        admission._arrived(gate)
    assert [g.state for g in attacker[:3]] == ["shaking", "shaking", "waiting"] and admission.in_progress == 2
    device = _Stub("198.51.100.7")
    admission._arrived(device)
    assert device.state == "shaking"
    # a slot of the attacker's frees: its next connection, in arrival order, gets it
    admission._release(attacker[0])
    assert attacker[2].state == "shaking" and attacker[3].state == "waiting"
    assert admission.holding == {"192.0.2.1": 2, "198.51.100.7": 1}
    # every slot taken: a freed one goes to the first waiting connection whose address is under its share
    others = [_Stub("203.0.113.1"), _Stub("203.0.113.2")]
    for gate in others:
        admission._arrived(gate)
    assert [g.state for g in others] == ["shaking", "waiting"]
    admission._release(device)
    assert others[1].state == "shaking" and attacker[3].state == "waiting"
    assert admission.in_progress == 4 and admission.holding == {"192.0.2.1": 2, "203.0.113.1": 1, "203.0.113.2": 1}
    # the attacker's connections gone, its waiting ones are admitted in order as its share allows
    admission._release(attacker[1])
    admission._release(attacker[2])
    assert [g.state for g in attacker[3:6]] == ["shaking", "shaking", "waiting"]


def test_a_device_gets_the_next_slot_while_an_attacker_holds_the_others_from_many_addresses():
    """
    Four attacker addresses fill the slots (two each) and queue more; a device that comes after them
    all gets the first slot that frees: its group holds none, every attacker's holds some.
    """
    admission = HandshakeAdmission(Clock(), 8, handshake_timeout=10, wait_timeout=60)
    attackers = [f"192.0.2.{i}" for i in range(1, 5)]
    attack = arrive(admission, *(attackers * 5))
    assert admission.in_progress == 8 and len(admission.waiting) == 12
    [device] = arrive(admission, "198.51.100.7")
    assert device.state == "waiting"
    admission._release(attack[0])  # 192.0.2.1's slot: it holds one now, the device none
    assert device.state == "shaking" and admission.holding["198.51.100.7"] == 1
    # the next: to the attacker's group that came to one slot first (192.0.2.1), its oldest waiting connection
    admission._release(attack[1])
    assert attack[8].state == "shaking" and attack[12].state == "waiting"
    consistent(admission)


def test_groups_holding_as_many_take_turns_and_each_group_is_first_come_first_served():
    admission = HandshakeAdmission(Clock(), 2, handshake_timeout=10, wait_timeout=60)
    held = arrive(admission, "192.0.2.1", "192.0.2.2")
    waiting = arrive(admission, "192.0.2.3", "192.0.2.3", "192.0.2.3", "192.0.2.4", "192.0.2.5")
    order = []
    for _ in range(6):  # one group holds at most one slot of two: 192.0.2.3's third waits for its second
        gate = held.pop(0)
        admission._release(gate)
        started = [g for g in waiting if g.state == "shaking" and g not in order]
        order += started
        held += started
        consistent(admission)
    assert [(g.address, waiting.index(g)) for g in order] == [
        ("192.0.2.3", 0), ("192.0.2.4", 3), ("192.0.2.5", 4), ("192.0.2.3", 1), ("192.0.2.3", 2)]


def test_every_address_of_an_ipv6_64_shares_one_half_of_the_slots():
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    attack = arrive(admission, *(f"2001:db8:0:1:{i:x}::1" for i in range(1, 21)))  # 20 addresses of one /64
    assert admission.in_progress == 2 and len(admission.waiting) == 18
    assert admission.holding == {"2001:db8:0:1::/64": 2}
    devices = arrive(admission, "2001:db8:0:2::10", "2001:db8:0:2::11", "2001:db8:0:3::1")
    assert [d.state for d in devices] == ["shaking", "shaking", "waiting"]
    admission._release(attack[0])  # the other /64, holding none, before the attacker's waiting ones
    assert devices[2].state == "shaking" and attack[2].state == "waiting"
    consistent(admission)


def test_an_ipv4_mapped_address_is_its_ipv4_address():
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    gates = arrive(admission, "::ffff:192.0.2.1", "192.0.2.1", "::ffff:192.0.2.1")
    assert [g.state for g in gates] == ["shaking", "shaking", "waiting"]
    assert admission.holding == {"192.0.2.1": 2}


def test_ipv4_addresses_by_a_wider_prefix():
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60, ipv4_prefix=24)
    attack = arrive(admission, *(f"192.0.2.{i}" for i in range(1, 21)))
    assert admission.in_progress == 2 and admission.holding == {"192.0.2.0/24": 2}
    [device] = arrive(admission, "192.0.3.1")
    assert device.state == "shaking" and attack[2].state == "waiting"


def test_the_waiting_queue_is_bounded_and_the_longest_loses_its_oldest():
    admission = HandshakeAdmission(Clock(), 2, handshake_timeout=10, wait_timeout=60, max_waiting=4)
    arrive(admission, "192.0.2.1", "192.0.2.2")
    attack = arrive(admission, *["192.0.2.66"] * 3)
    [device] = arrive(admission, "198.51.100.7")
    assert len(admission.waiting) == 4 and admission.dropped == 0
    more = arrive(admission, "192.0.2.66", "198.51.100.8", "198.51.100.9")
    # each newcomer past the bound: the attacker's queue, the longest, loses its oldest
    assert [g.state for g in attack] == ["expired"] * 3
    assert device.state == more[0].state == more[1].state == more[2].state == "waiting"
    assert admission.dropped == 3 and len(admission.waiting) == 4
    consistent(admission)
    arrive(admission, "198.51.100.8")  # now 198.51.100.8's is the longest
    assert more[1].state == "expired" and admission.dropped == 4
    assert device.state == more[0].state == more[2].state == "waiting"
    consistent(admission)


def test_waiting_and_shaking_connections_time_out_and_the_books_stay_right():
    clock = Clock()
    admission = HandshakeAdmission(clock, 2, handshake_timeout=10, wait_timeout=5)
    shaking = arrive(admission, "192.0.2.1", "192.0.2.2")
    waiting = arrive(admission, "192.0.2.1", "192.0.2.3", "192.0.2.3")
    clock.advance(6)
    assert [g.state for g in waiting] == ["expired"] * 3 and admission.timed_out == 3
    consistent(admission)
    assert not admission.queues and not any(admission._ready)
    late = arrive(admission, "192.0.2.4")  # waits until 11
    clock.advance(4)
    assert [g.state for g in shaking] == ["expired"] * 2 and late[0].state == "waiting"
    for gate in shaking:  # their connections end: the slots are free again
        admission._release(gate)
    assert late[0].state == "shaking" and admission.timed_out == 5
    consistent(admission)


@pytest.mark.parametrize("seed", range(40))
def test_any_sequence_keeps_the_books_and_the_fair_pick(seed, monkeypatch):
    """
    Arrivals from 8 addresses (two IPv4-mapped, three in one /64), ends and timeouts, requests of 3 devices, in
    a random order; with 4 known groups at most, 2 a device, groups are known and forgotten while they wait.
    """
    monkeypatch.setattr(admission_module, "MAX_KNOWN", 4)
    monkeypatch.setattr(admission_module, "MAX_DEVICE_GROUPS", 2)
    rng = random.Random(seed)
    addresses = ["192.0.2.1", "::ffff:192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "2001:db8::3",
                 "2001:db8:1::1", "::ffff:198.51.100.1"]
    clock = Clock()
    admission = HandshakeAdmission(clock, rng.randint(1, 6), handshake_timeout=rng.choice([0, 10]), wait_timeout=7,
                                   max_waiting=rng.randint(0, 6))
    gates: list[_Stub] = []
    for _ in range(300):
        op = rng.choice(["arrive", "arrive", "end", "tick"])
        if op == "arrive":
            gates += arrive(admission, rng.choice(addresses))
        elif op == "tick":
            clock.advance(rng.random() * 3)
        open_ = [g for g in gates if g.state != "gone"]
        if op == "end" and open_:  # a connection's handshake is done or it ends (closed, timed out): as _Gate's
            gate = rng.choice(open_)
            if gate.admitted:
                completed = rng.random() < 0.5
                admission._release(gate, completed=completed)
                if completed and rng.random() < 0.5:  # then a request authenticated as a device
                    device_request(admission, gate.address, rng.choice(["gw-1", "gw-2", "gw-3"]))
            else:
                admission._left(gate)
            gate.state = "gone"
        consistent(admission)


def test_groups_whose_slots_time_out_go_after_the_others_holding_as_many():
    """
    An attacker with more groups than there are slots: once its silent connections have timed out,
    its groups are struck, and a device's group, holding as few slots, comes first.
    """
    clock = Clock()
    admission = HandshakeAdmission(clock, 4, handshake_timeout=10, wait_timeout=60)
    first = arrive(admission, *(f"192.0.2.{i}" for i in range(1, 9)))  # four in a slot, four waiting
    clock.advance(10)
    for gate in first[:4]:  # timed out; their connections end
        assert gate.state == "expired"
        admission._release(gate, completed=False)
    assert [g.state for g in first[4:]] == ["shaking"] * 4
    again = arrive(admission, *(f"192.0.2.{i}" for i in range(1, 5)))  # the struck ones reconnect
    [device] = arrive(admission, "198.51.100.7")
    assert device.state == "waiting"
    clock.advance(10)
    admission._release(first[4], completed=False)
    assert device.state == "shaking" and [g.state for g in again] == ["waiting"] * 4
    admission._release(first[5], completed=False)
    assert again[0].state == "shaking"
    consistent(admission)


def test_a_handshake_that_fails_or_ends_early_is_no_strike_and_a_strike_wears_off():
    clock = Clock()
    admission = HandshakeAdmission(clock, 2, handshake_timeout=10, wait_timeout=0)
    quick = arrive(admission, "192.0.2.1", "192.0.2.2")
    waiting = arrive(admission, "192.0.2.3", "192.0.2.4")
    clock.advance(4)
    admission._release(quick[0], completed=False)  # ended within half the timeout: a refused certificate, say
    assert waiting[0].state == "shaking" and admission._struck == {}
    clock.advance(2)
    admission._release(quick[1], completed=False)  # held its slot 6 s of 10 and never completed
    assert waiting[1].state == "shaking" and admission._struck == {"192.0.2.2": 6}
    later = arrive(admission, "192.0.2.2", "192.0.2.5")
    admission._release(waiting[0])
    assert later[1].state == "shaking" and later[0].state == "waiting"  # 192.0.2.5 first: 192.0.2.2 is struck
    admission._release(waiting[1])
    admission._release(later[0])
    admission._release(later[1])
    # STRIKE_SECONDS on, 192.0.2.2 waits as any other group: first come, first served
    clock.advance(STRIKE_SECONDS)
    full = arrive(admission, "192.0.2.7", "192.0.2.8")
    again = arrive(admission, "192.0.2.2", "192.0.2.6")
    admission._release(full[0])
    assert again[0].state == "shaking" and again[1].state == "waiting"
    consistent(admission)


def test_a_device_group_goes_before_groups_that_give_their_slots_up_too_soon_to_be_struck():
    """
    An attacker with more groups than slots that gives each slot up before half the handshake timeout is
    never struck, and its fresh groups queued ahead of a device would each get a slot first (the device's
    client gives up its handshake after 10 s). A group in which a handshake completed with a verified
    device certificate goes before them all; one without a certificate (an access key's client) does not.
    """
    clock = Clock()
    admission = HandshakeAdmission(clock, 4, handshake_timeout=10, wait_timeout=60)
    earlier = arrive(admission, "198.51.100.7", "203.0.113.9")
    admission._release(earlier[0])  # a device's handshake, with its certificate
    admission._know(earlier[0].group)  # and a request that authenticated as a device
    admission._release(earlier[1])  # a handshake with no client certificate
    held = arrive(admission, *(f"192.0.2.{i}" for i in range(1, 5)))
    queued = arrive(admission, *(f"192.0.2.{i}" for i in range(5, 25)))
    device, keyed = arrive(admission, "198.51.100.7", "203.0.113.9")
    assert device.state == keyed.state == "waiting"
    clock.advance(4)
    admission._release(held[0], completed=False)  # given up before half the timeout: no strike
    assert device.state == "shaking" and queued[0].state == "waiting" and not admission._struck
    admission._release(held[1], completed=False)
    assert queued[0].state == "shaking" and keyed.state == "waiting"
    consistent(admission)


def test_known_groups_are_the_last_max_known():
    admission = HandshakeAdmission(Clock(), 1, handshake_timeout=10, wait_timeout=60)
    for i in range(MAX_KNOWN + 1):
        [gate] = arrive(admission, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        admission._release(gate)
        admission._know(gate.group)
    assert len(admission._known) == MAX_KNOWN and "10.0.0.0" not in admission._known
    [again] = arrive(admission, "10.0.0.1")  # known again: the most recent
    admission._release(again)
    admission._know(again.group)
    assert list(admission._known)[-1] == "10.0.0.1"


def ipv6_64(n: int) -> str:
    """An address in the C{n}th /64 from 2001:db8:7::/64 on (the first 4,096: 2001:db8:7::/52)."""
    return f"2001:db8:{7 + (n >> 16):x}:{n & 0xffff:x}::1"


def test_one_device_certificate_cannot_push_the_fleets_groups_out_of_the_known_ones():
    """
    A valid device certificate used from more IPv6 /64s than there are known groups: the device counts its
    last MAX_DEVICE_GROUPS, and the groups of the rest of the fleet stay known.
    """
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    fleet = {f"10.0.{i >> 8}.{i & 255}": f"gw-{i}" for i in range(1000)}
    for address, device in fleet.items():
        device_request(admission, address, device)
    for n in range(MAX_KNOWN + 100):
        device_request(admission, ipv6_64(n), "stolen", account="other")
    assert set(fleet) < set(admission._known)
    assert list(admission._devices[("other", "stolen")]) == [
        admission.group_of(ipv6_64(n)) for n in range(MAX_KNOWN + 100 - MAX_DEVICE_GROUPS, MAX_KNOWN + 100)]
    assert len(admission._known) == len(fleet) + MAX_DEVICE_GROUPS
    # and one device id of another account is another device
    device_request(admission, "192.0.2.1", "stolen")
    assert "192.0.2.1" in admission._known and len(admission._devices[("acme", "stolen")]) == 1
    consistent(admission)


def test_devices_behind_one_nat_address_share_its_group():
    """
    50 devices behind one NAT address, each also on its own LTE address: the NAT's group is known while any
    of them counts it, whatever one of them (or a stolen certificate) does; forgotten once none does.
    """
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    nat, lte = "198.51.100.1", [f"10.64.0.{i}" for i in range(50)]
    for _ in range(2):  # each device goes back and forth
        for i, address in enumerate(lte):
            device_request(admission, nat, f"gw-{i}")
            device_request(admission, address, f"gw-{i}")
    assert len(admission._counted[nat]) == 50 and len(admission._known) == 51
    for n in range(MAX_KNOWN + 100):  # one of them, its certificate stolen, used from a /52
        device_request(admission, ipv6_64(n), "gw-0")
    assert nat in admission._known and set(lte[1:]) < set(admission._known)
    assert lte[0] not in admission._known  # gw-0 counted it alone: its least recent
    assert len(admission._counted[nat]) == 49 and len(admission._known) == 50 + MAX_DEVICE_GROUPS
    consistent(admission)
    # each of the others roams through 8 networks: the last to leave the NAT address forgets it
    for i in range(1, 50):
        assert nat in admission._known
        for n in range(MAX_DEVICE_GROUPS):
            device_request(admission, f"172.16.{i}.{n}", f"gw-{i}")
    assert nat not in admission._known and nat not in admission._counted and not set(lte) & set(admission._known)
    assert len(admission._known) == 50 * MAX_DEVICE_GROUPS
    consistent(admission)


def test_a_shared_group_aged_out_of_the_known_ones_is_counted_by_none_of_its_devices():
    """
    Past MAX_KNOWN groups (a fleet of MAX_KNOWN devices, one group each, since the NAT's was last used),
    the least recent known group goes for every device that counted it: a device that counted only it, too.
    """
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    nat = "198.51.100.1"
    for i in range(3):
        device_request(admission, nat, f"nat-{i}")
    device_request(admission, "10.64.0.1", "nat-0")  # nat-0 on LTE too
    for i in range(MAX_KNOWN - 1):
        device_request(admission, f"10.{i >> 8 & 255}.{i & 255}.1", f"gw-{i}")
    assert nat not in admission._known and nat not in admission._counted
    assert list(admission._devices[("acme", "nat-0")]) == ["10.64.0.1"]
    assert ("acme", "nat-1") not in admission._devices and ("acme", "nat-2") not in admission._devices
    consistent(admission)


def test_groups_known_before_a_restart_stay_known_counted_by_no_device():
    """
    Restored with no device (a known groups' file of an older izreg names none), they stay known (a device's
    certificate from a /52 cannot push them out) until they age out; a device that makes one known again
    counts it from then on.
    """
    before = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    fleet = [f"10.0.{i >> 8}.{i & 255}" for i in range(300)]
    for i, address in enumerate(fleet):
        device_request(before, address, f"gw-{i}")
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    admission.remember(before.known_groups())
    assert admission.known_groups() == fleet and not admission._counted and not admission._devices
    for n in range(MAX_KNOWN + 100):
        device_request(admission, ipv6_64(n), "stolen")
    assert admission.known_groups()[:len(fleet)] == fleet
    assert len(admission._known) == len(fleet) + MAX_DEVICE_GROUPS
    # gw-0 is back: it counts its group, which it forgets once it has roamed through 8 more
    device_request(admission, fleet[0], "gw-0")
    assert admission._counted[fleet[0]] == {("acme", "gw-0")}
    for n in range(MAX_DEVICE_GROUPS):
        device_request(admission, f"172.16.0.{n}", "gw-0")
    assert fleet[0] not in admission._known and set(fleet[1:]) < set(admission._known)
    consistent(admission)


def test_the_devices_remembered_are_bounded_and_a_forgotten_one_leaves_its_groups_known():
    """
    At most MAX_KNOWN devices are remembered, the most recent: the least recent one's groups are counted by
    no device (as restored ones) and age out of the known groups as any other.
    """
    admission = HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60)
    device_request(admission, "198.51.100.1", "first")
    device_request(admission, "198.51.100.2", "first")
    nat = "203.0.113.1"
    for i in range(MAX_KNOWN + 10):  # all behind one address: no group ages out
        device_request(admission, nat, f"gw-{i}")
    assert len(admission._devices) == MAX_KNOWN and ("acme", "first") not in admission._devices
    assert ("acme", "gw-9") not in admission._devices and ("acme", "gw-10") in admission._devices
    assert len(admission._counted[nat]) == MAX_KNOWN
    assert admission.known_groups() == ["198.51.100.1", "198.51.100.2", nat]
    assert "198.51.100.1" not in admission._counted
    consistent(admission)
    # every device at its most groups, each its own: MAX_KNOWN groups in all, however many devices
    for i in range(2 * MAX_KNOWN):
        for n in range(MAX_DEVICE_GROUPS + 1):
            device_request(admission, ipv6_64(i * 16 + n), f"roaming-{i}")
    assert len(admission._known) == MAX_KNOWN
    assert sum(map(len, admission._devices.values())) == sum(map(len, admission._counted.values())) == MAX_KNOWN
    assert len(admission._devices) == MAX_KNOWN // MAX_DEVICE_GROUPS
    consistent(admission)


def test_a_waiting_group_moves_when_it_becomes_known_or_is_forgotten():
    """
    A group that a device made known while its connections waited gets no slot ahead of the fleet once it
    is forgotten (a stolen certificate, roaming through groups it queued in); one that becomes known while
    it waits goes before those that are not.
    """
    admission = HandshakeAdmission(Clock(), 2, handshake_timeout=10, wait_timeout=60)
    device_request(admission, "198.51.100.7", "gw-1")
    held = arrive(admission, "192.0.2.1", "192.0.2.2")  # the slots
    queued = []
    for n in range(MAX_DEVICE_GROUPS + 1):  # each made known, then a connection of it waits
        device_request(admission, ipv6_64(n), "stolen")
        queued += arrive(admission, ipv6_64(n))
    assert queued[0].group not in admission._known  # the 9th forgot it
    [device] = arrive(admission, "198.51.100.7")
    [fresh] = arrive(admission, "203.0.113.9")
    consistent(admission)
    admission._release(held[0])
    for before, after in zip(queued[1:], queued[2:] + [device]):  # the known ones, in turn
        assert before.state == "shaking" and after.state == "waiting"
        admission._release(before)
    assert device.state == "shaking" and queued[0].state == fresh.state == "waiting"
    device_request(admission, "203.0.113.9", "gw-2")  # one of its connections that got in before, say
    admission._release(device)
    assert fresh.state == "shaking" and queued[0].state == "waiting"
    consistent(admission)


def test_past_max_waiting_a_known_group_is_not_the_one_to_lose_its_connection():
    """
    Newcomers from an attacker's fresh groups past max_waiting, each reconnecting as it is dropped:
    the longest queues are all of one connection, and a device's, the oldest of them, would go next.
    """
    admission = HandshakeAdmission(Clock(), 2, handshake_timeout=10, wait_timeout=60, max_waiting=3)
    [earlier] = arrive(admission, "198.51.100.7")
    admission._release(earlier)
    admission._know(earlier.group)
    arrive(admission, "192.0.2.1", "192.0.2.2")  # the slots
    [device] = arrive(admission, "198.51.100.7")
    attack = arrive(admission, *(f"203.0.113.{i}" for i in range(1, 41)))
    assert device.state == "waiting" and admission.dropped == 38
    assert [g.state for g in attack[-2:]] == ["waiting", "waiting"]
    consistent(admission)
    # every group waiting known: the first to reach the longest length loses its oldest, as before
    for group in ("203.0.113.39", "203.0.113.40", "198.51.100.8"):
        admission._know(group)
    [other] = arrive(admission, "198.51.100.8")
    assert device.state == "expired" and other.state == "waiting" and admission.dropped == 39
    consistent(admission)


def test_a_known_group_that_is_struck_goes_after_the_others():
    """A device certificate (stolen, or revoked: that is the request's check) is no way around a strike."""
    clock = Clock()
    admission = HandshakeAdmission(clock, 2, handshake_timeout=10, wait_timeout=0)
    [earlier] = arrive(admission, "192.0.2.66")
    admission._release(earlier)
    admission._know(earlier.group)
    silent = arrive(admission, "192.0.2.66", "192.0.2.1")
    clock.advance(6)
    admission._release(silent[0], completed=False)  # held 6 s of 10 without completing: struck, known or not
    later = arrive(admission, "192.0.2.66", "198.51.100.7")
    assert later[0].state == "shaking"  # a free slot: no order to keep
    admission._release(later[0], completed=False)
    again = arrive(admission, "192.0.2.66", "198.51.100.8")
    assert later[1].state == "shaking" and again[0].state == again[1].state == "waiting"
    admission._release(silent[1])
    assert again[1].state == "shaking" and again[0].state == "waiting"
    consistent(admission)


def test_over_max_connections_the_least_welcome_unauthenticated_connection_makes_room():
    """
    L{HandshakeAdmission.evict}: a waiting connection of the longest queue first (a struck group's, else
    one not known, among those as long), then the oldest in its handshake (likewise); none left, C{False}.
    """
    admission = HandshakeAdmission(Clock(), 2, handshake_timeout=10, wait_timeout=60)
    admission._know("198.51.100.7")
    admission._know("198.51.100.8")
    shaking = arrive(admission, "198.51.100.7", "192.0.2.1")
    device, attack, other, struck = (arrive(admission, "198.51.100.8"), arrive(admission, *["192.0.2.66"] * 3),
                                     arrive(admission, "192.0.2.5"), arrive(admission, "192.0.2.9"))
    admission._strike("192.0.2.9")
    assert [g.state for g in shaking] == ["shaking"] * 2 and len(admission.waiting) == 6
    assert [admission.evict() for _ in range(2)] == [True] * 2
    assert [g.state for g in attack] == ["expired", "expired", "waiting"]  # the longest queue
    assert admission.evict() and struck[0].state == "expired"  # then, all as long: a struck group's
    assert admission.evict() and other[0].state == "expired"  # then one not known, though the device's is older
    assert admission.evict() and attack[2].state == "expired"
    assert admission.evict() and device[0].state == "expired" and not admission.waiting  # a known one last
    consistent(admission)
    assert admission.evict() and shaking[1].state == "expired"  # in its handshake: one not known first
    assert shaking[0].state == "shaking" and admission.in_progress == 2  # the slot frees once its connection ends
    admission._release(shaking[1], completed=False)
    assert admission.evict() and shaking[0].state == "expired"
    admission._release(shaking[0], completed=False)
    assert not admission.evict() and admission.evicted == 8
    consistent(admission)
    [done] = arrive(admission, "192.0.2.1")
    admission._release(done)  # completed its handshake: never evicted
    assert not admission.evict() and done.state == "shaking" and not admission.unsettled


def test_at_max_connections_a_newcomer_is_counted_only_if_one_is_evicted():
    limits = ConnectionLimits(2, 1)
    evictions: list = []
    limits.evict = lambda: evictions.append(1) or len(evictions) < 2
    assert limits.admit("192.0.2.1") is None and limits.admit("192.0.2.2") is None and not evictions
    assert limits.admit("192.0.2.3") is None and limits.total == 3  # one evicted: its loss gives its count back
    limits.release("192.0.2.1")
    error, line = limits.admit("192.0.2.4")  # none to evict: refused
    assert error.code is ErrorCode.UNAVAILABLE and "max_connections = 2" in line and limits.total == 2 and len(evictions) == 2
    error, line = limits.admit("192.0.2.2")  # over max_per_address too: refused, none evicted for it
    assert error.code is ErrorCode.UNAVAILABLE and len(evictions) == 2
