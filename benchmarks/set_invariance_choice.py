"""The jointly learned set-wide invariance with its settings fixed, against the same with its learning rate and steps
chosen on held-out validation episodes (``set_invariance.holdout``, ``set_invariance.lrs``).

Both variants learn one invariance per task on the validation episodes only and score it on the same test episodes
(:func:`aiaudio.eval.fewshot.jointly_row`). Two sources of models:

* ``--demo-runs``: run directories of the pretraining ablations (``benchmarks/pretraining_ablations.py``), read out on
  the demo's two few-shot tasks (timbre family and MIDI note, 5-way 3-shot, 120 test episodes, the ablations'
  evaluation data in ``--work``);
* ``--minibench``: the mini benchmark's AI-SimCLR model, read out on its sets and shot counts with its few-shot
  overrides (the run and data directories of its config).

Writes a JSON record (config, commit, machine, seeds, one row per model, task and variant: accuracy, 95 % interval,
the invariance chosen and, for the held-out variant, the chosen learning rate and steps). ``--start`` adds the
per-episode learner (the paper's readout) started from the fixed variant's invariance instead of 0.5.

    python benchmarks/set_invariance_choice.py --out benchmarks/results/set_invariance_choice_cpu.json \\
        --demo-runs runs/pretraining_ablations/base_seed0 runs/pretraining_ablations/base_seed1 \\
        runs/pretraining_ablations/base_seed2 --minibench configs/minibench/cpu.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aiaudio.config import apply_overrides, from_dict, load_yaml  # noqa: E402
from aiaudio.demo import TASKS  # noqa: E402
from aiaudio.encoder import load_encoder  # noqa: E402
from aiaudio.eval.fewshot import FewshotEvaluator, evaluate_encoder  # noqa: E402
from aiaudio.fewshot import load_evaluation_data, parse_fewshot_config  # noqa: E402
from benchmarks.machine import command_line, commit, machine_info  # noqa: E402
from benchmarks.minibench.run import MinibenchConfig  # noqa: E402
from benchmarks.pipeline import repo_path  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "audio"
#: The variants compared: name -> set_invariance overrides.
VARIANTS: dict[str, list[str]] = {
    "fixed (lr 0.05, 60 steps)": [],
    "held-out choice (1/2 held out; lr 0.01, 0.05, 0.2; up to 60 steps)": [
        "set_invariance.holdout=0.5", "set_invariance.lrs=[0.01,0.05,0.2]"],
}


#: The extra row of ``--start``: the per-episode learner started from the invariance of the first variant.
START_VARIANT = "per episode from the jointly learned start"


def evaluate(config_path: Path, overrides: list[str], start: bool = False) -> dict[str, dict[str, Any]]:
    """The jointly learned row of each variant for one few-shot configuration (its checkpoint, data, episodes), and
    with ``start`` the per-episode learner started from the first variant's invariance (``selected: [jointly_start]``)."""
    rows: dict[str, dict[str, Any]] = {}
    for position, (name, extra) in enumerate(VARIANTS.items()):
        config = parse_fewshot_config(apply_overrides(load_yaml(config_path), [*overrides, *extra]))
        device = torch.device("cpu")
        data = load_evaluation_data(config.data, config.episodes.seed, False, device)
        evaluator = FewshotEvaluator(config.episodes, config.learner, config.sweep, data.episode_data(device), device,
                                     config.statistics, config.set_invariance)
        model = load_encoder(config.checkpoint, device)
        selected = ["jointly", "jointly_start"] if start and position == 0 else ["jointly"]
        found = dict(zip(selected, evaluate_encoder(evaluator, model, [], "amortised", selected=selected,
                                                    per_episode=False)))
        trace = found["jointly"]["set_invariance"]
        rows[name] = {"accuracy": 100 * found["jointly"]["accuracy"], "ci95": 100 * found["jointly"]["ci95"],
                      "chosen_i": found["jointly"]["chosen_i"],
                      **({"chosen": trace["chosen"]} if "chosen" in trace else {}), "trace": trace}
        if "jointly_start" in found:
            row = found["jointly_start"]
            rows[START_VARIANT] = {"accuracy": 100 * row["accuracy"], "ci95": 100 * row["ci95"],
                                   "learned_i": row["learned_i"], "start": row["start"],
                                   "invariance_lr": row["invariance_lr"], "lr": row["lr"]}
    for name, row in rows.items():
        print(json.dumps({"config": str(config_path), "variant": name,
                          **{k: v for k, v in row.items() if k != "trace"}}), flush=True)
    return rows


def demo_rows(run_dir: Path, work: Path, start: bool = False) -> list[dict[str, Any]]:
    """Both demo tasks for one ablation run (the ablations' evaluation data and cache)."""
    rows = []
    for label in TASKS:
        overrides = [f"checkpoint={run_dir}", f"data.root={work / 'eval_data'}", f"data.label={label}",
                     f"data.cache_dir={work / 'cache' / 'fewshot'}", "progress=false", "device=cpu"]
        rows.append({"model": str(run_dir), "task": label,
                     "variants": evaluate(CONFIGS / "demo_fewshot.yaml", overrides, start)})
    return rows


def minibench_rows(config_path: Path, start: bool = False) -> list[dict[str, Any]]:
    """Every set and shot count of the mini benchmark for its AI-SimCLR model."""
    config = from_dict(MinibenchConfig, load_yaml(config_path), "minibench")
    out, data = repo_path(config.out_dir), repo_path(config.data_dir)
    rows = []
    for set_name, set_config in config.fewshot.sets.items():
        for shots in config.fewshot.shots:
            overrides = [f"checkpoint={out / 'ai_simclr'}", f"data.root={data / set_name}",
                         f"data.cache_dir={out / 'cache' / 'fewshot'}", f"episodes.shots={shots}", "progress=false",
                         "device=cpu", *config.fewshot.overrides]
            rows.append({"model": str(out / "ai_simclr"), "task": f"{set_name}-{shots}shot",
                         "variants": evaluate(repo_path(set_config), overrides, start)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON record")
    parser.add_argument("--demo-runs", type=Path, nargs="*", default=[])
    parser.add_argument("--work", type=Path, default=Path("runs/pretraining_ablations"),
                        help="the ablations' folder (evaluation data and cache)")
    parser.add_argument("--minibench", type=Path, default=None, help="a mini benchmark config whose run is done")
    parser.add_argument("--start", action="store_true",
                        help="also run the per-episode learner from the fixed variant's invariance (slow at 5 shots)")
    args = parser.parse_args(argv)
    rows = [row for run_dir in args.demo_runs for row in demo_rows(run_dir, args.work, args.start)]
    if args.minibench is not None:
        rows += minibench_rows(args.minibench, args.start)
    record = {"benchmark": "set_invariance_choice", "commit": commit(), "machine": machine_info(torch.device("cpu")),
              "command": command_line(__file__, argv),
              "config": {"variants": VARIANTS}, "seeds": {"episodes": 0, "set_invariance": 0}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
