"""
L{KnownGroupsFile}: the known device groups of TLS handshake admission, and the devices
that count them, kept across restarts (a fake clock; the file written synchronously in
place of a thread).
"""

from __future__ import annotations

import errno
import os

import pytest

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from izreg.service.tls import known as known_module
from izreg.service.tls.admission import MAX_DEVICE_GROUPS, MAX_KNOWN, HandshakeAdmission
from izreg.service.tls.known import SAVE_INTERVAL, KnownGroupsFile, read_known, write_known
from tests.service.test_admission import device_request, devices_consistent, ipv6_64


def admission(ipv4_prefix: int = 32) -> HandshakeAdmission:
    return HandshakeAdmission(Clock(), 4, handshake_timeout=10, wait_timeout=60, ipv4_prefix=ipv4_prefix)


def keeper(adm, path, clock=None, writes=None) -> KnownGroupsFile:
    def to_thread(f, *args):
        if writes is not None:
            writes.append(list(args[1]))
        return defer.maybeDeferred(f, *args)

    return KnownGroupsFile(adm, str(path), clock or Clock(), to_thread=to_thread)


def test_the_known_groups_of_one_run_are_known_in_the_next_in_their_order(tmp_path):
    path = tmp_path / "tls-known-groups"
    first = admission()
    run = keeper(first, path)
    run.startService()  # no file yet: nothing known
    assert first.known_groups() == []
    first.remember(["198.51.100.7", "2001:db8:1:2::/64", "203.0.113.9"])
    first.remember(["198.51.100.7"])  # again: now the most recent
    run.stopService()
    assert path.read_text() == "2001:db8:1:2::/64\n203.0.113.9\n198.51.100.7\n"
    assert not os.path.exists(f"{path}.tmp")
    second = admission()
    keeper(second, path).startService()
    assert second.known_groups() == ["2001:db8:1:2::/64", "203.0.113.9", "198.51.100.7"]


def test_written_every_interval_only_when_changed(tmp_path):
    path = tmp_path / "tls-known-groups"
    adm, clock, writes = admission(), Clock(), []
    run = keeper(adm, path, clock, writes)
    run.startService()
    clock.advance(SAVE_INTERVAL)
    assert writes == []  # nothing known, nothing changed
    adm.remember(["192.0.2.1"])
    clock.advance(SAVE_INTERVAL - 1)
    assert writes == []
    clock.advance(1)
    assert writes == [["192.0.2.1"]] and path.read_text() == "192.0.2.1\n"
    clock.advance(SAVE_INTERVAL)
    assert len(writes) == 1  # unchanged since
    run.stopService()
    assert len(writes) == 1  # nor at the stop
    assert not clock.getDelayedCalls()


def test_a_garbled_file_or_lines_of_other_prefixes_are_dropped_not_fatal(tmp_path):
    path = tmp_path / "tls-known-groups"
    path.write_bytes(b"192.0.2.1\n\xff\xfe junk\n\n192.0.2.0/24\n999.1.2.3\n2001:db8::1\n2001:db8:1:2::/64\n"
                     b"2001:db8:1:2::/48\nlocal\n" + b"9" * 10_000 + b"\n203.0.113.9\n")
    # /32 and /64 groups (the defaults): a /24 network, a bare IPv6 address, a /48 are not groups here
    assert read_known(str(path), admission().group_of).groups == ["192.0.2.1", "2001:db8:1:2::/64", "203.0.113.9"]
    # /24 groups for IPv4: the addresses of a /32 run are not groups then
    assert read_known(str(path), admission(24).group_of).groups == ["192.0.2.0/24", "2001:db8:1:2::/64"]
    path.write_bytes(os.urandom(4096))
    assert read_known(str(path), admission().group_of).groups == []
    assert read_known(str(tmp_path / "missing"), admission().group_of).groups == []
    directory = tmp_path / "a-directory"
    directory.mkdir()
    assert read_known(str(directory), admission().group_of).groups == []  # unreadable: logged, none


def test_the_log_lines_count_in_words(tmp_path):
    """'1 line', '2 known device groups': no '(s)' (a count takes its noun's number, izreg.core.text.plural)."""
    path = tmp_path / "tls-known-groups"
    path.write_bytes(b"192.0.2.1\njunk\n")
    with capturedLogs() as events:
        assert read_known(str(path), admission().group_of).groups == ["192.0.2.1"]
    assert [formatEvent(e) for e in events] == [
        f"dropped 1 line of {path}: not a client group under the current tls.group_ipv4_prefix / group_ipv6_prefix, nor a device counting one"]
    path.write_bytes(b"192.0.2.1\n192.0.2.2\nx\ny\n")
    with capturedLogs() as events:
        assert read_known(str(path), admission().group_of).groups == ["192.0.2.1", "192.0.2.2"]
    assert formatEvent(events[0]).startswith(f"dropped 2 lines of {path}: ")
    with capturedLogs() as events:
        keeper(admission(), path).startService()
    assert (f"2 known device groups from {path}, 0 devices counting them: their TLS handshakes go first"
            in [formatEvent(e) for e in events])


def test_at_most_max_known_are_read_the_most_recent(tmp_path):
    path = tmp_path / "tls-known-groups"
    groups = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(MAX_KNOWN + 10)]
    write_known(str(path), groups)
    assert read_known(str(path), admission().group_of).groups == groups[-MAX_KNOWN:]


def test_a_failed_write_is_logged_and_tried_again_later(tmp_path):
    path = tmp_path / "no-such-directory" / "tls-known-groups"
    adm, clock = admission(), Clock()
    run = keeper(adm, path, clock)
    run.startService()
    adm.remember(["192.0.2.1"])
    clock.advance(SAVE_INTERVAL)  # fails: no directory
    assert not path.exists()
    path.parent.mkdir()
    clock.advance(SAVE_INTERVAL)  # still changed since the last write that took: written now
    assert path.read_text() == "192.0.2.1\n"


def test_the_stop_waits_for_a_write_under_way_then_writes_what_changed_since(tmp_path):
    path = tmp_path / "tls-known-groups"
    adm, clock, pending = admission(), Clock(), []

    def to_thread(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    run = KnownGroupsFile(adm, str(path), clock, to_thread=to_thread)
    run.startService()
    adm.remember(["192.0.2.1"])
    clock.advance(SAVE_INTERVAL)
    adm.remember(["192.0.2.2"])
    stopped = run.stopService()
    assert len(pending) == 1 and not stopped.called
    d, f, args = pending.pop()
    f(*args)
    d.callback(None)
    assert len(pending) == 1  # the second write, with both
    d, f, args = pending.pop()
    assert args[1] == ["192.0.2.1", "192.0.2.2"]
    f(*args)
    d.callback(None)
    assert stopped.called and path.read_text() == "192.0.2.1\n192.0.2.2\n"


def test_a_link_or_special_file_in_its_place_is_not_followed_nor_waited_on(tmp_path):
    """
    What another user or a stale run left at the file's names: a symbolic link at the temporary name is
    replaced, never written through (it overwrote its target); one at the file's name is not read (a link
    to a FIFO held the start-up forever, one to any file was read); a FIFO there is not waited on.
    """
    path, victim = tmp_path / "tls-known-groups", tmp_path / "victim"
    victim.write_text("192.0.2.9\n")
    os.symlink(victim, f"{path}.tmp")
    write_known(str(path), ["192.0.2.1"])
    assert victim.read_text() == "192.0.2.9\n"
    assert path.read_text() == "192.0.2.1\n" and not path.is_symlink() and not os.path.lexists(f"{path}.tmp")
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.unlink()
    os.symlink(victim, path)
    assert read_known(str(path), admission().group_of).groups == []
    path.unlink()
    os.mkfifo(path)
    assert read_known(str(path), admission().group_of).groups == []  # (opened and read, this would block)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    """
    On a full disk the file stays as it was, with no .tmp beside it (an empty one was left), and a write
    that does not fit is an error, never part of the groups written and renamed in place (os.write may
    write part of its bytes).
    """
    from tests.helpers.tmpfs import tmpfs

    with tmpfs(tmp_path / "small", "size=64k", "a full disk") as small:
        path = small / "tls-known-groups"
        write_known(str(path), ["192.0.2.1"])
        (small / "fill").write_bytes(b"\0" * 32 * 1024)
        groups = [f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}" for n in range(MAX_KNOWN)]  # ~50 KB
        with pytest.raises(OSError) as failed:
            write_known(str(path), groups)
        assert failed.value.errno == errno.ENOSPC
        assert path.read_text() == "192.0.2.1\n" and not os.path.lexists(f"{path}.tmp")


def books(adm: HandshakeAdmission):
    """What the file must carry over: the known groups, the devices and each one's groups, all in their order."""
    return adm.known_groups(), adm.known_devices(), {group: set(d) for group, d in adm._counted.items()}


def restarted(adm: HandshakeAdmission, path, ipv4_prefix: int = 32) -> HandshakeAdmission:
    """A stop (the file written) and a start (read back into a new admission)."""
    keeper(adm, path).stopService()
    after = admission(ipv4_prefix)
    keeper(after, path).startService()
    devices_consistent(after)
    return after


def test_the_devices_counting_the_known_groups_are_as_they_were_after_a_restart(tmp_path):
    """
    Each device with the groups it counts, all in their order (the least recent first), and a group two
    devices count (a NAT address): written at the stop, read back at the start, the books are the same.
    """
    path = tmp_path / "tls-known-groups"
    before = admission()
    keeper(before, path).startService()
    device_request(before, "198.51.100.7", "gw-1")
    device_request(before, "2001:db8:1:2::9", "gw-2")
    device_request(before, "203.0.113.9", "gw-1")
    device_request(before, "198.51.100.7", "gw-2")  # behind one NAT address with gw-1
    device_request(before, "192.0.2.1", "gw-3", account="0123456789abcdef0123456789abcdef")
    before.remember(["192.0.2.200"])  # counted by none
    after = restarted(before, path)
    assert books(after) == books(before)
    assert after.known_groups() == ["2001:db8:1:2::/64", "203.0.113.9", "198.51.100.7", "192.0.2.1", "192.0.2.200"]
    assert after.known_devices() == [(("acme", "gw-1"), ["198.51.100.7", "203.0.113.9"]),
                                     (("acme", "gw-2"), ["2001:db8:1:2::/64", "198.51.100.7"]),
                                     (("0123456789abcdef0123456789abcdef", "gw-3"), ["192.0.2.1"])]
    assert path.read_text().splitlines()[-3:] == [
        "device\tacme\tgw-1\t198.51.100.7\t203.0.113.9", "device\tacme\tgw-2\t2001:db8:1:2::/64\t198.51.100.7",
        "device\t0123456789abcdef0123456789abcdef\tgw-3\t192.0.2.1"]
    assert books(restarted(after, path)) == books(before)  # and again


def test_a_devices_cap_holds_across_a_restart(tmp_path):
    """
    A stolen certificate's groups, read back after a restart, are its own still: as it makes more known it
    forgets them (with the file of an older izreg, naming no device, they stayed known: 8 more groups each
    restart), and the rest of the fleet's groups stay known.
    """
    path = tmp_path / "tls-known-groups"
    before = admission()
    fleet = [f"10.0.0.{n}" for n in range(50)]
    for n, address in enumerate(fleet):
        device_request(before, address, f"gw-{n}")
    for n in range(MAX_DEVICE_GROUPS):
        device_request(before, ipv6_64(n), "stolen")
    after = restarted(before, path)
    for n in range(MAX_DEVICE_GROUPS, 3 * MAX_DEVICE_GROUPS):
        device_request(after, ipv6_64(n), "stolen")
    stolen = [after.group_of(ipv6_64(n)) for n in range(2 * MAX_DEVICE_GROUPS, 3 * MAX_DEVICE_GROUPS)]
    assert after.known_groups() == fleet + stolen
    assert after.known_devices()[-1] == (("acme", "stolen"), stolen)
    devices_consistent(after)


#: names a certificate may hold (the admission takes any string): each a device id, with the account "acme"
_STRANGE = ["gw\t192.0.2.66", "gw\n192.0.2.66", "gw\n192.0.2.66\tacme\tgw-1", "\ndevice\tacme\tgw-9\t192.0.2.66",
            "back\\slash", "100%", "%41", "sp ace", "é-ü", "\udcff", "", "device", "a\rb", "\x00", "gw-1",
            "x" * 128]


def test_any_name_a_certificate_holds_is_read_back_as_itself_and_forges_no_line(tmp_path):
    """
    Device ids (and accounts) with tabs, newlines, backslashes, percent signs, non-ASCII letters, a lone
    surrogate (not UTF-8), or empty: read back as they were, each on its one line, and no group or device
    that one of them spells (192.0.2.66, gw-9) is known.
    """
    path = tmp_path / "tls-known-groups"
    before = admission()
    for n, name in enumerate(_STRANGE):
        device_request(before, f"198.51.100.{n}", name)
        device_request(before, "203.0.113.1", "gw-0", account=name)
    after = restarted(before, path)
    assert books(after) == books(before)
    assert "192.0.2.66" not in after.known_groups() and ("acme", "gw-9") not in dict(after.known_devices())
    lines = path.read_bytes().split(b"\n")
    assert len(after.known_groups()) == len(_STRANGE) + 1 and len(after.known_devices()) == 2 * len(_STRANGE)
    assert len(lines) == 3 * len(_STRANGE) + 1 + 1  # a line each (and b"" after the last newline)
    assert all(line.isascii() and b"\r" not in line and line.count(b"\t") <= 1 + 2 + MAX_DEVICE_GROUPS
               for line in lines)
    assert b"device\tacme\tgw%09192.0.2.66\t198.51.100.0" in lines
    assert b"device\tacme\t%ED%B3%BF\t198.51.100.9" in lines


def test_lines_a_writer_never_wrote_are_dropped_the_rest_read(tmp_path):
    """
    A device's line read only as written: its names encoded once (no raw space, no lower-case or needless
    escape, UTF-8), one to 8 groups of the file's; else dropped, its device counting none. A device's later
    line is its most recent. A group only a device's line names is not known.
    """
    path = tmp_path / "tls-known-groups"
    nine = "\t".join(f"10.0.0.{n}" for n in range(9))
    path.write_bytes("\n".join([
        *(f"10.0.0.{n}" for n in range(9)), "192.0.2.1", "192.0.2.2",
        "device\tacme\tgw-1\t192.0.2.1",
        "device\tacme\tgw-2\t192.0.2.1\t192.0.2.99",  # 192.0.2.99 is no known group: left out
        "device\tacme\tgw-3\t192.0.2.99",  # none of its groups known: dropped
        "device\tacme\tgw 4\t192.0.2.1", "device\tacme\tgw%0a4\t192.0.2.1", "device\tacme\t%67w-4\t192.0.2.1",
        "device\tacme\t%FF\t192.0.2.1", "device\tacme\tgw%\t192.0.2.1",  # not as a writer encodes: dropped
        f"device\tacme\tgw-5\t{nine}",  # 9 groups: dropped
        "device\tacme\tgw-6", "device\tacme", "device\t",  # no group, no device: dropped
        "device\tacme\tgw-7\t192.0.2.1\t" + "1" * 50,  # a field no group can be: dropped
        "device\tacme\tgw-1\t192.0.2.2\t192.0.2.1",  # gw-1 again: this one
        "device acme gw-8 192.0.2.1", "Device\tacme\tgw-8\t192.0.2.1", "192.0.2.1\tacme\tgw-8",
    ]).encode() + b"\ndevice\tacme\tgw-\xff\t192.0.2.1\n")
    with capturedLogs() as events:
        known = read_known(str(path), admission().group_of)
    assert known.groups == [*(f"10.0.0.{n}" for n in range(9)), "192.0.2.1", "192.0.2.2"]
    assert known.devices == [(("acme", "gw-2"), ["192.0.2.1"]), (("acme", "gw-1"), ["192.0.2.2", "192.0.2.1"])]
    assert formatEvent(events[0]).startswith(f"dropped 15 lines of {path}: ")  # (gw-1's first line: replaced)


def test_a_file_of_an_older_izreg_is_read_its_groups_counted_by_no_device(tmp_path):
    path = tmp_path / "tls-known-groups"
    path.write_text("198.51.100.7\n2001:db8:1:2::/64\n")
    adm = admission()
    keeper(adm, path).startService()
    assert adm.known_groups() == ["198.51.100.7", "2001:db8:1:2::/64"] and adm.known_devices() == []
    device_request(adm, "198.51.100.7", "gw-1")  # counts it from now on
    assert adm.known_devices() == [(("acme", "gw-1"), ["198.51.100.7"])]


def test_what_is_read_is_bounded_by_line_by_file_and_by_count(tmp_path):
    """
    A line longer than a device's with its longest names and its 8 groups is dropped; a file longer than
    MAX_KNOWN of those and as many groups is read up to there (logged); of many devices' lines, the last
    MAX_KNOWN devices are kept. A device whose name is longer than is read back is not written.
    """
    path = tmp_path / "tls-known-groups"
    group = "192.0.2.1"
    longest = "device\t" + "\t".join(["a" * known_module._MAX_NAME] * 2 + [group] * MAX_DEVICE_GROUPS)
    longest += " " * (known_module._MAX_LINE - len(longest))  # (spaces, stripped): as long as one is read
    path.write_text(f"{group}\n{longest}\n{longest} \n")
    known = read_known(str(path), admission().group_of)
    assert known.devices == [(("a" * known_module._MAX_NAME,) * 2, [group] * MAX_DEVICE_GROUPS)]
    # more devices than are kept: the last MAX_KNOWN
    path.write_text(f"{group}\n" + "".join(f"device\tacme\tgw-{n}\t{group}\n" for n in range(MAX_KNOWN + 10)))
    known = read_known(str(path), admission().group_of)
    assert [device for device, _ in known.devices] == [("acme", f"gw-{n}") for n in range(10, MAX_KNOWN + 10)]
    # a file larger than its bound: the lines up to it (the one it cuts dropped whole), the rest not read
    lines = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}\n" for n in range(known_module._MAX_FILE // 10)]
    data = "".join(lines)
    assert len(data) > known_module._MAX_FILE
    path.write_text(data)
    with capturedLogs() as events:
        known = read_known(str(path), admission().group_of)
    whole = data[:known_module._MAX_FILE].count("\n")
    assert known.groups == [line.strip() for line in lines[whole - MAX_KNOWN:whole]]
    assert [formatEvent(e) for e in events] == [
        f"{path} is larger than {known_module._MAX_FILE} bytes: the rest is not read"]
    # a name longer than is read back: its device left out of the file, its group in it
    adm = admission()
    device_request(adm, "198.51.100.1", "x" * (known_module._MAX_NAME + 1))
    device_request(adm, "198.51.100.2", "é" * (known_module._MAX_NAME // 6 + 1))
    device_request(adm, "198.51.100.3", "gw-1")
    after = restarted(adm, path)
    assert after.known_groups() == adm.known_groups() and after.known_devices() == adm.known_devices()[-1:]
