# -*- test-case-name: tests.http.test_manage -*-
"""
In-use protection for deletes: what devices pulled recently is not deleted
unless the caller insists (``Izreg-Force-Delete: true``).

A device's pulls are recorded by L{izreg.auth.devicestore.PullRecorder}
(its own pulls, and those an edge gateway served from its cache and
reported); L{InUse} reads them, the batch not yet written included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from izreg.core.errors import ErrorCode, RegistryError
from izreg.storage.audit import iso

FORCE_HEADER = "Izreg-Force-Delete"
DEFAULT_WINDOW = 7 * 24 * 3600


@dataclass
class InUse:
    """
    @ivar devices: C{(repository, digest) -> {device id: last pull time}}.
    @ivar window: seconds; pulls older than this do not protect.
    """

    devices: Callable[[str, str], dict[str, float]]
    now: Callable[[], float]
    window: float = DEFAULT_WINDOW

    def pulled(self, repository: str, digests: Iterable[str]) -> tuple[int, float | None]:
        """How many devices pulled any of C{digests} within the window, and when last."""
        since = self.now() - self.window
        found: dict[str, float] = {}
        for digest in digests:
            for device, at in self.devices(repository, digest).items():
                if at >= since and at > found.get(device, float("-inf")):
                    found[device] = at
        return len(found), max(found.values(), default=None)

    def refuse(self, repository: str, target: str, digests: Iterable[str]) -> tuple[int, float | None]:
        """Raise the 409 if devices pulled C{digests} within the window; else return (0, None)."""
        count, last = self.pulled(repository, digests)
        if count:
            days = self.window / 86400
            window = f"{days:g} days" if days >= 1 else f"{self.window:g} seconds"
            raise RegistryError(
                ErrorCode.IN_USE,
                {"devices": count, "last_pulled": iso(last), "window": self.window},
                f"{target} is in use: {count} device{'s' if count != 1 else ''} pulled it within the last"
                f" {window}, last at {iso(last)}; send the header {FORCE_HEADER}: true to delete it anyway",
            )
        return count, last
