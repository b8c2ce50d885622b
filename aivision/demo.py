"""``aivision demo``: the vision side's story on built-in synthetic shapes, on a CPU, in minutes.

1. Write a synthetic pretraining set and a separate evaluation set (:mod:`aivision.synthetic`), and pretrain an
   amortised SimCLR Hyper-ResNet18 over the two groups (Spatial, Appearance) and a plain SimCLR ResNet18 baseline
   with the same budget.
2. Read out three tasks whose needs conflict, each with a learned invariance, at fixed descriptors and on the baseline:
   the shape (wants appearance invariance), the colour (wants appearance sensitivity) and the position of the shape
   (a regression that wants spatial sensitivity). Print accuracy / R^2 and the learned [spatial, appearance] per task
   (the paper's Table 10 pattern: regression learns lower spatial invariance than classification), and plot it.

The data is synthetic and documented as such: this shows the pipeline working, it is not a benchmark.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiaudio.config import apply_overrides, load_yaml
from aiaudio.engine.metrics import read_metrics
from aiaudio.engine.pretraining import describe_run
from aiaudio.eval.plots import learned_invariance_bars
from aivision.linear import parse_linear_config, run_linear
from aivision.pretraining import parse_config, run_pretrain
from aivision.synthetic import generate_shapes

PRETRAIN_IMAGES = 2000
EVAL_IMAGES = 900
#: task -> (what it is, CSV overrides of the readout data)
TASKS: dict[str, tuple[str, list[str]]] = {
    "shape": ("shape (wants appearance invariance)", ["data.task=classification", "data.label_column=shape"]),
    "colour": ("colour (wants appearance sensitivity)", ["data.task=classification", "data.label_column=colour"]),
    "position": ("position, R^2 (wants spatial sensitivity)", ["data.task=regression", "data.target_columns=[x,y]"]),
}
FIXED = {"all": "i = all", "spatial=1,appearance=0": "i = S", "spatial=0,appearance=1": "i = A"}
BASELINE_OVERRIDES = ["invariance.mode=fixed", "model.encoder=plain_resnet18"]
READOUT_OVERRIDES = [
    "data.format=csv", "data.path_column=path", "data.test_fraction=0.25", "data.val_fraction=0.2", "data.resize=36",
    "learner.epochs=40", "learner.patience=8", "learner.batch_size=128", "sweep.lrs=[0.01,0.1]",
    "sweep.weight_decays=[0.0]", "sweep.invariance_lrs=[0.05]",
]


def run_demo(out: Path, config_dir: Path, overrides: list[str]) -> str:
    """Run the demo under ``out`` and return a printable report."""
    out = Path(out)
    started = time.perf_counter()
    pool = generate_shapes(out / "data", PRETRAIN_IMAGES, size=40, seed=0)
    evaluation = generate_shapes(out / "eval_data", EVAL_IMAGES, size=40, seed=1)
    raw = load_yaml(config_dir / "demo.yaml")
    runs = {}
    for name, extra in (("ai_simclr", []), ("simclr", BASELINE_OVERRIDES)):
        config = parse_config(apply_overrides(raw, [f"data.root={pool}", f"run_dir={out / name}", *extra, *overrides]))
        summary = run_pretrain(config)
        runs[name] = (config, summary, read_metrics(Path(config.run_dir)))
    pretrained = time.perf_counter()
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for task, (_, task_overrides) in TASKS.items():
        reports[task] = {}
        for name, fixed in (("ai_simclr", list(FIXED)), ("simclr", [])):
            config = parse_linear_config(apply_overrides({}, [
                f"checkpoint={out / name}", f"out_dir={out / 'linear' / task / name}", f"data.csv={evaluation / 'factors.csv'}",
                "fixed=[" + ",".join(f'"{text}"' for text in fixed) + "]", *READOUT_OVERRIDES, *task_overrides,
            ]))
            reports[task][name] = run_linear(config)
    learned = {task: [reports[task]["ai_simclr"]["readouts"]["learned"]["descriptor"][f] for f in ("spatial", "appearance")]
               for task in TASKS}
    plot = learned_invariance_bars(learned, ["spatial", "appearance"], out / "learned_invariance.png")
    return format_report(runs, reports, learned, plot, time.perf_counter() - started, pretrained - started)


def format_report(runs: dict, reports: dict, learned: dict, plot: Path, elapsed: float, pretrain_seconds: float) -> str:
    lines = ["aivision demo: amortised invariance learning on built-in synthetic shapes (synthetic data, not a benchmark)", ""]
    lines += [describe_run(name, config.model, config.trainer, summary, records)
              for name, (config, summary, records) in runs.items()]
    columns = ["learned i", *FIXED.values(), "SimCLR"]
    lines += ["", "  linear readout on held-out images: accuracy % (shape, colour) or R^2 x 100 (position)", ""]
    header = f"  {'task':<42}" + "".join(f"{c:>11}" for c in columns) + f"{'learned S, A (%)':>20}"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for task, (title, _) in TASKS.items():
        ours = reports[task]["ai_simclr"]["readouts"]
        scores = [ours["learned"]["test_score"], *(ours[f"fixed:{text}"]["test_score"] for text in FIXED),
                  reports[task]["simclr"]["readouts"]["plain"]["test_score"]]
        spatial, appearance = learned[task]
        lines.append(f"  {title:<42}" + "".join(f"{100 * s:>11.1f}" for s in scores)
                     + f"{f'{100 * spatial:.0f}, {100 * appearance:.0f}':>20}")
    classification = min(learned["shape"][0], learned["colour"][0])
    verdict = "lower" if learned["position"][0] < classification else "NOT lower"
    lines += [
        "",
        f"  learned spatial invariance is {verdict} on the position task ({100 * learned['position'][0]:.0f} %) than on "
        f"both classification tasks ({100 * learned['shape'][0]:.0f} %, {100 * learned['colour'][0]:.0f} %)",
        f"  tables: {plot.parent / 'linear'}/*/*/results.md; plot: {plot}",
        f"  wall time {elapsed:.0f} s (pretraining {pretrain_seconds:.0f} s)",
    ]
    return "\n".join(lines)
