"""Episodes per second of 5-way 1-shot few-shot evaluation with invariance learning (Hyper-ResNet18).

Prints JSON. Each episode learns its own linear head and descriptor ``i`` on its support set
(:func:`aiaudio.eval.learner.run_episodes`), then classifies its queries. Inputs are synthetic: a pool of
``--classes x --clips-per-class`` clips of one segment each, every segment a standard-normal ``1 x 128 x 157``
log-mel (5 s at MetaAudio's settings). The encoder is a randomly initialised Hyper-ResNet18 (K = 7) in eval mode.

Three runs over the same episodes:

* ``batched``: ``--episodes-per-batch`` episodes per pass, a fixed budget of ``--steps`` steps per episode (early
  stopping off: patience larger than the budget);
* ``one_at_a_time``: the same budget with one episode per pass (on ``--serial-episodes`` of the episodes);
* ``batched_early_stopping``: the learner's defaults (at most ``--early-steps`` steps, patience ``--patience``).

Besides the runs, ``step_overhead`` compares one learner step (``fit_episodes``, time per step) with a bare step on
the same tensors (the encoder forward + the gradient of the support loss, no episode bookkeeping), for a full batch
and for one episode. With a random encoder the support features of different clips are nearly collinear, so the
support loss keeps falling and early stopping rarely ends an episode before its budget (see ``mean_steps``). On CUDA
the defaults are width 1.0 and 64 episodes per pass; on CPU a smaller problem that runs in about two minutes. The
encoder passes run at ``--precision`` (``learner.precision``; auto: bf16 autocast where the device computes bf16
natively, else fp32; fp32 if the learner fails under autocast, with the error reported).

    python benchmarks/fewshot_throughput.py                 # auto device
    python benchmarks/fewshot_throughput.py --device cpu --width 0.25 --steps 5
    python benchmarks/fewshot_throughput.py --device cpu --precision fp32   # against --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.episodes import Episodes, EpisodeSampler, SegmentPool
from aiaudio.eval.learner import AmortisedFeatures, LearnerConfig, fit_episodes, run_episodes, uses_bf16
from aiaudio.audio.clar import clar_space
from aiaudio.nn import hyper_resnet
from machine import command_line, commit, machine_info

TARGET_EPISODES = 10_000
TARGET_SECONDS = 600.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds one call of ``fn`` takes (the device synchronised on both sides) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def measure_run(
    name: str, features: AmortisedFeatures, pool: SegmentPool, episodes: Episodes, config: LearnerConfig,
    start: torch.Tensor, device: torch.device,
) -> dict:
    """Time ``run_episodes`` over ``episodes`` after one untimed batch of two steps (kernel selection, allocator
    warm-up)."""
    warmup = EpisodeSampler(pool, range(int(pool.clip_class.max()) + 1), ways=5, shots=1, queries=1, seed=1)
    run_episodes(features, pool, warmup.sample(config.episodes_per_batch), replace(config, steps=2), start, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, results = timed(lambda: run_episodes(features, pool, episodes, config, start, device), device)
    per_second = len(episodes) / seconds
    report = {
        "run": name,
        "episodes": len(episodes),
        "episodes_per_batch": config.episodes_per_batch,
        "max_steps": config.steps,
        "patience": config.patience,
        "mean_steps": round(results.steps.float().mean().item(), 2),
        "seconds": round(seconds, 3),
        "episodes_per_s": round(per_second, 3),
        "projected_s_for_10000": round(TARGET_EPISODES / per_second, 1),
        "mean_accuracy": round(results.accuracy.mean().item(), 4),
    }
    if device.type == "cuda":
        report["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return report


def step_overhead(
    features: AmortisedFeatures, episodes: Episodes, config: LearnerConfig, start: torch.Tensor,
    device: torch.device, repeats: int,
) -> dict:
    """Time per learner step (``fit_episodes``) against a bare step on the same support sets (see the docstring)."""
    labels = episodes.support_labels().to(device)
    num, per = labels.shape
    prepared = features.prepare(episodes.support_segments.flatten().to(device))
    initial = start.to(device, torch.float32).expand(num, -1).clone()
    weight = torch.randn(num, episodes.ways, features.encoder.num_features, device=device, requires_grad=True)
    descriptors = initial.clone().requires_grad_()

    def bare_step() -> None:
        with torch.enable_grad():
            out = F.normalize(features.features(prepared, descriptors).float(), dim=-1).view(num, per, -1)
            logits = torch.einsum("enf,ecf->enc", out, weight)
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
            torch.autograd.grad(loss, [weight, descriptors])

    def learner_steps() -> None:
        fit_episodes(features, prepared, labels, episodes.ways, initial, config)

    bare_step()
    learner_steps()
    bare = min(timed(bare_step, device)[0] for _ in range(repeats))
    fit = min(timed(learner_steps, device)[0] for _ in range(max(1, repeats // 2)))
    # fit_episodes runs one extra forward (the prototypes) before its steps; charge it as a third of a step.
    learner = fit / (config.steps + 1 / 3)
    return {
        "episodes_per_pass": num,
        "bare_step_ms": round(bare * 1000, 2),
        "learner_step_ms": round(learner * 1000, 2),
        "learner_over_bare": round(learner / bare, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None, help="Hyper-ResNet18 width (default 1.0 CUDA, 0.125 CPU)")
    parser.add_argument("--episodes", type=int, default=None, help="timed episodes (default 1024 CUDA, 16 CPU)")
    parser.add_argument("--serial-episodes", type=int, default=None,
                        help="episodes of the one-at-a-time run (default 128 CUDA, 4 CPU)")
    parser.add_argument("--episodes-per-batch", type=int, default=None, help="default 64 CUDA, 8 CPU")
    parser.add_argument("--steps", type=int, default=None,
                        help="fixed step budget of the batched and one-at-a-time runs (default 20 CUDA, 10 CPU)")
    parser.add_argument("--early-steps", type=int, default=None,
                        help=f"step budget with early stopping (default {LearnerConfig.steps} CUDA, 40 CPU)")
    parser.add_argument("--patience", type=int, default=LearnerConfig.patience, help="patience with early stopping")
    parser.add_argument("--mels", type=int, default=128)
    parser.add_argument("--frames", type=int, default=157)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--clips-per-class", type=int, default=20)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="of the encoder passes (learner.precision); auto: bf16 where the device computes it "
                             "natively (CUDA, a CPU with AVX-512 BF16 or AMX), else fp32")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the step-overhead timings")
    parser.add_argument("--no-overhead", action="store_true", help="skip the step-overhead comparison")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    width = args.width or (1.0 if cuda else 0.125)
    num_episodes = args.episodes or (1024 if cuda else 16)
    serial_episodes = min(args.serial_episodes or (128 if cuda else 4), num_episodes)
    per_batch = args.episodes_per_batch or (64 if cuda else 8)
    steps = args.steps or (20 if cuda else 10)
    early_steps = args.early_steps or (LearnerConfig.steps if cuda else 40)
    repeats = args.repeats or (10 if cuda else 2)
    bf16 = uses_bf16(args.precision, device)
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    space = clar_space()
    encoder = hyper_resnet("resnet18", space.dim, in_chans=1, width=width).to(device).eval().requires_grad_(False)
    clip_class = torch.arange(args.classes).repeat_interleave(args.clips_per_class)
    pool = SegmentPool(clip_class)  # one segment per clip
    inputs = torch.randn(len(clip_class), 1, args.mels, args.frames, device=device)
    features = AmortisedFeatures(encoder, lambda segments: inputs[segments], bf16)
    sampler = EpisodeSampler(pool, range(args.classes), ways=5, shots=1, queries=1, seed=0)
    episodes = sampler.sample(num_episodes)
    start = torch.full((space.dim,), 0.5)

    fixed = LearnerConfig(steps=steps, patience=steps + 1, episodes_per_batch=per_batch)
    serial = replace(fixed, episodes_per_batch=1)
    early = LearnerConfig(steps=early_steps, patience=args.patience, episodes_per_batch=per_batch)
    autocast_error = None
    if bf16:
        try:
            measure_run("bf16 check", features, pool, sampler.sample(2), replace(fixed, steps=2), start, device)
        except Exception as error:  # report the failure and measure in fp32 instead
            autocast_error = f"{type(error).__name__}: {error}"
            bf16 = features.bf16 = False

    runs = [
        measure_run("batched", features, pool, episodes, fixed, start, device),
        measure_run("one_at_a_time", features, pool, sampler.sample(serial_episodes), serial, start, device),
        measure_run("batched_early_stopping", features, pool, episodes, early, start, device),
    ]
    batched, single, _ = runs
    report = {
        "benchmark": "fewshot_throughput",
        "commit": commit(),
        "command": command_line(__file__),
        "seed": 0,
        "machine": machine_info(device),
        "task": "5-way 1-shot, 1 query per class, invariance + linear head learned per episode",
        "input": [1, args.mels, args.frames],
        "encoder": f"hyper_resnet18 (K = {space.dim}, random init)",
        "width": width,
        "parameters_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
        "pool": f"{args.classes} classes x {args.clips_per_class} clips, one segment each",
        "precision": "bf16 autocast" if bf16 else "fp32",
        "runs": runs,
        "batched_over_one_at_a_time": round(batched["episodes_per_s"] / single["episodes_per_s"], 2),
        "target": f"{TARGET_EPISODES} episodes in <= {TARGET_SECONDS:.0f} s on one H100",
    }
    if autocast_error is not None:
        report["bf16_autocast_error"] = autocast_error
    if not args.no_overhead:
        overhead_steps = min(steps, 5)
        overhead_config = LearnerConfig(steps=overhead_steps, patience=overhead_steps + 1)
        report["step_overhead"] = [
            step_overhead(features, sampler.sample(count), overhead_config, start, device, repeats)
            for count in (per_batch, 1)
        ]
    if not cuda:
        report["peak_rss_gib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
