# -*- test-case-name: tests.service.test_known -*-
"""
The known device groups of TLS handshake admission, kept across restarts.

L{izreg.service.tls.admission.HandshakeAdmission} lets a client group in
which a request authenticated as a device (its certificate verified, not
revoked; a "known" group) take a handshake slot
before groups never seen. Held in memory only, that knowledge was lost with
every restart, just when it matters most: after a restart or an upgrade
every device of the fleet reconnects at once, and an attacker's fresh
groups would compete with them as equals. L{KnownGroupsFile} writes the
known groups, and the devices that count them, to
C{<data_dir>/tls-known-groups} every L{SAVE_INTERVAL} seconds when they
changed and when the server stops, and gives them back to the admission
when it starts (L{HandshakeAdmission.remember}): one device (account and
device id) still counts at most
L{izreg.service.tls.admission.MAX_DEVICE_GROUPS} groups, its groups from
before the restart among them, so a stolen certificate's groups read back
are forgotten as it makes more known, as they were before the restart.

The file (ASCII; addresses, networks, account and device ids: no secret)
holds, the least recent first, a line for each known group::

    192.0.2.7
    2001:db8:1:2::/64

then a line for each device that counts groups, its fields separated by tabs:
C{device}, the account id, the device id, and its groups (one to
L{MAX_DEVICE_GROUPS}, each one of the groups above, the least recent
first)::

    device<TAB>0123456789abcdef0123456789abcdef<TAB>gw-1<TAB>192.0.2.7<TAB>2001:db8:1:2::/64

The account and the device id are percent-encoded (their UTF-8 bytes,
every one but C{A-Z a-z 0-9 _ . - ~} as C{%XX}: L{_encoded}): whatever a
certificate names, a tab, a newline or a backslash in it cannot end its
field or its line, and one device's line cannot forge another group or
device. A file of an older izreg (groups only) is read as before: its
groups are counted by no device, and stay known until they age out of the
last L{MAX_KNOWN}; an older izreg reads this one's groups, and drops the
devices' lines (logged: not a group).

The file is a hint: one that is missing, unreadable or garbled is logged
and ignored (the server starts knowing no group, as before); lines that are
not a group under the current C{[tls] group_ipv4_prefix} /
C{group_ipv6_prefix} (changed since, or not an address), nor a device
counting one of them, are dropped. What is read is bounded as the memory
it fills: each line (L{_MAX_LINE}), the whole file (L{_MAX_FILE}, ~5 MB:
past it, the rest is not read), the last L{MAX_KNOWN} groups and devices.
It is written to a temporary file, synced off the reactor, then renamed
over the old one: a crash leaves the old file or the new one, never half of
one. A symbolic link at either name is not followed, a FIFO not waited on.
"""

from __future__ import annotations

import io
import ipaddress
import os
import stat
from collections import deque
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger

from izreg.core.text import plural
from izreg.service.tls.admission import MAX_DEVICE_GROUPS, MAX_KNOWN
from izreg.storage.blobs import write_private

log = Logger()

#: seconds between two writes of the file (when the known groups changed)
SAVE_INTERVAL = 300
#: the file's name in the data directory
FILE_NAME = "tls-known-groups"
#: a device's line starts with this field (never a group: not an address)
_DEVICE = "device"
#: the longest group (an IPv6 network with its prefix: 43 characters), and the longest account or device id,
#: encoded (a device id is at most 128 characters, izreg.auth.devices.DEVICE_ID_RE: any 128 bytes, encoded)
_MAX_GROUP = len("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")
_MAX_NAME = 3 * 128
#: the longest line read (a device's, with its most groups), and the most bytes of the file read
_MAX_LINE = len(_DEVICE) + 2 * (1 + _MAX_NAME) + MAX_DEVICE_GROUPS * (1 + _MAX_GROUP)
_MAX_FILE = MAX_KNOWN * (_MAX_GROUP + 1) + MAX_KNOWN * (_MAX_LINE + 1)


class Known(NamedTuple):
    """What the file holds: the known groups, and the devices with the groups each counts, the least recent first."""

    groups: list[str]
    devices: list[tuple[tuple[str, str], list[str]]]


def _encoded(name: str) -> str:
    """C{name} (an account or device id) as a field of the file: its UTF-8 bytes percent-encoded, but A-Z a-z 0-9 _.-~."""
    return quote(name.encode("utf-8", "surrogatepass"), safe="")


def _decoded(field: str) -> str:
    """The name that C{field} encodes (L{_encoded}); ValueError if it is not one's encoding."""
    if len(field) > _MAX_NAME:
        raise ValueError("too long a name")
    name = unquote_to_bytes(field).decode("utf-8", "surrogatepass")
    if _encoded(name) != field:  # one encoding each ("%41", "%0a", a raw space: no writer's)
        raise ValueError(f"not an encoded name: {field!r}")
    return name


def _is_group(line: str, group_of) -> bool:
    """Whether C{line} is a group under the current prefixes (an address or a network that is its own address's)."""
    try:
        ipaddress.ip_network(line, strict=True)  # an address, or a network in CIDR form
    except ValueError:
        return False
    return group_of(line.partition("/")[0]) == line


def read_known(path: str, group_of) -> Known:
    """
    The groups and devices in the file at C{path}, the least recent first: only lines that C{group_of} (an
    address's group under the current prefixes) gives back for their own address, at most L{MAX_KNOWN} (the
    most recent), and the devices that count some of them (at most L{MAX_KNOWN}, the most recent; each with
    the groups it counts among those, one to L{MAX_DEVICE_GROUPS}); nothing if there is no such file or it
    cannot be read.
    """
    try:
        # not through a symbolic link, not waiting on a FIFO (the reactor's thread, at start-up)
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(f"{path} is not a regular file")
            data = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return Known([], [])
    except OSError as e:
        log.warn("known device groups not read from {path}: {error} (starting with none)", path=path, error=e)
        return Known([], [])
    if len(data) > _MAX_FILE:
        log.warn("{path} is larger than {size} bytes: the rest is not read", path=path, size=_MAX_FILE)
        data = data[:data.rfind(b"\n", 0, _MAX_FILE) + 1]  # and the line it cut, not whole
    # what is kept is bounded as it is read: a file of many short lines costs no more than the maps it fills
    groups: deque[str] = deque(maxlen=MAX_KNOWN)
    devices: dict[tuple[str, str], list[str]] = {}
    dropped = 0
    for raw in io.BytesIO(data):  # lines end at b"\n" only
        try:
            if len(raw) > _MAX_LINE + 1:
                raise ValueError("too long")
            line = raw.decode("ascii").strip()
            if not line:
                continue
            if line.startswith(_DEVICE + "\t"):
                _, account, device_id, *counted = line.split("\t")
                if not 0 < len(counted) <= MAX_DEVICE_GROUPS or max(map(len, counted)) > _MAX_GROUP:
                    raise ValueError("not a device's groups")
                device = (_decoded(account), _decoded(device_id))
                devices.pop(device, None)  # a later line of a device is its most recent
                devices[device] = counted
                if len(devices) > MAX_KNOWN:
                    del devices[next(iter(devices))]
            elif _is_group(line, group_of):
                groups.append(line)
            else:
                dropped += 1
        except ValueError:  # (UnicodeDecodeError too, and a device's line with too few fields)
            dropped += 1
    known = set(groups)
    restored = []
    for device, counted in devices.items():
        counted = [group for group in counted if group in known]
        if counted:
            restored.append((device, counted))
        else:  # none of its groups: not a group, nor a device counting one
            dropped += 1
    if dropped:
        log.warn("dropped {lines} of {path}: not a client group under the current tls.group_ipv4_prefix /"
                 " group_ipv6_prefix, nor a device counting one", lines=plural(dropped, "line"), dropped=dropped,
                 path=path)
    return Known(list(groups), restored)


def write_known(path: str, groups: list[str], devices=()) -> None:
    """
    Replace the file at C{path} with C{groups}, one a line, then C{devices} (account and device id, and the
    groups it counts, as L{HandshakeAdmission.known_devices} gives them), one a line: a temporary file,
    synced, renamed over it. A device with a name longer than L{read_known} reads is left out (its groups
    are counted by no device when read back).
    """
    lines = [f"{group}\n" for group in groups]
    for (account, device_id), counted in devices:
        names = [_encoded(account), _encoded(device_id)]
        if max(map(len, names)) <= _MAX_NAME:
            lines.append("\t".join([_DEVICE, *names, *counted]) + "\n")
    write_private(path, "".join(lines).encode("ascii"))


class KnownGroupsFile(service.Service):
    """
    Gives C{admission} the groups in C{path} when started; writes its known groups there every
    C{interval} seconds if they changed, and when stopped.
    """

    def __init__(self, admission, path: str, clock, interval: float = SAVE_INTERVAL, to_thread=None) -> None:
        self.admission = admission
        self.path = path
        self.clock = clock
        self.interval = interval
        self._to_thread = to_thread or threads.deferToThread
        self._loop: task.LoopingCall | None = None
        self._saved = 0  # admission.known_changes when last read or written
        self._writing = None

    def startService(self) -> None:
        super().startService()
        groups, devices = read_known(self.path, self.admission.group_of)
        self.admission.remember(groups, devices)
        self._saved = self.admission.known_changes
        if groups:
            log.info("{groups} from {path}, {devices} counting them: their TLS handshakes go first",
                     groups=plural(len(groups), "known device group"), n=len(groups), path=self.path,
                     devices=plural(len(devices), "device"))
        self._loop = task.LoopingCall(self.save)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._writing is not None:  # then what changed since it began
            return self._writing.addCallback(lambda _: self.save())
        return self.save()

    def save(self):
        """
        Write the known groups and devices if they changed since last read or written (off the reactor); a
        Deferred, or None.
        """
        changes = self.admission.known_changes
        if changes == self._saved or self._writing is not None:
            return self._writing
        groups, devices = self.admission.known_groups(), self.admission.known_devices()

        def written(_):
            self._saved = changes

        def failed(failure):
            log.warn("known device groups not written to {path}: {error}", path=self.path, error=failure.value)

        def done(_):
            self._writing = None

        self._writing = d = self._to_thread(write_known, self.path, groups, devices)
        d.addCallbacks(written, failed).addBoth(done)
        return d
