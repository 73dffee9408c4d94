"""Keep glibc from returning freed activation buffers to the OS after every step.

A CPU training step allocates and frees the same large activation buffers over and
over. glibc serves requests above its mmap threshold with fresh `mmap` calls and trims
the heap top when it frees, so each step page-faults its buffers in again, which slows
CPU training (results/speed/allocator_speed.json). The `MALLOC_MMAP_THRESHOLD_` /
`MALLOC_TRIM_THRESHOLD_` environment variables would fix it, but only if set before the
interpreter starts, so `gaussmem train` calls `keep_freed_memory()`, which sets the
same two knobs at run time through `mallopt`. Memory that is freed stays reserved by
the process, which is what a training loop that reuses it every step wants.

The mmap threshold cannot go above 32 MiB, and a training step frees and allocates
buffers larger than that: they are still mapped and faulted in afresh every step.
`keep_freed_memory(heap_only=True)` (`gaussmem train --heap-allocator`) also sets
glibc's mmap count limit to 0, which serves every request from the heap: faster steps,
but the process holds the heap's high-water mark for good, a higher peak memory
(results/speed/allocator_speed_heap.json, allocator_speed_lfw.json, docs/training.md).
So it is asked for, not the default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
#: The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): requests up to
#: this size come from the reusable heap instead of a fresh mapping.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Never trim the heap top back to the OS (the largest positive int mallopt takes).
TRIM_THRESHOLD_BYTES = 2**31 - 1


def keep_freed_memory(*, heap_only: bool = False) -> bool:
    """Raise glibc's mmap and trim thresholds and, with `heap_only`, never mmap; True if
    applied (glibc only, else a no-op returning False: other allocators do not have this
    problem in this form)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                   and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return applied and (not heap_only or bool(mallopt(_M_MMAP_MAX, 0)))
