"""Pretraining recipe ablations for the amortised audio encoder, one change at a time, at one reduced budget.

Each variant pretrains an AI-SimCLR Hyper-ResNet18 (width 0.25) on the demo's built-in synthetic audio with the
demo's recipe changed in one key, for ``--steps`` steps of ``--batch`` 2 s crops; the plain SimCLR twin is trained
at the same budget. Each model is then read out on the demo's two few-shot tasks (timbre family, which wants pitch
invariance; MIDI note, which wants pitch sensitivity; 5-way 3-shot, 120 test episodes) with:

* learned i: the descriptor learned per episode (the paper's readout; running BatchNorm statistics);
* i = all, running: every factor on, the checkpoint's running BatchNorm statistics;
* i = all, reference: every factor on, BatchNorm statistics measured at i = all on 256 validation segments;
* i = learned on validation: one descriptor for the whole task, the mean of those learned on the validation
  episodes, with reference statistics;
* i = learned jointly: one descriptor for the whole task learned on the validation episodes' query loss
  (``selected: [jointly]``), with reference statistics;

and the task's no-learning floor (20 MFCC means and standard deviations, nearest class centroid) is recorded once.

    python benchmarks/pretraining_ablations.py --out benchmarks/results/pretraining_ablations_cpu.json \\
        --variants base descriptors_per_step=2 descriptors_per_step=4 descriptors_per_step=8 all_on=0.25 \\
        bits_power=1 dependence=0.25 dependence=1.0 hyper_lr_scale=0.1 --seeds 0

``base`` is ``configs/audio/demo.yaml`` as it stands (each recorded row keeps the commit it ran at). A variant is
``base``, ``simclr`` or ``key=value`` (a key of ``invariance`` or ``model``, or ``hyper_lr_scale`` /
``hyper_weight_decay`` of ``trainer``). Finished runs are reused;
``--extend`` adds the readouts a recorded row lacks (read out again from its checkpoint) without redoing the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aiaudio.audio.synthetic import generate_synthetic  # noqa: E402
from aiaudio.config import apply_overrides, load_yaml  # noqa: E402
from aiaudio.demo import BASELINE_OVERRIDES, DEMO_CLIPS, EVAL_CLIPS, TASKS  # noqa: E402
from aiaudio.encoder import load_encoder  # noqa: E402
from aiaudio.eval.fewshot import (  # noqa: E402
    JOINTLY_READOUT,
    FewshotEvaluator,
    StatisticsConfig,
    evaluate_encoder,
    floor_row,
    jointly_row,
)
from aiaudio.eval.learner import FrozenFeatures  # noqa: E402
from aiaudio.fewshot import FLOOR_READOUT, load_evaluation_data, mfcc_table, parse_fewshot_config  # noqa: E402
from aiaudio.pretrain import parse_config, run_cache, run_pretrain  # noqa: E402
from benchmarks.machine import command_line, commit, machine_info  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "audio"
INVARIANCE_KEYS = ("descriptors_per_step", "bits_power", "all_on", "min_active")
TRAINER_KEYS = ("hyper_lr_scale", "hyper_weight_decay")


def variant_overrides(variant: str) -> list[str]:
    """Config overrides of a variant: ``base`` (none), ``simclr`` (the plain twin) or ``key=value``."""
    if variant == "base":
        return []
    if variant == "simclr":
        return list(BASELINE_OVERRIDES)
    key, _, value = variant.partition("=")
    if not value:
        raise SystemExit(f"variant {variant!r}: expected base, simclr or key=value")
    section = "invariance" if key in INVARIANCE_KEYS else "trainer" if key in TRAINER_KEYS else "model"
    return [f"{section}.{key}={value}"]


def run_directory(work: Path, variant: str, seed: int) -> Path:
    """Where a variant's pretraining run at ``seed`` lives."""
    return work / f"{variant.replace('=', '_')}_seed{seed}"


def pretrain(out: Path, variant: str, seed: int, steps: int, batch: int, data_root: Path) -> Path:
    """Pretrain one variant (reused when its final checkpoint exists) and return its run directory."""
    run_dir = run_directory(out, variant, seed)
    overrides = [f"data.root={data_root}", f"data.cache_dir={out / 'cache' / 'pretraining'}", f"run_dir={run_dir}",
                 f"trainer.steps={steps}", f"trainer.batch_size={batch}", f"trainer.seed={seed}",
                 f"trainer.ckpt_every={steps}", *variant_overrides(variant)]
    config = parse_config(apply_overrides(load_yaml(CONFIGS / "demo.yaml"), overrides))
    if not (run_dir / "checkpoints" / f"step_{steps:08d}").is_dir():
        run_cache(config, progress=False)
        run_pretrain(config)
    return run_dir


def _evaluators(run_dir: Path, eval_root: Path, out: Path, label: str) -> tuple[FewshotEvaluator, FewshotEvaluator]:
    """The task's evaluators with the running statistics and with statistics measured at the descriptor."""
    config = parse_fewshot_config(apply_overrides(load_yaml(CONFIGS / "demo_fewshot.yaml"), [
        f"checkpoint={run_dir}", f"data.root={eval_root}", f"data.label={label}",
        f"data.cache_dir={out / 'cache' / 'fewshot'}", f"out_dir={run_dir / 'fewshot' / label}", "progress=false",
    ]))
    device = torch.device("cpu")
    data = load_evaluation_data(config.data, config.episodes.seed, False, device).episode_data(device)
    return tuple(FewshotEvaluator(config.episodes, config.learner, config.sweep, data, device,
                                  StatisticsConfig(source=source), config.set_invariance)
                 for source in ("running", "reference"))


def _result(row: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and interval in percent, and the invariance a readout learned or chose."""
    invariance = row.get("learned_i") or row.get("chosen_i")
    return {"accuracy": 100 * row["accuracy"], "ci95": 100 * row["ci95"],
            **({"invariance": invariance} if invariance else {})}


READOUT_NAMES = {"learned i": "learned i", "i = all": "i = all, reference"}


def read_out(run_dir: Path, eval_root: Path, out: Path, label: str, jointly_only: bool = False) -> dict[str, Any]:
    """Accuracy (%) and 95 % interval of each readout of one run on one task (``jointly_only``: just the set-wide
    invariance learned jointly on validation, for extending a recorded row)."""
    running, reference = _evaluators(run_dir, eval_root, out, label)
    model = load_encoder(run_dir, running.device)
    if not model.amortised:
        return {} if jointly_only else {"plain": _result(evaluate_encoder(running, model, [], "baseline")[0])}
    if jointly_only:
        row = jointly_row(reference, model)
        return {JOINTLY_READOUT: {**_result(row), "trace": row["set_invariance"]}}
    rows = {READOUT_NAMES.get(row["readout"], row["readout"]): _result(row)
            for row in evaluate_encoder(reference, model, ["all"], "amortised", selected=["learned", "jointly"])}
    all_on = model.space.all_on()
    row = running.evaluate(FrozenFeatures(running.features(model, all_on)), all_on)
    rows["i = all, running"] = {"accuracy": 100 * row["accuracy"], "ci95": 100 * row["ci95"]}
    return rows


def floor(eval_root: Path, out: Path, label: str) -> dict[str, float]:
    """The no-learning floor of one task: MFCC statistics, nearest class centroid, through the same test episodes."""
    config = parse_fewshot_config(apply_overrides(load_yaml(CONFIGS / "demo_fewshot.yaml"), [
        f"data.root={eval_root}", f"data.label={label}", f"data.cache_dir={out / 'cache' / 'fewshot'}",
        "progress=false"]))
    device = torch.device("cpu")
    data = load_evaluation_data(config.data, config.episodes.seed, False, device)
    evaluator = FewshotEvaluator(config.episodes, config.learner, config.sweep, data.episode_data(device), device)
    row = floor_row(evaluator, mfcc_table(data.logmels), FLOOR_READOUT)
    return {"accuracy": 100 * row["accuracy"], "ci95": 100 * row["ci95"]}


COLUMNS = ("learned i", "i = all, running", "i = all, reference", "i = learned on validation", JOINTLY_READOUT)


def _cell(result: dict[str, float] | None) -> str:
    return "–" if result is None else f"{result['accuracy']:.1f} ± {result['ci95']:.1f}"


def render_table(record: dict[str, Any]) -> str:
    """The record's rows as a Markdown table: one row per (variant, seed), both tasks' readouts side by side."""
    short = {"family": "timbre", "midi_note": "pitch"}
    names = {"learned i": "learned i", "i = all, running": "all, running", "i = all, reference": "all, reference",
             "i = learned on validation": "on val", JOINTLY_READOUT: "jointly"}
    header = ["variant", "seed", *(f"{short[t]}: {names[c]}" for t in TASKS for c in COLUMNS),
              *(f"{short[t]}: plain" for t in TASKS), "pitch_shift learned (timbre, pitch)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blank = ["" for _ in TASKS for _ in COLUMNS]
    for row in sorted(record["rows"], key=lambda r: (r["variant"] != "base", r["variant"], r["seed"])):
        tasks = row["tasks"]
        if "plain" in tasks[next(iter(TASKS))]:
            cells = blank + [_cell(tasks[t]["plain"]) for t in TASKS] + [""]
        else:
            cells = [_cell(tasks[t].get(c)) for t in TASKS for c in COLUMNS] + ["" for _ in TASKS]
            cells.append("; ".join(
                f"{how} " + ", ".join(f"{100 * tasks[t][key]['invariance'][0]:.0f} %" for t in TASKS)
                for how, key in (("per episode", "learned i"), ("jointly", JOINTLY_READOUT)) if all(key in tasks[t] for t in TASKS)))
        lines.append("| " + " | ".join([row["variant"], str(row["seed"]), *cells]) + " |")
    floor = record.get("floor")
    if floor:
        cells = blank + [_cell(floor[t]) for t in TASKS] + [""]
        lines.append("| " + " | ".join(["MFCC floor (no learning)", "–", *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON record")
    parser.add_argument("--work", type=Path, default=Path("runs/pretraining_ablations"))
    parser.add_argument("--variants", nargs="+", default=["base", "simclr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--table", action="store_true", help="only print the Markdown table of --out")
    parser.add_argument("--extend", action="store_true",
                        help="add the set-wide invariance learned jointly to recorded rows that lack it")
    args = parser.parse_args(argv)
    if args.table:
        print(render_table(json.loads(args.out.read_text())))
        return 0
    work = args.work
    data_root = generate_synthetic(work / "data", num_clips=DEMO_CLIPS, seed=0)
    eval_root = generate_synthetic(work / "eval_data", num_clips=EVAL_CLIPS, seed=1, num_eval_clips=0)
    record: dict[str, Any] = {"benchmark": "pretraining_ablations", "commit": commit(),
                              "machine": machine_info(torch.device("cpu")),
                              "command": command_line(__file__, argv),
                              "config": {"base": "configs/audio/demo.yaml", "steps": args.steps, "batch": args.batch,
                                         "fewshot": "configs/audio/demo_fewshot.yaml"},
                              "seeds": args.seeds, "rows": []}
    if args.out.is_file():  # rows of earlier invocations keep the commit they ran at
        earlier = json.loads(args.out.read_text())
        record["rows"] = [{"commit": earlier.get("commit"), **row} for row in earlier.get("rows", [])]
    record["floor"] = {label: floor(eval_root, work, label) for label in TASKS}
    if args.extend:
        for row in record["rows"]:
            run_dir = run_directory(work, row["variant"], row["seed"])
            for label, task in row["tasks"].items():
                if "plain" not in task and JOINTLY_READOUT not in task:
                    task.update(read_out(run_dir, eval_root, work, label, jointly_only=True))
                    task[JOINTLY_READOUT]["commit"] = record["commit"]
                    print(json.dumps({"variant": row["variant"], "seed": row["seed"], label: task[JOINTLY_READOUT]}), flush=True)
                    args.out.write_text(json.dumps(record, indent=2) + "\n")
    done = {(row["variant"], row["seed"]) for row in record["rows"]}
    for variant in args.variants:
        for seed in args.seeds:
            if (variant, seed) in done:
                continue
            started = time.perf_counter()
            run_dir = pretrain(work, variant, seed, args.steps, args.batch, data_root)
            pretrained = time.perf_counter() - started
            tasks = {label: read_out(run_dir, eval_root, work, label) for label in TASKS}
            row = {"variant": variant, "seed": seed, "commit": record["commit"], "overrides": variant_overrides(variant),
                   "pretrain_seconds": round(pretrained, 1), "tasks": tasks}
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
