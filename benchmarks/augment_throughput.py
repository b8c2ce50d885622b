"""Throughput of the batched CLAR chain versus the per-clip reference chain; prints one JSON object.

Both produce normalised log-mel views of 5 s clips at 16 kHz with all seven augmentations on:

* batched: ``ClarAugment`` on whole batches on ``--device``: on the CPU by default one process using every core
  through torch's intra-op threads, or with ``--batched-processes N`` N single-threaded processes, each making its
  own batches (the layout of the reference, and of data-loader workers);
* reference: ``ReferenceClarChain`` (audiomentations + torchaudio ``Fade``) and ``LogMel`` one clip at a time, in a
  ``multiprocessing`` pool of ``--workers`` processes (default: one per core), each single-threaded.

The two sides alternate in ``--rounds`` short rounds so that both see the same background load; the share of CPU
time stolen by the hypervisor during each side is reported (high values mean a noisy neighbour, not a slow method).
glibc returns every large tensor's memory to the OS on free, so each new buffer costs page faults; by default the
benchmark raises glibc's mmap and trim thresholds for both sides (``--no-malloc-tuning`` to measure without).

Example:
    python benchmarks/augment_throughput.py --device cpu --seconds 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaudio.audio.augment import PITCH_DOMAINS, ClarAugment, ClarConfig, PitchShiftConfig  # noqa: E402
from aiaudio.audio.frontend import LogMel  # noqa: E402
from aiaudio.audio.reference import REFERENCE_METHODS, ReferenceClarChain  # noqa: E402
from aiaudio.engine.runtime import resolve_device, tune_cpu_allocator  # noqa: E402
from aiaudio.audio.clar import CLAR_NAMES  # noqa: E402
from machine import machine_info  # noqa: E402

SAMPLE_RATE = 16000
def _cpu_times() -> list[int] | None:
    """Aggregate CPU jiffies from /proc/stat (user nice system idle iowait irq softirq steal), or None."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def make_clips(count: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Synthetic clips ``[count, N]``: a harmonic tone with a random fundamental plus noise, z-normalised."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(80.0, 1000.0, size=(count, 1))
    clips = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6.3, size=(count, 1))) / h for h in range(1, 5))
    clips = clips + 0.1 * rng.standard_normal((count, n))
    clips = (clips - clips.mean(1, keepdims=True)) / clips.std(1, keepdims=True)
    return clips.astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BatchedRunner:
    """``ClarAugment`` with every op on, over batches cycling through the clips."""

    def __init__(self, clips: np.ndarray, device: torch.device, batch_size: int, pitch_domain: str) -> None:
        config = ClarConfig(pitch_shift=PitchShiftConfig(domain=pitch_domain))
        self.chain = ClarAugment(config, LogMel()).to(device)
        self.pool = torch.from_numpy(clips).to(device)
        self.device = device
        self.batch_size = batch_size
        self.generator = torch.Generator(device=device)
        self.step = 0

    def batch(self, step: int) -> torch.Tensor:
        rows = (torch.arange(self.batch_size) + step * self.batch_size) % self.pool.shape[0]
        return self.pool[rows.to(self.device)]

    @torch.no_grad()
    def run(self, seconds: float, descriptor: torch.Tensor | None = None) -> tuple[int, float]:
        """Views made and seconds taken, running whole batches for at least ``seconds``."""
        descriptor = torch.ones(len(CLAR_NAMES)) if descriptor is None else descriptor
        views, start = 0, time.perf_counter()
        while True:
            self.generator.manual_seed(self.step)
            self.chain(self.batch(self.step), descriptor, self.generator)
            _sync(self.device)
            views += self.batch_size
            self.step += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return views, elapsed

    def ms_per_batch_by_op(self, repeats: int = 5) -> dict[str, float]:
        """Milliseconds per batch of the frontend alone, and what each op alone adds (best of ``repeats``)."""

        def best_ms(descriptor: torch.Tensor) -> float:
            return 1000.0 * min(self.run(0.0, descriptor)[1] for _ in range(repeats))

        frontend_ms = best_ms(torch.zeros(len(CLAR_NAMES)))
        per_op = {"frontend_only": round(frontend_ms, 1)}
        for i, name in enumerate(CLAR_NAMES):
            alone = torch.zeros(len(CLAR_NAMES))
            alone[i] = 1.0
            per_op[name] = round(best_ms(alone) - frontend_ms, 1)
        per_op["all_ops"] = round(best_ms(torch.ones(len(CLAR_NAMES))), 1)
        return per_op


_BATCHED_WORKER: dict[str, BatchedRunner] = {}


def _init_batched_worker(clips: np.ndarray, batch_size: int, pitch_domain: str) -> None:
    torch.set_num_threads(1)
    runner = BatchedRunner(clips, torch.device("cpu"), batch_size, pitch_domain)
    runner.step = os.getpid() << 24  # each process its own batches and seeds
    _BATCHED_WORKER["runner"] = runner


def _batched_worker_run(seconds: float) -> int:
    return _BATCHED_WORKER["runner"].run(seconds)[0]


class BatchedProcessRunner:
    """``BatchedRunner`` in each of a pool of single-threaded CPU processes, all running at once."""

    def __init__(self, clips: np.ndarray, processes: int, batch_size: int, pitch_domain: str) -> None:
        # Fork before the parent runs any multi-threaded torch op.
        self.processes = processes
        self.pool = mp.get_context("fork").Pool(
            processes, initializer=_init_batched_worker, initargs=(clips, batch_size, pitch_domain)
        )

    def run(self, seconds: float) -> tuple[int, float]:
        """Views made by all processes and the wall-clock seconds taken, each running for at least ``seconds``."""
        start = time.perf_counter()
        views = sum(self.pool.map(_batched_worker_run, [seconds] * self.processes, chunksize=1))
        return views, time.perf_counter() - start

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


_WORKER: dict[str, object] = {}


def _init_worker(clips: np.ndarray, method: str) -> None:
    torch.set_num_threads(1)
    _WORKER["clips"] = clips
    _WORKER["chain"] = ReferenceClarChain(ClarConfig(), SAMPLE_RATE, method=method)
    _WORKER["frontend"] = LogMel()


def _reference_view(task: tuple[int, int]) -> np.ndarray:
    index, seed = task
    clips: np.ndarray = _WORKER["clips"]  # type: ignore[assignment]
    chain: ReferenceClarChain = _WORKER["chain"]  # type: ignore[assignment]
    frontend: LogMel = _WORKER["frontend"]  # type: ignore[assignment]
    view = chain.view(clips[index % len(clips)], [1.0] * len(CLAR_NAMES), frontend, seed=seed)
    return view.numpy()


class ReferenceRunner:
    """The per-clip reference chain + log-mel in a pool of single-threaded worker processes."""

    def __init__(self, clips: np.ndarray, workers: int, method: str) -> None:
        # Fork before the parent runs any multi-threaded torch op.
        self.pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(clips, method))
        self.round_size = 4 * workers
        self.offset = 0

    def run(self, seconds: float) -> tuple[int, float]:
        """Views made and seconds taken, running rounds of tasks for at least ``seconds``."""
        views, start = 0, time.perf_counter()
        while True:
            tasks = [(self.offset + i, self.offset + i) for i in range(self.round_size)]
            for view in self.pool.imap_unordered(_reference_view, tasks):
                assert view.shape[1] == 128
                views += 1
            self.offset += self.round_size
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return views, elapsed

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing duration of each side")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two sides")
    parser.add_argument("--clips", type=int, default=128, help="number of distinct synthetic clips")
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reference pool size")
    parser.add_argument("--reference-method", choices=REFERENCE_METHODS, default="signalsmith_stretch")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    parser.add_argument(
        "--pitch-domain", choices=PITCH_DOMAINS, default="waveform", help="where the batched chain shifts pitch"
    )
    parser.add_argument(
        "--batched-processes",
        type=int,
        default=0,
        help="CPU only: run the batched chain in this many single-threaded processes (0: one process, all threads)",
    )
    args = parser.parse_args(argv)

    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    if args.batched_processes < 0 or (args.batched_processes and not on_cpu):
        parser.error("--batched-processes takes a count >= 0, and only with --device cpu")
    device = resolve_device(args.device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    malloc_tuned = False if args.no_malloc_tuning else tune_cpu_allocator()
    clips = make_clips(args.clips, args.clip_seconds)
    reference_runner = ReferenceRunner(clips, args.workers, args.reference_method)
    process_runner = (
        BatchedProcessRunner(clips, args.batched_processes, batch_size, args.pitch_domain)
        if args.batched_processes
        else None
    )
    batched_runner = BatchedRunner(clips, device, batch_size, args.pitch_domain)
    timed_batched: BatchedRunner | BatchedProcessRunner = process_runner or batched_runner
    reference_runner.run(0.0)  # warm-up: imports, JIT compilation, first allocations
    timed_batched.run(0.0)
    # Alternate the two sides in short rounds so that both see the same background load.
    totals = {"reference": [0, 0.0, [0] * 8], "batched": [0, 0.0, [0] * 8]}
    for _ in range(args.rounds):
        for side, runner in (("reference", reference_runner), ("batched", timed_batched)):
            before = _cpu_times()
            views, elapsed = runner.run(args.seconds / args.rounds)
            after = _cpu_times()
            totals[side][0] += views
            totals[side][1] += elapsed
            if before is not None and after is not None:
                totals[side][2] = [t + b - a for t, a, b in zip(totals[side][2], before, after)]
    reference_runner.close()
    if process_runner is not None:
        process_runner.close()
    results = {}
    for side, (views, elapsed, cpu) in totals.items():
        results[side] = {
            "views_per_s": round(views / elapsed, 2),
            "views": views,
            "elapsed_s": round(elapsed, 2),
            "cpu_steal_fraction": round(cpu[7] / sum(cpu), 3) if sum(cpu) else None,
        }
    results["batched"]["ms_per_batch_by_op"] = batched_runner.ms_per_batch_by_op()
    ratio = results["batched"]["views_per_s"] / results["reference"]["views_per_s"]
    report = {
        "machine": {**machine_info(device), "glibc_malloc_tuned": malloc_tuned},
        "setup": {
            "clip_seconds": args.clip_seconds,
            "sample_rate": SAMPLE_RATE,
            "ops": list(CLAR_NAMES),
            "batch_size": batch_size,
            "reference_workers": args.workers,
            "reference_method": args.reference_method,
            "pitch_domain": args.pitch_domain,
            "batched_layout": (
                f"{args.batched_processes} single-threaded processes"
                if args.batched_processes
                else f"1 process, {torch.get_num_threads()} intra-op threads"
            ),
            "timing_seconds_per_side": args.seconds,
            "alternating_rounds": args.rounds,
        },
        "batched": results["batched"],
        "reference": results["reference"],
        "speedup": round(ratio, 2),
        "target_speedup": 15.0,
        "meets_target": ratio >= 15.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
