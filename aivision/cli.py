"""The ``aivision`` command line: parse arguments and a config, wire the layers, nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aiaudio.config import apply_overrides, load_yaml
from aiaudio.engine.commands import add_config_command, run_command, run_demo

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "vision" / "demo.yaml"


def cmd_pretrain(args: argparse.Namespace) -> int:
    from aivision.pretraining import parse_config, run_pretrain

    summary = run_pretrain(parse_config(apply_overrides(load_yaml(args.config), args.overrides)))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_linear(args: argparse.Namespace) -> int:
    from aiaudio.eval.labelled import readout_markdown
    from aivision.linear import parse_linear_config, run_linear

    config = parse_linear_config(apply_overrides(load_yaml(args.config), args.overrides))
    print(readout_markdown(run_linear(config)))
    print(f"results written to {config.out_dir}")
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from aiaudio.eval.fewshot import format_table
    from aivision.fewshot import parse_fewshot_config, run_fewshot

    config = parse_fewshot_config(apply_overrides(load_yaml(args.config), args.overrides))
    print(format_table(run_fewshot(config)))
    print(f"results written to {config.out_dir}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from aivision.measure import parse_measure_config, run_measure

    result = run_measure(parse_measure_config(apply_overrides(load_yaml(args.config), args.overrides)))
    print((Path(result["out_dir"]) / "invariance.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(result["files"]))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from aivision.embed import run_embed

    path = run_embed(args.checkpoint, args.folder, args.out, args.invariance, args.batch_size, args.device, args.resize)
    print(f"features written to {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from aivision.synthetic import generate_shapes

    root = generate_shapes(Path(args.out), args.images, args.size, args.seed)
    print(f"synthetic shapes (ImageFolder layout, factors.csv) at {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aivision.demo import run_demo as demo

    return run_demo(DEMO_CONFIG, demo, args.out, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aivision",
        description="Amortised invariance learning for contrastive image self-supervision.",
        epilog="Overrides are key.sub=value pairs applied on top of CONFIG, e.g. data.root=/data/imagenet100 trainer.lr=5e-4.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_config_command(sub, "pretrain", "pretrain (or resume) an amortised or plain image model; works under torchrun",
                       cmd_pretrain, "data.root=/data/imagenet100")
    add_config_command(sub, "linear", "linear readout (accuracy or R^2) with a learned invariance", cmd_linear,
                       "checkpoint=runs/x data.root=/data/flowers")
    add_config_command(sub, "fewshot", "N-way K-shot episodes with a per-episode learned invariance", cmd_fewshot,
                       "checkpoint=runs/x data.root=/data/cub")
    add_config_command(sub, "measure", "invariance table and plots of a pretrained image encoder", cmd_measure,
                       "checkpoint=runs/x data.root=/data/imagenet100/val")
    p = sub.add_parser("embed", help="features of every image under a folder at a given invariance")
    p.add_argument("checkpoint", help="a pretraining run directory or a checkpoint directory")
    p.add_argument("folder", help="folder of images (any depth)")
    p.add_argument("out", help="output .npz (keys, features, invariance, factors)")
    p.add_argument("--invariance", default=None, help='"all" (default), "spatial=1,appearance=0.2" or K numbers')
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--resize", type=int, default=None, help="shorter side before the centre crop (default size/0.875)")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("synth", help="write the built-in synthetic shapes (ImageFolder layout with factors.csv)")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("demo", help="the vision story on built-in synthetic shapes, on a CPU in minutes")
    p.add_argument("--out", default="runs/vision_demo")
    p.add_argument("overrides", nargs="*", help="key.sub=value applied to the demo's pretraining config")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aivision`` console script."""
    return run_command("aivision", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
