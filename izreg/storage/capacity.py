# -*- test-case-name: tests.storage.test_capacity -*-
"""
Free disk space and the floor below which pushes are turned away
(``[server] min_free_disk``: ``"2GB"``, ``"512MiB"``, ``"5%"``, bytes, or ``"0"``).

Checked before a push writes its first byte (one C{statvfs}, no I/O on the
data), so a push refused for space leaves nothing half-written. A disk that
fills anyway (another process writes to it) is the blob store's ENOSPC path.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Callable

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_FLOOR = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%|[A-Za-z]*)\s*")


@dataclass(frozen=True)
class Floor:
    """A minimum of free space: C{bytes} or C{percent} of the file system."""

    bytes: int = 0
    percent: float | None = None

    def minimum(self, total: int) -> int:
        return int(total * self.percent / 100) if self.percent is not None else self.bytes


def parse_floor(text: str) -> Floor:
    """``"2GB"`` (powers of 1000), ``"2GiB"`` (of 1024), ``"5%"``, ``"1024"`` (bytes)."""
    m = _FLOOR.fullmatch(text)
    if m is None or m.group(2).lower() not in _UNITS and m.group(2) != "%":
        raise ValueError(f"expected a size such as \"2GB\", \"512MiB\" or \"5%\", not {text!r}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if number > 100:
            raise ValueError(f"a percentage is at most 100%, not {text!r}")
        return Floor(percent=number)
    return Floor(bytes=int(number * _UNITS[unit]))


@dataclass(frozen=True)
class Space:
    free: int
    total: int
    minimum: int

    @property
    def low(self) -> bool:
        return self.free < self.minimum


class DiskFloor:
    """The free space of the file system holding C{path}, against a L{Floor}."""

    def __init__(self, path: str, floor: Floor = Floor(), statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self.path = path
        self.floor = floor
        self._statvfs = statvfs

    def space(self) -> Space:
        st = self._statvfs(self.path)
        total = st.f_blocks * st.f_frsize
        return Space(free=st.f_bavail * st.f_frsize, total=total, minimum=self.floor.minimum(total))

    def refusal(self) -> str | None:
        """Why a push must wait (one line), or C{None} when there is room."""
        space = self.space()
        if not space.low:
            return None
        return (f"the registry is low on disk space ({_human(space.free)} free, "
                f"the floor is {_human(space.minimum)}); pushes are refused until space is freed")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # not reached


def probe_writable(root: str, subdirectories: tuple[str, ...] = ()) -> str | None:
    """
    Create, write and remove a small file in the data directory C{root} and in each of its
    C{subdirectories} that exists (blocking: call it in a thread). C{None} when all are writable, else
    why not (one line, naming a directory by its place in the data directory, not by its path:
    C{/readyz} says it to anyone).
    A permission bit is not enough: root ignores it, a read-only mount or an
    immutable directory does not.
    A file of its own each call (C{mkstemp}: a new name, C{O_EXCL}): two probes at once, in two
    threads, must not remove each other's.
    """
    for name in ("", *subdirectories):
        directory = os.path.join(root, name)
        if name and not os.path.isdir(directory):
            continue
        try:
            fd, path = tempfile.mkstemp(prefix=".izreg-probe-", dir=directory)
            try:
                try:
                    os.write(fd, b"ok")
                finally:
                    os.close(fd)
            finally:
                os.unlink(path)  # also when the write failed (a full disk): else one more file every /readyz
        except OSError as e:
            return f"the data directory{f' (its {name}/)' if name else ''} is not writable: {e.strerror}"
    return None
