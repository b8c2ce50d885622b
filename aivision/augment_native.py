"""The fused CPU kernel of :class:`aivision.augment.ImageAugment` (``augment_native.c``), built on first use.

On the CPU the torch path of the augmentations makes some thirty passes over whole batches in memory; the kernel does
every op of one view image by image while the image is in the core's cache, with the same semantics (the torch path
is its reference; ``tests/vision/test_image_augment.py`` holds them equal). It is plain C compiled with the system's C
compiler (``$CC``, else ``cc``) into a shared library cached under ``$AIVISION_NATIVE_CACHE`` (default
``~/.cache/amortised-invariance/native``), keyed by the source, the flags, the compiler and the CPU; it is loaded with
:mod:`ctypes`, which releases the GIL during a call, so the batch is split over ``torch.get_num_threads()`` threads.
Without a compiler the augmentations stay on the torch path (:func:`native_kernel` returns ``None`` and
:func:`native_unavailable_reason` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("augment_native.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
_FLAG_NAMES = ("flip", "jitter", "grayscale", "blur", "solarize")

_kernel: NativeKernel | None = None
_reason: str | None = None
_loaded = False


def cache_dir() -> Path:
    configured = os.environ.get("AIVISION_NATIVE_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "amortised-invariance" / "native"


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (``-march=native`` code runs only where these match)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return platform.machine() + "\n" + "\n".join(wanted)


def _build(compiler: str) -> Path:
    """The shared library for this source, flags, compiler and CPU, compiled unless cached. Raises on failure."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_identity()]).encode())
    target = cache_dir() / f"augment_native_{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.TemporaryDirectory(dir=target.parent)
    except OSError as error:
        raise RuntimeError(f"cannot write the kernel cache {target.parent} ({error}); set AIVISION_NATIVE_CACHE to a "
                           "writable folder") from error
    with work_dir as work:
        partial = Path(work) / target.name
        result = subprocess.run([compiler, *FLAGS, "-o", str(partial), str(SOURCE), "-lm"], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr.strip()}")
        os.replace(partial, target)  # atomic: processes building at once each install a whole library
    return target


def _load() -> NativeKernel:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (install gcc, or set CC)")
    path = _build(compiler)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise RuntimeError(f"the compiled kernel {path} would not load: {error}") from error
    return NativeKernel(library)


def native_kernel() -> NativeKernel | None:
    """The kernel, built and loaded once per process; ``None`` where it cannot be (see
    :func:`native_unavailable_reason`)."""
    global _kernel, _reason, _loaded
    if not _loaded:
        _loaded = True
        try:
            _kernel = _load()
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            _reason = str(error)
    return _kernel


def native_unavailable_reason() -> str | None:
    """Why :func:`native_kernel` is ``None`` (``None`` when it is available)."""
    native_kernel()
    return _reason


class NativeKernel:
    """The loaded kernel: :meth:`views` makes one normalised view per uint8 image on the CPU."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self._function = library.augment_views
        self._function.restype = ctypes.c_int
        self._function.argtypes = [pointer, size, size, size, size] + [pointer] * 12
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0

    def _executor(self, workers: int) -> ThreadPoolExecutor:
        if self._pool is None or self._workers != workers:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._workers = ThreadPoolExecutor(max_workers=workers), workers
        return self._pool

    def views(
        self, images: torch.Tensor, params: dict[str, torch.Tensor], size: int, mean: torch.Tensor, std: torch.Tensor,
    ) -> torch.Tensor:
        """Normalised views ``[B, 3, size, size]`` of uint8 CPU images ``[B, 3, H, W]`` under the parameters drawn by
        :meth:`aivision.augment.ImageAugment.draw` (an op absent from ``params`` does not act)."""
        if images.device.type != "cpu" or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"the native kernel takes uint8 CPU images [B, 3, H, W], got {images.dtype} "
                             f"{list(images.shape)} on {images.device}")
        batch, _, height, width = images.shape
        images = images.contiguous()
        zeros = torch.zeros(batch, dtype=torch.uint8)
        arrays = {
            "boxes": params["boxes"].to(torch.float32).contiguous(),
            "factors": params.get("factors", torch.zeros(batch, 4)).to(torch.float32).contiguous(),
            "order": params.get("order", torch.zeros(batch, 4, dtype=torch.int64)).to(torch.int64).contiguous(),
            "sigma": params.get("sigma", torch.ones(batch)).to(torch.float32).contiguous(),
            **{name: params[name].to(torch.uint8).contiguous() if name in params else zeros for name in _FLAG_NAMES},
        }
        mean = mean.detach().to(torch.float32).flatten().contiguous()
        std = std.detach().to(torch.float32).flatten().contiguous()
        out = torch.empty(batch, 3, size, size, dtype=torch.float32)
        workers = max(1, min(torch.get_num_threads(), batch))
        bounds = [batch * part // workers for part in range(workers + 1)]

        def run(start: int, stop: int) -> int:
            def at(tensor: torch.Tensor) -> int:
                return tensor.data_ptr() + start * tensor.stride(0) * tensor.element_size()

            return self._function(
                at(images), stop - start, height, width, size, at(arrays["boxes"]), at(arrays["flip"]),
                at(arrays["jitter"]), at(arrays["factors"]), at(arrays["order"]), at(arrays["grayscale"]),
                at(arrays["blur"]), at(arrays["sigma"]), at(arrays["solarize"]), mean.data_ptr(), std.data_ptr(),
                at(out))

        if workers == 1:
            codes = [run(0, batch)]
        else:
            pool = self._executor(workers)
            codes = [future.result() for future in
                     [pool.submit(run, bounds[k], bounds[k + 1]) for k in range(workers)]]
        if any(code != 0 for code in codes):
            raise MemoryError("the native augmentation kernel could not allocate its scratch buffers")
        return out
