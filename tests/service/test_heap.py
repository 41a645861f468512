"""izreg.service.heap: malloc_trim gives the free pages inside glibc's heaps back (this process, real allocations)."""

from __future__ import annotations

import ctypes.util

import pytest

from izreg.service.heap import anonymous_memory, trim

MiB = 1 << 20


@pytest.mark.skipif(anonymous_memory() is None or not ctypes.util.find_library("c"), reason="needs Linux and glibc")
def test_free_pages_inside_the_heap_go_back_to_the_system():
    # 32 MiB of 8 KiB buffers (malloc's, not Python's small-object arenas), every 16th kept: the
    # heap's top stays in use, so free() alone gives nothing back; the holes are whole free pages
    buffers = [bytes(8192) for _ in range(4096)]
    kept = buffers[::16]
    del buffers
    before, after = trim()
    assert before - after > 16 * MiB, (before / MiB, after / MiB)
    assert len(kept) == 256
