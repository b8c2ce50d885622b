"""Process-level settings: the device a config names, and glibc allocator tuning that makes CPU tensor code fast.

glibc's malloc serves every allocation above a (dynamic) threshold with a fresh ``mmap`` and returns it with
``munmap`` when freed, so each large temporary tensor costs page faults on first touch. Batched audio augmentation
allocates many such tensors per step; on a 2-core machine this roughly halves its throughput. Raising the mmap and
trim thresholds keeps freed blocks in the heap for reuse (the process's resident memory then stays at its peak).
Set ``AMINV_MALLOC_TUNING=0`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os

import torch

from aiaudio.config import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Set to 0 to keep glibc's allocator defaults (the older name AIAUDIO_MALLOC_TUNING is still read).
MALLOC_TUNING_VARIABLE = "AMINV_MALLOC_TUNING"


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; True when glibc accepted both (False off glibc or when disabled)."""
    if os.environ.get(MALLOC_TUNING_VARIABLE, os.environ.get("AIAUDIO_MALLOC_TUNING", "1")) == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def resolve_device(name: str = "auto") -> torch.device:
    """The device a config names: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Raises:
        ConfigError: CUDA is asked for but not available, or the name is not a device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for, but CUDA is not available on this machine; use device=cpu")
    return device
