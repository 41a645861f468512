"""
L{KnownGroupsFile}: the known device groups of TLS handshake admission kept across
restarts (a fake clock; the file written synchronously in place of a thread).
"""

from __future__ import annotations

import errno
import os

import pytest

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from izreg.service.tls.admission import MAX_KNOWN, HandshakeAdmission
from izreg.service.tls.known import SAVE_INTERVAL, KnownGroupsFile, read_groups, write_groups


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
    assert read_groups(str(path), admission().group_of) == ["192.0.2.1", "2001:db8:1:2::/64", "203.0.113.9"]
    # /24 groups for IPv4: the addresses of a /32 run are not groups then
    assert read_groups(str(path), admission(24).group_of) == ["192.0.2.0/24", "2001:db8:1:2::/64"]
    path.write_bytes(os.urandom(4096))
    assert read_groups(str(path), admission().group_of) == []
    assert read_groups(str(tmp_path / "missing"), admission().group_of) == []
    directory = tmp_path / "a-directory"
    directory.mkdir()
    assert read_groups(str(directory), admission().group_of) == []  # unreadable: logged, none


def test_the_log_lines_count_in_words(tmp_path):
    """'1 line', '2 known device groups': no '(s)' (a count takes its noun's number, izreg.core.text.plural)."""
    path = tmp_path / "tls-known-groups"
    path.write_bytes(b"192.0.2.1\njunk\n")
    with capturedLogs() as events:
        assert read_groups(str(path), admission().group_of) == ["192.0.2.1"]
    assert [formatEvent(e) for e in events] == [
        f"dropped 1 line of {path}: not a client group under the current tls.group_ipv4_prefix / group_ipv6_prefix"]
    path.write_bytes(b"192.0.2.1\n192.0.2.2\nx\ny\n")
    with capturedLogs() as events:
        assert read_groups(str(path), admission().group_of) == ["192.0.2.1", "192.0.2.2"]
    assert formatEvent(events[0]).startswith(f"dropped 2 lines of {path}: ")
    with capturedLogs() as events:
        keeper(admission(), path).startService()
    assert f"2 known device groups from {path}: their TLS handshakes go first" in [formatEvent(e) for e in events]


def test_at_most_max_known_are_read_the_most_recent(tmp_path):
    path = tmp_path / "tls-known-groups"
    groups = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(MAX_KNOWN + 10)]
    write_groups(str(path), groups)
    assert read_groups(str(path), admission().group_of) == groups[-MAX_KNOWN:]


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
    write_groups(str(path), ["192.0.2.1"])
    assert victim.read_text() == "192.0.2.9\n"
    assert path.read_text() == "192.0.2.1\n" and not path.is_symlink() and not os.path.lexists(f"{path}.tmp")
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.unlink()
    os.symlink(victim, path)
    assert read_groups(str(path), admission().group_of) == []
    path.unlink()
    os.mkfifo(path)
    assert read_groups(str(path), admission().group_of) == []  # (opened and read, this would block)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    """
    On a full disk the file stays as it was, with no .tmp beside it (an empty one was left), and a write
    that does not fit is an error, never part of the groups written and renamed in place (os.write may
    write part of its bytes).
    """
    from tests.helpers.tmpfs import tmpfs

    with tmpfs(tmp_path / "small", "size=64k", "a full disk") as small:
        path = small / "tls-known-groups"
        write_groups(str(path), ["192.0.2.1"])
        (small / "fill").write_bytes(b"\0" * 32 * 1024)
        groups = [f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}" for n in range(MAX_KNOWN)]  # ~50 KB
        with pytest.raises(OSError) as failed:
            write_groups(str(path), groups)
        assert failed.value.errno == errno.ENOSPC
        assert path.read_text() == "192.0.2.1\n" and not os.path.lexists(f"{path}.tmp")
