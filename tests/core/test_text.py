"""izreg.core.text: a count with its noun (the command's output and the log lines)."""

from __future__ import annotations

from izreg.core.text import plural


def test_plural():
    assert [plural(n, "repository", "repositories") for n in (0, 1, 2)] == [
        "0 repositories", "1 repository", "2 repositories"]
    assert [plural(n, "byte") for n in (0, 1, 2)] == ["0 bytes", "1 byte", "2 bytes"]
    assert [plural(n, "device CA") for n in (1, 2)] == ["1 device CA", "2 device CAs"]
