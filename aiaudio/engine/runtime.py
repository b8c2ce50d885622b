"""Process-level settings that make CPU tensor code fast.

glibc's malloc serves every allocation above a (dynamic) threshold with a fresh ``mmap`` and returns it with
``munmap`` when freed, so each large temporary tensor costs page faults on first touch. Batched audio augmentation
allocates many such tensors per step; on a 2-core machine this roughly halves its throughput. Raising the mmap and
trim thresholds keeps freed blocks in the heap for reuse (the process's resident memory then stays at its peak).
Set ``AIAUDIO_MALLOC_TUNING=0`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; True when glibc accepted both (False off glibc or when disabled)."""
    if os.environ.get("AIAUDIO_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
