"""Step time and peak memory of AI-SimCLR (Hyper-ResNet18) versus plain SimCLR (ResNet18).

Prints JSON. On CUDA the defaults are the paper's shapes (batch 256, 5 s crops -> 128x157 log-mels, bf16 autocast,
channels_last); on CPU a smaller problem (see --batch-size, --seconds, --width). Two timings per model:
``method_ms`` (encoder + projector + NT-Xent forward/backward + AdamW step on ready-made views) and ``full_ms``
(the same plus making both CLAR views on the device with a fresh descriptor each step).

    python benchmarks/pretrain_step.py                 # auto device
    python benchmarks/pretrain_step.py --device cpu --batch-size 16 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from aiaudio.config import from_dict
from aiaudio.engine.runtime import resolve_device
from aiaudio.pretrain import PretrainConfig, build_pretrainer
from machine import machine_info


def measure(encoder: str, args: argparse.Namespace, device: torch.device) -> dict:
    mode = "amortised" if encoder.startswith("hyper") else "fixed"
    config = from_dict(
        PretrainConfig,
        {
            "data": {"crop_seconds": args.seconds},
            "model": {"encoder": encoder, "width": args.width},
            "invariance": {"mode": mode},
            "trainer": {"batch_size": args.batch_size},
        },
    )
    cuda = device.type == "cuda"
    model = build_pretrainer(config, channels_last=cuda)[0]
    samples = int(args.seconds * 16000)
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = (torch.randn(args.batch_size, samples, generator=g) * 3000).clamp(-32767, 32767).to(torch.int16)
    return time_pretrainer(encoder, model, batch, args, device)


def time_pretrainer(name: str, model, batch: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """``method_ms`` (ready-made views) and ``full_ms`` (views made each step) of a pretraining module, and its peak
    memory: the timing every modality's step benchmark shares (``args``: steps, warmup, compile)."""
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile_target().compile()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = batch.to(device)
    descriptor = model.descriptor(0).to(device)
    with torch.no_grad():
        view1, view2 = model.views(batch, descriptor, torch.Generator(device=device).manual_seed(0))
    if cuda:
        view1 = view1.contiguous(memory_format=torch.channels_last)
        view2 = view2.contiguous(memory_format=torch.channels_last)

    def method_step(step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model.method(view1, view2, model.descriptor(step).to(device))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def full_step(step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(batch, step)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn) -> float:
        for s in range(args.warmup):
            fn(s)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for s in range(args.steps):
            fn(args.warmup + s)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps * 1000.0

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "encoder": name,
        "parameters_m": round(sum(p.numel() for p in model.method.parameters()) / 1e6, 3),
        "method_ms": round(timed(method_step), 2),
        "full_ms": round(timed(full_step), 2),
    }
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        result["peak_rss_gib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.seconds = args.seconds or (5.0 if cuda else 2.0)
    args.steps = args.steps or (20 if cuda else 5)
    if cuda:
        torch.backends.cudnn.benchmark = True
    # Plain first on CPU so the process's peak RSS is attributed fairly (it only grows).
    results = [measure(name, args, device) for name in ("plain_resnet18", "hyper_resnet18")]
    plain, hyper = results
    report = {
        "benchmark": "pretrain_step",
        "machine": machine_info(device),
        "batch_size": args.batch_size,
        "seconds": args.seconds,
        "width": args.width,
        "precision": "bf16 autocast, channels_last" if cuda else "fp32",
        "results": results,
        "ai_over_plain_method": round(hyper["method_ms"] / plain["method_ms"], 3),
        "ai_over_plain_full": round(hyper["full_ms"] / plain["full_ms"], 3),
        "target_ai_over_plain_gpu": 1.15,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
