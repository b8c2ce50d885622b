"""CPU time of each stage of the batched CLAR chain on one thread; prints one JSON object.

Each stage runs on the same batch of synthetic 5 s clips (those of ``augment_throughput``) with torch limited to one
thread, and is timed with ``time.thread_time`` (CPU time of this thread: insensitive to other processes' load),
best of ``--repeats``. An op's figure includes drawing its random parameters. ``--source DIR`` times the ``aiaudio``
package of another checkout (for example ``git worktree add /tmp/before <commit>``) to compare two versions of the
code with the same script.

Example:
    python benchmarks/augment_cpu_time.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

SAMPLE_RATE = 16000


def best_cpu_ms(function: Callable[[], object], repeats: int) -> float:
    """Smallest CPU time of this thread over ``repeats`` calls, in milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        function()
        best = min(best, time.thread_time() - start)
    return round(1000.0 * best, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose aiaudio package is timed (default: this one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.source.resolve()))
    sys.path.insert(1, str(Path(__file__).resolve().parent))

    from aiaudio.audio.augment import ClarAugment, ClarConfig, PitchShiftConfig
    from aiaudio.engine.runtime import tune_cpu_allocator
    from augment_throughput import make_clips
    from machine import machine_info

    import aiaudio

    torch.set_num_threads(1)
    malloc_tuned = tune_cpu_allocator()
    wave = torch.from_numpy(make_clips(args.batch_size, args.clip_seconds))
    generator = torch.Generator().manual_seed(0)
    chains = {
        domain: ClarAugment(ClarConfig(pitch_shift=PitchShiftConfig(domain=domain)))
        for domain in ("spectrogram", "waveform")
    }
    spectral = chains["spectrogram"]
    frontend = spectral.frontend
    power = frontend.power_spectrogram(wave)
    mel = frontend.mel_from_power(power)
    filterbank = frontend.melspec.mel_scale.fb
    pitch = spectral.ops["pitch_shift"]

    def spectral_pitch_and_projection() -> torch.Tensor:
        params = pitch.randomize_parameters(power.shape[0], power.shape[-1], generator)
        return pitch.shift_and_project(power, params, filterbank)

    stages: dict[str, Callable[[], object]] = {
        "power_spectrogram": lambda: frontend.power_spectrogram(wave),
        "mel_projection": lambda: frontend.mel_from_power(power),
        "spectrogram_pitch_shift_with_mel_projection": spectral_pitch_and_projection,
        "waveform_pitch_shift": lambda: chains["waveform"].ops["pitch_shift"](wave, generator),
        **{name: (lambda op=spectral.ops[name]: op(wave, generator))
           for name in ("fade_in", "fade_out", "noise", "time_mask", "time_shift")},
        "time_stretch": lambda: spectral.ops["time_stretch"](mel, generator),
        "log_and_normalize": lambda: frontend.normalize(frontend.log(mel)),
        **{f"whole_chain_{domain}_domain": (lambda chain=chain: chain(wave, torch.ones(7), generator))
           for domain, chain in chains.items()},
    }
    with torch.no_grad():
        cpu_ms = {name: best_cpu_ms(stage, args.repeats) for name, stage in stages.items()}
    report = {
        "machine": {**machine_info(torch.device("cpu")), "glibc_malloc_tuned": malloc_tuned},
        "source": str(Path(aiaudio.__file__).resolve().parents[1]),
        "setup": {"batch_size": args.batch_size, "clip_seconds": args.clip_seconds, "repeats": args.repeats},
        "cpu_ms_per_batch": cpu_ms,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
