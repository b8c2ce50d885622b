"""The ``aiaudio`` command line: parse arguments and a config, wire the layers, nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aiaudio.config import apply_overrides, load_yaml
from aiaudio.engine.commands import add_config_command, run_command, run_demo

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "audio" / "demo.yaml"


def _load(config_path: str, overrides: list[str]):
    from aiaudio.pretrain import parse_config

    return parse_config(apply_overrides(load_yaml(config_path), overrides))


def cmd_cache(args: argparse.Namespace) -> int:
    from aiaudio.pretrain import run_cache

    config = _load(args.config, args.overrides)
    report = run_cache(config, progress=not args.quiet, overwrite=args.overwrite)
    print(report.summary())
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from aiaudio.pretrain import run_pretrain

    config = _load(args.config, args.overrides)
    summary = run_pretrain(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from aiaudio.fewshot import format_table, parse_fewshot_config, run_fewshot

    config = parse_fewshot_config(apply_overrides(load_yaml(args.config), args.overrides))
    report = run_fewshot(config)
    print(format_table(report))
    print(f"results written to {config.out_dir}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from aiaudio.measure import parse_measure_config, run_measure

    config = parse_measure_config(apply_overrides(load_yaml(args.config), args.overrides))
    result = run_measure(config)
    print((Path(result["out_dir"]) / "invariance.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(result["files"]))
    return 0


def cmd_readout(args: argparse.Namespace) -> int:
    from aiaudio.readout import parse_readout_config, run_readout

    config = parse_readout_config(apply_overrides(load_yaml(args.config), args.overrides))
    report = run_readout(config)
    print(json.dumps(report["readouts"], indent=2))
    print(f"results written to {report['out_dir']}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from aiaudio.embed import run_embed

    path = run_embed(
        args.checkpoint, args.folder, args.out, args.invariance, args.seconds, args.batch_size, args.device, args.cache_dir
    )
    print(f"features written to {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from aiaudio.audio.synthetic import generate_synthetic

    root = generate_synthetic(Path(args.out), num_clips=args.clips, seed=args.seed)
    print(f"synthetic data set (FSD50K layout) at {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aiaudio.demo import run_demo as demo

    return run_demo(DEMO_CONFIG, demo, args.out, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiaudio",
        description="Amortised invariance learning for contrastive audio self-supervision.",
        epilog="Overrides are key.sub=value pairs applied on top of CONFIG, e.g. data.root=/data/FSD50K trainer.lr=5e-4.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = add_config_command(sub, "cache", "decode a data set once into a 16 kHz int16 waveform cache", cmd_cache)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace a cache built from different clips")
    add_config_command(sub, "pretrain", "pretrain (or resume) a contrastive model; works under torchrun", cmd_pretrain)
    add_config_command(
        sub, "fewshot", "N-way K-shot evaluation with learned invariances (MetaAudio or synthetic)", cmd_fewshot,
        "checkpoint=runs/x data.root=/data/ESC-50",
    )
    add_config_command(
        sub, "measure", "invariance table and plots of a pretrained encoder", cmd_measure,
        "checkpoint=runs/x data.root=/data/FSD50K",
    )
    add_config_command(
        sub, "readout", "many-shot linear (or regression) readout with a learned invariance", cmd_readout,
        "checkpoint=runs/x data.root=/data/clips",
    )

    p = sub.add_parser("embed", help="features of every audio file under a folder at a given invariance")
    p.add_argument("checkpoint", help="a pretraining run directory or a checkpoint directory")
    p.add_argument("folder", help="folder of audio files")
    p.add_argument("out", help="output .npz (keys, features, invariance, factors)")
    p.add_argument("--invariance", default=None, help='"all" (default), "pitch_shift=0.2,fade_in=1,..." or K numbers')
    p.add_argument("--seconds", type=float, default=5.0, help="segment length; a clip's segment features are averaged")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="where the decoded waveforms are cached")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("synth", help="write the built-in synthetic data set (FSD50K layout)")
    p.add_argument("out")
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="the whole story on built-in synthetic data, on CPU in minutes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="key.sub=value applied to the demo's pretraining config")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aiaudio`` console script."""
    from aiaudio.audio.cache import CacheError
    from aiaudio.audio.datasets import DatasetError

    return run_command("aiaudio", build_parser(), argv, (CacheError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
