"""Step time and peak memory of amortised image encoders against their plain twins; prints JSON.

Pairs: Hyper-ResNet50 / ResNet50 (MoCo-v2) and Prompt-ViT / ViT (MoCo-v3). On CUDA the paper's shapes (224 px,
batch 256 for ResNet50 and 128 for ViT-B per GPU here, bf16 autocast, channels_last); on the CPU small ones (width
0.25, ViT-Ti, 64 px, batch 8). Targets on a GPU: at most 1.3x for ResNet50 (the paper reports 1.75x) and 1.05x for
the ViT (the paper: 1.07x). Timing as ``benchmarks/pretrain_step.py`` (``method_ms``: ready views; ``full_ms``: views
made on the device each step).

    python benchmarks/vision_pretrain_step.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiaudio.engine.runtime import resolve_device  # noqa: E402
from aivision.pretraining import build_pretrainer, parse_config  # noqa: E402
from machine import command_line, commit, machine_info  # noqa: E402
from pretrain_step import time_pretrainer  # noqa: E402


def pairs(cuda: bool) -> list[tuple[str, list[tuple[str, dict]]]]:
    """(family, [(encoder, config overrides)]) with the amortised encoder second."""
    width = 1.0 if cuda else 0.25
    vit = "base" if cuda else "tiny"
    return [
        ("resnet50 mocov2", [
            ("plain_resnet50", {"model": {"encoder": "plain_resnet50", "width": width}, "invariance": {"mode": "fixed"},
                                "method": {"name": "mocov2"}}),
            ("hyper_resnet50", {"model": {"encoder": "hyper_resnet50", "width": width}, "method": {"name": "mocov2"}}),
        ]),
        ("vit mocov3", [
            (f"plain_vit_{vit}_patch16_224", {"model": {"encoder": f"plain_vit_{vit}_patch16_224",
                                                          "projector_layers": 3, "projector_last_bn": True},
                                                "invariance": {"mode": "fixed"}, "method": {"name": "mocov3"}}),
            (f"prompt_vit_{vit}_patch16_224", {"model": {"encoder": f"prompt_vit_{vit}_patch16_224",
                                                           "encoder_args": {"prompts": 256},
                                                           "projector_layers": 3, "projector_last_bn": True},
                                                 "method": {"name": "mocov3"}}),
        ]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="view size (default 224 on CUDA, 64 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--only", default=None, help="one family: resnet50 or vit")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size or (224 if cuda else 64)
    args.steps = args.steps or (10 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
    report = {"benchmark": "vision_pretrain_step", "commit": commit(),
              "command": command_line(__file__),
              "machine": machine_info(device), "steps": args.steps, "warmup": args.warmup, "size": size,
              "precision": "bf16 autocast, channels_last" if cuda else "fp32", "families": {}}
    for family, members in pairs(cuda):
        if args.only and not family.startswith(args.only):
            continue
        batch = args.batch_size or ((256 if family.startswith("resnet") else 128) if cuda else 8)
        results = []
        for name, overrides in members:
            raw = {**overrides, "data": {"image_size": size}, "input": {"size": size},
                   "trainer": {"batch_size": batch}}
            if "vit" in name:
                raw["model"]["encoder_args"] = {**raw["model"].get("encoder_args", {}), "img_size": size}
            model = build_pretrainer(parse_config(raw), channels_last=cuda)[0]
            images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0))
            results.append(time_pretrainer(name, model, images, args, device))
            del model
            if cuda:
                torch.cuda.empty_cache()
        plain, amortised = results
        report["families"][family] = {
            "batch_size": batch, "results": results,
            "ai_over_plain_method": round(amortised["method_ms"] / plain["method_ms"], 3),
            "ai_over_plain_full": round(amortised["full_ms"] / plain["full_ms"], 3),
            "target_ai_over_plain_gpu": 1.3 if family.startswith("resnet") else 1.05,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
