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
known groups to C{<data_dir>/tls-known-groups} (one group a line, the least
recent first: addresses and networks of the operator's devices, no secret)
every L{SAVE_INTERVAL} seconds when they changed and when the server stops,
and gives them back to the admission when it starts. It names no device:
read back, a group is counted by none (each device counts a few groups,
L{izreg.service.tls.admission.MAX_DEVICE_GROUPS}) and stays known until it
ages out of the last L{MAX_KNOWN} (L{HandshakeAdmission.remember}).

The file is a hint: one that is missing, unreadable or garbled is logged
and ignored (the server starts knowing no group, as before); lines that are
not a group under the current C{[tls] group_ipv4_prefix} /
C{group_ipv6_prefix} (changed since, or not an address) are dropped. It is
written to a temporary file, synced off the reactor, then renamed over the
old one: a crash leaves the old file or the new one, never half of one. A
symbolic link at either name is not followed, a FIFO not waited on.
"""

from __future__ import annotations

import ipaddress
import os
import stat

from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger

from izreg.core.text import plural
from izreg.service.tls.admission import MAX_KNOWN
from izreg.storage.blobs import write_private

log = Logger()

#: seconds between two writes of the file (when the known groups changed)
SAVE_INTERVAL = 300
#: the file's name in the data directory
FILE_NAME = "tls-known-groups"
#: the longest line read (an IPv6 network with its prefix is at most 43 characters)
_MAX_LINE = 64


def read_groups(path: str, group_of) -> list[str]:
    """
    The groups in the file at C{path}, the least recent first: only lines that C{group_of} (an
    address's group under the current prefixes) gives back for their own address, at most
    L{MAX_KNOWN} (the most recent); C{[]} if there is no such file or it cannot be read.
    """
    try:
        # not through a symbolic link, not waiting on a FIFO (the reactor's thread, at start-up)
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(f"{path} is not a regular file")
            data = f.read((_MAX_LINE + 1) * MAX_KNOWN + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warn("known device groups not read from {path}: {error} (starting with none)", path=path, error=e)
        return []
    groups, dropped = [], 0
    for raw in data.splitlines():
        try:
            line = raw.decode("ascii").strip()
            ipaddress.ip_network(line, strict=True)  # an address, or a network in CIDR form
            valid = group_of(line.partition("/")[0]) == line
        except (UnicodeDecodeError, ValueError):
            valid = False
        if valid:
            groups.append(line)
        elif raw.strip():
            dropped += 1
    if dropped:
        log.warn("dropped {lines} of {path}: not a client group under the current tls.group_ipv4_prefix /"
                 " group_ipv6_prefix", lines=plural(dropped, "line"), dropped=dropped, path=path)
    return groups[-MAX_KNOWN:]


def write_groups(path: str, groups: list[str]) -> None:
    """Replace the file at C{path} with C{groups}, one a line: a temporary file, synced, renamed over it."""
    write_private(path, "".join(f"{group}\n" for group in groups).encode("ascii"))


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
        groups = read_groups(self.path, self.admission.group_of)
        self.admission.remember(groups)
        self._saved = self.admission.known_changes
        if groups:
            log.info("{groups} from {path}: their TLS handshakes go first",
                     groups=plural(len(groups), "known device group"), n=len(groups), path=self.path)
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
        """Write the known groups if they changed since last read or written (off the reactor); a Deferred, or None."""
        changes = self.admission.known_changes
        if changes == self._saved or self._writing is not None:
            return self._writing
        groups = self.admission.known_groups()

        def written(_):
            self._saved = changes

        def failed(failure):
            log.warn("known device groups not written to {path}: {error}", path=self.path, error=failure.value)

        def done(_):
            self._writing = None

        self._writing = d = self._to_thread(write_groups, self.path, groups)
        d.addCallbacks(written, failed).addBoth(done)
        return d
