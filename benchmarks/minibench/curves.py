"""Learning curves of the mini benchmark: few-shot accuracy of both models against pretraining steps, same budget axis.

The mini benchmark's run keeps a checkpoint of each model every 250 steps. For each ``--steps`` value this reads out
both models' checkpoints after that many steps through the mini benchmark's own few-shot stage (same sets, shots,
episodes, sweep and statistics) with the readouts that need no per-episode learning: SimCLR, AI-SimCLR at i = all,
and AI-SimCLR with one invariance per set learned jointly on the validation episodes. The final step's row also
carries the per-episode learned i of the main run when it is there. Writes a JSON record (config, commit, machine,
seeds, accuracy and 95 % interval per row) and a plot, one panel per set and shot count.

    python benchmarks/minibench/curves.py configs/minibench/cpu.yaml --steps 500 1000 1500 2000 2500 \\
        --out benchmarks/results/minibench_curves_cpu.json --plot benchmarks/results/minibench_curves_cpu.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aiaudio.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict  # noqa: E402
from aiaudio.eval.fewshot import JOINTLY_READOUT  # noqa: E402
from benchmarks.machine import command_line, commit, machine_info  # noqa: E402
from benchmarks.minibench.run import MODELS, MinibenchConfig, fewshot  # noqa: E402
from benchmarks.pipeline import repo_path  # noqa: E402

#: What each curve is: (model, readout prefix) in a few-shot report, and its label in the plot.
CURVES: tuple[tuple[str, str, str], ...] = (
    ("baseline", "linear", "SimCLR"),
    ("amortised", "i = all", "AI-SimCLR, i = all"),
    ("amortised", JOINTLY_READOUT, "AI-SimCLR, i learned jointly on validation"),
    ("amortised", "learned i", "AI-SimCLR, i learned per episode"),
)
PER_EPISODE = CURVES[3][2]
#: Overrides of the curve points: no per-episode readout (the slow one), no floor (it does not depend on the step).
CURVE_OVERRIDES = ("per_episode=false", "floor=false", "selected=[jointly]", "fixed=[all]")


def curve_rows(reports: dict[str, dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """One row per (set and shots, curve) found in ``reports``."""
    rows = []
    for key, report in reports.items():
        for model, prefix, label in CURVES:
            row = next((r for r in report["rows"] if r["model"] == model and r["readout"].startswith(prefix)), None)
            if row is not None:
                rows.append({"step": step, "set": key, "curve": label, "accuracy": 100 * row["accuracy"],
                             "ci95": 100 * row["ci95"], "episodes": row["episodes"],
                             **({"invariance": row.get("chosen_i") or row.get("learned_i")}
                                if row.get("chosen_i") or row.get("learned_i") else {})})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy ± 95 % interval against pretraining steps, one panel per set and shot count."""
    keys = sorted({row["set"] for row in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for _, _, label in CURVES:
            points = sorted((r["step"], r["accuracy"], r["ci95"]) for r in rows if r["set"] == key and r["curve"] == label)
            if points:
                steps, accuracy, ci95 = zip(*points)
                ax.errorbar(steps, accuracy, yerr=ci95, marker="o", capsize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves(config: MinibenchConfig, steps: list[int]) -> list[dict[str, Any]]:
    """The curve rows of every step in ``steps`` (each needs both models' checkpoint at that step), plus the main
    run's per-episode learned i at its final step when that is one of ``steps``."""
    out, data = repo_path(config.out_dir), repo_path(config.data_dir)
    missing = [f"{out / name / 'checkpoints' / f'step_{step:08d}'}" for step in steps for name in MODELS
               if not (out / name / "checkpoints" / f"step_{step:08d}").is_dir()]
    if missing:
        raise ConfigError(f"no checkpoint {missing[0]} (and {len(missing) - 1} more): run the mini benchmark first "
                          "(it keeps one every 250 steps)")
    rows: list[dict[str, Any]] = []
    for step in steps:
        rows += curve_rows(fewshot(config, out, data, step, CURVE_OVERRIDES), step)
    results = out / "results.json"
    if results.is_file():
        final = {run["config"]["trainer"]["steps"] for run in json.loads(results.read_text())["pretrain"].values()}
        if len(final) == 1 and final <= set(steps):
            reports = {key: json.loads((out / "fewshot" / key / "results.json").read_text()) for key in _keys(config)}
            rows += [row for row in curve_rows(reports, final.pop()) if row["curve"] == PER_EPISODE]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="configs/minibench/cpu.yaml")
    parser.add_argument("--steps", nargs="+", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the JSON record")
    parser.add_argument("--plot", type=Path, help="the plot (PNG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config = from_dict(MinibenchConfig, apply_overrides(load_yaml(repo_path(args.config)), []))
    try:
        rows = learning_curves(config, args.steps)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record = {"benchmark": "minibench_curves", "commit": commit(), "machine": machine_info(torch.device("cpu")),
              "command": command_line(__file__, argv),
              "config": to_dict(config), "overrides": list(CURVE_OVERRIDES),
              "seeds": {"pretraining": "the configs' trainer.seed", "episodes": "the configs' episodes.seed"},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)
    for row in rows:
        print(f"{row['step']:>5} {row['set']:<14} {row['curve']:<45} {row['accuracy']:.1f} ± {row['ci95']:.1f}")
    return 0


def _keys(config: MinibenchConfig) -> list[str]:
    return [f"{name}-{shots}shot" for name in config.fewshot.sets for shots in config.fewshot.shots]


if __name__ == "__main__":
    sys.exit(main())
