# -*- test-case-name: tests.service.test_heap -*-
"""
Handing the C allocator's free memory back to the system after a garbage-collection sweep.

glibc's malloc keeps pages it has freed inside its heaps (the main one and one
per thread that allocates: the writer and I/O threads) until a free block at
the top of a heap passes its trim threshold; a busy registry's short-lived
buffers (request bodies, blob chunks, LMDB values copied into Python) leave
free pages in the middle of them, which count in the process's RSS.
C{malloc_trim(0)} gives back every whole free page of every heap
(MADV_DONTNEED). L{trim} calls it (blocking for a few milliseconds: the
server calls it on its I/O pool) and says how much anonymous memory the
process had before and after. Without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

_malloc_trim: Callable[[int], int] | None = None
_loaded = False


def _function() -> Callable[[int], int] | None:
    global _malloc_trim, _loaded
    if not _loaded:
        _loaded = True
        name = ctypes.util.find_library("c")
        try:
            _malloc_trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            _malloc_trim = None
        if _malloc_trim is not None:
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return _malloc_trim


def anonymous_memory() -> int | None:
    """This process's resident anonymous memory (RssAnon), in bytes, or C{None} where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def trim() -> tuple[int, int] | None:
    """C{malloc_trim(0)}: (RssAnon before, after) in bytes; C{None} without glibc's malloc_trim or /proc."""
    function = _function()
    if function is None:
        return None
    before = anonymous_memory()
    function(0)
    after = anonymous_memory()
    if before is None or after is None:
        return None
    return before, after
