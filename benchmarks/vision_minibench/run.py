"""Run the whole image pipeline on the real-image mini benchmark (built by ``build.py``) and write its table and plots.

1. Pretrain each listed pair on the unlabelled ``pool`` with the same budget (steps, batch, image size, optimiser):
   AI-SimCLR (Hyper-ResNet50, amortised over the Spatial / Appearance groups) and SimCLR (ResNet50, every
   augmentation on), AI-MoCo-v2 (one queue and head per descriptor) and MoCo-v2, and (``pairs`` naming
   ``ai_mocov3``) AI-MoCo-v3 with a Prompt-ViT and MoCo-v3 with its plain ViT twin.
2. ``aivision linear`` on every many-shot set (Fashion-MNIST in the CIFAR-10 layout, landscape scenes and materials in
   the DTD layout, clip-art in the Caltech-101 layout: accuracy; the pasted-stamp landmarks in the CelebA layout:
   R², and low-shot R² on fractions of its training images): each amortised model with its learned invariance and at
   fixed descriptors, each plain model as it is; hyper-parameters chosen on a validation split of the training images.
3. ``aivision fewshot`` on the Wesnoth units (class-disjoint splits): 5-way 1- and 5-shot with a per-episode learned
   invariance, each amortised model beside its plain twin.
4. ``aivision measure`` on the scene photos for each amortised model, with the learned invariances of every task.
5. ``results.md`` / ``results.json``: the paper's Table 1 layout per method pair (score per set: plain twin, learned
   i, fixed descriptors, and the learned [spatial, appearance]); ``training_curves.png``.

Every stage is reused when the command is rerun with the same settings (pretraining resumes from its last checkpoint;
a readout or few-shot run whose ``results.json`` holds the same configuration is not redone).

    benchmarks/vision_minibench/run [configs/vision_minibench/cpu.yaml] [key=value ...]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aiaudio.config import ConfigError, apply_overrides, load_yaml, to_dict  # noqa: E402
from aiaudio.engine.files import atomic_write_text  # noqa: E402
from aiaudio.engine.metrics import read_metrics  # noqa: E402
from aivision.fewshot import parse_fewshot_config, run_fewshot  # noqa: E402
from aivision.linear import parse_linear_config, run_linear  # noqa: E402
from aivision.measure import parse_measure_config, run_measure  # noqa: E402
from aivision.pretraining import parse_config, run_pretrain  # noqa: E402
from benchmarks.machine import commit, machine_info  # noqa: E402
from benchmarks.pipeline import REPO, repo_path, reused_report, run_main  # noqa: E402

LOG = logging.getLogger("vision_minibench.run")
#: Method pairs: (method, amortised model, plain twin); the amortised model's name is the plain one's with "ai_".
PAIRS: tuple[tuple[str, str, str], ...] = (("SimCLR", "ai_simclr", "simclr"), ("MoCo-v2", "ai_mocov2", "mocov2"),
                                           ("MoCo-v3", "ai_mocov3", "mocov3"))
#: Many-shot sets: the built folder, what it is, and how ``aivision linear`` reads it.
SETS: dict[str, tuple[str, list[str]]] = {
    "fashion_cifar": ("Fashion-MNIST (CIFAR-10 layout)", ["data.format=official", "data.official=cifar10"]),
    "scenes": ("landscape scenes (DTD layout)", ["data.format=official", "data.official=dtd"]),
    "materials": ("materials (DTD layout)", ["data.format=official", "data.official=dtd"]),
    "clipart": ("clip-art (Caltech-101 layout)", ["data.format=official", "data.official=caltech101"]),
    "landmarks": ("stamp landmarks (CelebA layout)",
                  ["data.format=official", "data.official=celeba", "data.task=regression"]),
}
FIXED_COLUMNS = (("all", "i = all"), ("spatial=1,appearance=0", "i = S"), ("spatial=0,appearance=1", "i = A"))
#: Few-shot readouts whose invariance is chosen once on validation episodes (``selected``): column, row prefix.
SELECTED_COLUMNS = (("i learned on val", "i = learned on validation"), ("best i on val", "i = best on validation"))


@dataclass
class PretrainStage:
    """The four pretraining configs, the overrides all share (the budget) and each one's own."""

    configs: dict[str, str] = field(default_factory=lambda: {
        "ai_simclr": "configs/vision/imagenet100_ai_simclr_hyper_resnet50.yaml",
        "simclr": "configs/vision/imagenet100_simclr_resnet50.yaml",
        "ai_mocov2": "configs/vision/imagenet100_ai_mocov2_hyper_resnet50.yaml",
        "mocov2": "configs/vision/imagenet100_mocov2_resnet50.yaml",
        "ai_mocov3": "configs/vision/imagenet_ai_mocov3_prompt_vit.yaml",
        "mocov3": "configs/vision/imagenet_mocov3_vit.yaml",
    })
    overrides: list[str] = field(default_factory=list)
    model_overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class LinearStage:
    config: str = "configs/vision/linear_example.yaml"
    sets: list[str] = field(default_factory=lambda: list(SETS))
    overrides: list[str] = field(default_factory=list)
    set_overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FewshotStage:
    config: str = "configs/vision/fewshot_example.yaml"
    set: str = "units"
    shots: list[int] = field(default_factory=lambda: [1, 5])
    overrides: list[str] = field(default_factory=list)


@dataclass
class MeasureStage:
    config: str = "configs/vision/measure.yaml"
    set: str = "scenes"
    overrides: list[str] = field(default_factory=list)


@dataclass
class VisionMinibenchConfig:
    data_dir: str = "data/vision_minibench"
    out_dir: str = "runs/vision_minibench"
    pairs: list[str] = field(default_factory=lambda: [name for _, name, _ in PAIRS])
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    linear: LinearStage = field(default_factory=LinearStage)
    fewshot: FewshotStage = field(default_factory=FewshotStage)
    measure: MeasureStage = field(default_factory=MeasureStage)

    def __post_init__(self) -> None:
        known = [name for _, name, _ in PAIRS]
        if not self.pairs or any(name not in known for name in self.pairs):
            raise ValueError(f"pairs lists amortised models of {known}, got {self.pairs}")
        unknown = [name for name in self.linear.sets if name not in SETS]
        if unknown:
            raise ValueError(f"linear.sets: unknown set(s) {unknown}; known: {list(SETS)}")

    def models(self) -> list[str]:
        """Every model to pretrain: each listed amortised model and its plain twin."""
        return [model for _, ai, plain in PAIRS if ai in self.pairs for model in (ai, plain)]


def pretrain(config: VisionMinibenchConfig, out: Path, data: Path) -> dict[str, dict[str, Any]]:
    """Pretrain every model on the pool (resuming finished or interrupted runs)."""
    runs = {}
    for name in config.models():
        run_config = parse_config(apply_overrides(load_yaml(repo_path(config.pretrain.configs[name])), [
            f"data.root={data / 'pool'}", f"run_dir={out / name}", *config.pretrain.overrides,
            *config.pretrain.model_overrides.get(name, []),
        ]))
        started = time.perf_counter()
        summary = run_pretrain(run_config)
        runs[name] = {"summary": summary, "seconds": time.perf_counter() - started, "config": to_dict(run_config)}
        LOG.info("pretrained %s in %.0f s", name, runs[name]["seconds"])
    return runs


def linear(config: VisionMinibenchConfig, out: Path, data: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``aivision linear`` for every set and model: reports[set][model]."""
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for set_name in config.linear.sets:
        for model in config.models():
            folder = out / "linear" / set_name / model
            run_config = parse_linear_config(apply_overrides(load_yaml(repo_path(config.linear.config)), [
                f"checkpoint={out / model}", f"data.root={data / set_name}", f"out_dir={folder}", *SETS[set_name][1],
                "fixed=[" + ",".join(f'"{text}"' for text, _ in FIXED_COLUMNS) + "]", *config.linear.overrides,
                *config.linear.set_overrides.get(set_name, []),
            ]))
            reports.setdefault(set_name, {})[model] = reused_report(
                folder / "results.json", to_dict(run_config), lambda c=run_config: run_linear(c), f"linear {set_name} {model}")
    return reports


def fewshot(config: VisionMinibenchConfig, out: Path, data: Path) -> dict[str, dict[str, Any]]:
    """``aivision fewshot`` for every pair and shot count: reports["<ai model>-<K>shot"]."""
    reports = {}
    for _, ai, plain in PAIRS:
        if ai not in config.pairs:
            continue
        for shots in config.fewshot.shots:
            key = f"{ai}-{shots}shot"
            folder = out / "fewshot" / key
            run_config = parse_fewshot_config(apply_overrides(load_yaml(repo_path(config.fewshot.config)), [
                f"checkpoint={out / ai}", f"baseline={out / plain}", f"data.root={data / config.fewshot.set}",
                f"out_dir={folder}", f"episodes.shots={shots}",
                "fixed=[" + ",".join(f'"{text}"' for text, _ in FIXED_COLUMNS) + "]", *config.fewshot.overrides,
            ]))
            reports[key] = reused_report(folder / "results.json", to_dict(run_config), lambda c=run_config: run_fewshot(c),
                                   f"few-shot {key}")
    return reports


def measure(config: VisionMinibenchConfig, out: Path, data: Path, linear_reports: dict, fewshot_reports: dict
            ) -> dict[str, dict[str, Any]]:
    """``aivision measure`` of each amortised model on the measurement set, with every task's learned invariance."""
    measured = {}
    for ai in config.pairs:
        learned = [str(out / "linear" / s / ai / "results.json") for s in linear_reports]
        learned += [str(out / "fewshot" / key / "results.json") for key in fewshot_reports if key.startswith(f"{ai}-")]
        measured[ai] = run_measure(parse_measure_config(apply_overrides(load_yaml(repo_path(config.measure.config)), [
            f"checkpoint={out / ai}", f"data.root={data / config.measure.set}", f"out_dir={out / 'measure' / ai}",
            "learned_results=[" + ",".join(learned) + "]", *config.measure.overrides,
        ])))
    return measured


def _score(value: float, ci95: float | None, percent: bool) -> str:
    scale = 100 if percent else 1
    text = f"{scale * value:.1f}" if percent else f"{value:.3f}"
    return text if ci95 is None else f"{text} ± {scale * ci95:.1f}" if percent else f"{text} ± {ci95:.3f}"


def table_rows(ai: str, plain: str, linear_reports: dict, fewshot_reports: dict) -> list[dict[str, Any]]:
    """One row per task for a method pair: the plain twin, learned i, each fixed descriptor and the learned i."""
    rows = []
    for set_name, by_model in linear_reports.items():
        amortised, baseline = by_model[ai], by_model[plain]
        percent = amortised["metric"] == "accuracy"
        readouts = amortised["readouts"]
        rows.append({
            "task": SETS[set_name][0], "metric": amortised["metric"], "set": set_name,
            "plain": baseline["readouts"]["plain"]["test_score"], "learned": readouts["learned"]["test_score"],
            **{label: readouts[f"fixed:{text}"]["test_score"] for text, label in FIXED_COLUMNS},
            "learned_i": list(readouts["learned"]["descriptor"].values()), "percent": percent,
        })
        for fraction, result in amortised.get("lowshot", {}).get("learned", {}).items():
            lowshot = amortised["lowshot"]
            rows.append({
                "task": f"{SETS[set_name][0]}, low-shot s = {fraction}", "metric": amortised["metric"],
                "set": f"{set_name}@{fraction}", "plain": baseline["lowshot"]["plain"][fraction]["test_score"],
                "plain_ci95": baseline["lowshot"]["plain"][fraction]["ci95"], "learned": result["test_score"],
                "learned_ci95": result["ci95"],
                **{label: lowshot[f"fixed:{text}"][fraction]["test_score"] for text, label in FIXED_COLUMNS},
                "learned_i": None, "percent": percent,
            })
    for key, report in fewshot_reports.items():
        if not key.startswith(f"{ai}-"):
            continue
        by_readout = {(row["model"], row["readout"]): row for row in report["rows"]}
        learned = by_readout[("amortised", "learned i")]
        fixed_names = {"all": "i = all", "spatial=1,appearance=0": "i = spatial", "spatial=0,appearance=1": "i = appearance"}
        chosen = {label: next((row for (model, readout), row in by_readout.items()
                               if model == "amortised" and readout.startswith(prefix)), None)
                  for label, prefix in SELECTED_COLUMNS}
        rows.append({
            **{label: None if row is None else row["accuracy"] for label, row in chosen.items()},
            "chosen_i": {label: row["chosen_i"] for label, row in chosen.items() if row is not None},
            "task": f"Wesnoth units, 5-way {report['config']['episodes']['shots']}-shot", "metric": "accuracy",
            "set": key, "plain": by_readout[("baseline", "linear")]["accuracy"],
            "plain_ci95": by_readout[("baseline", "linear")]["ci95"], "learned": learned["accuracy"],
            "learned_ci95": learned["ci95"],
            **{label: by_readout[("amortised", fixed_names[text])]["accuracy"] for text, label in FIXED_COLUMNS},
            "learned_i": learned["learned_i"], "percent": True,
        })
    return rows


def results_table(method: str, rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout for one method pair, as Markdown."""
    header = ["task", method, f"AI-{method}, learned i", *(f"AI-{method}, {label}" for _, label in FIXED_COLUMNS),
              *(f"AI-{method}, {label}" for label, _ in SELECTED_COLUMNS), "learned S, A (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        unit = "accuracy %" if row["percent"] else "R²"
        cells = [f"{row['task']} ({unit})", _score(row["plain"], row.get("plain_ci95"), row["percent"]),
                 _score(row["learned"], row.get("learned_ci95"), row["percent"]),
                 *(_score(row[label], None, row["percent"]) for _, label in FIXED_COLUMNS),
                 *("–" if row.get(label) is None else _score(row[label], None, row["percent"])
                   for label, _ in SELECTED_COLUMNS),
                 "" if row["learned_i"] is None else ", ".join(f"{100 * v:.0f}" for v in row["learned_i"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curves(out: Path, models: list[str], path: Path) -> Path:
    """Contrastive loss against step for every model (the amortised losses mix descriptors, one per step)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in models:
        records = [r for r in read_metrics(out / name) if "loss" in r and "step" in r]
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name,
                linestyle="-" if name.startswith("ai_") else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title("Vision mini benchmark pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path




def write_results(out: Path, config: VisionMinibenchConfig, runs: dict, linear_reports: dict, fewshot_reports: dict,
                  measured: dict, seconds: dict, code: str) -> str:
    tables, rows_by_pair = [], {}
    for method, ai, plain in PAIRS:
        if ai in config.pairs:
            rows_by_pair[ai] = table_rows(ai, plain, linear_reports, fewshot_reports)
            tables += [f"### {method}: {plain} vs {ai}", "", results_table(method, rows_by_pair[ai]), ""]
    curves = training_curves(out, config.models(), out / "training_curves.png")
    pretrain_lines = []
    for name, run in runs.items():
        records = [r for r in read_metrics(out / name) if "loss" in r]
        model, trainer = run["config"]["model"], run["config"]["trainer"]
        pretrain_lines.append(
            f"- {name}: {model['encoder']} width {model['width']}, {trainer['steps']} steps of {trainer['batch_size']} "
            f"at {run['config']['input']['size']} px, loss {records[0]['loss']:.2f} -> {records[-1]['loss']:.2f}, "
            f"{run['seconds']:.0f} s")
    episodes = next(iter(fewshot_reports.values()))["config"]["episodes"] if fewshot_reports else None
    text = "\n".join([
        "# Vision mini benchmark results",
        "",
        "Scores on the test split: accuracy % (few-shot and low-shot: ± 95% CI over episodes or subsets) or R²; "
        "hyper-parameters chosen on validation data, never on the test split. Learned S, A: the learned invariance "
        "(mean over episodes for few-shot), %.",
        *([f"Few-shot: 5-way, {episodes['queries']} queries per class, {episodes['test_episodes']} test episodes on "
           "test classes."] if episodes else []),
        "",
        *tables,
        "Pretraining:",
        *pretrain_lines,
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        f"Plots: {curves.name}, fewshot/*/learned_invariance.png, measure/*/ (invariance tables, radar charts and the "
        "learned invariance per task).",
        "",
    ])
    atomic_write_text(out / "results.md", text)
    seeds = {"pretraining": sorted({run["config"]["trainer"]["seed"] for run in runs.values()}),
             "splits": sorted({r["config"]["data"]["seed"] for by_model in linear_reports.values()
                               for r in by_model.values()}),
             "episodes": sorted({r["config"]["episodes"]["seed"] for r in fewshot_reports.values()})}
    atomic_write_text(out / "results.json", json.dumps({
        "benchmark": "vision_minibench", "commit": code, "machine": machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "seeds": seeds, "config": to_dict(config), "seconds": seconds, "rows": rows_by_pair,
        "pretrain": {name: {"seconds": run["seconds"], "config": run["config"]} for name, run in runs.items()},
        "measure": {ai: m["table"] for ai, m in measured.items()},
    }, indent=2, default=str))
    return text


def run(config: VisionMinibenchConfig) -> str:
    out, data = repo_path(config.out_dir), repo_path(config.data_dir)
    needed = {"pool", *config.linear.sets, config.fewshot.set, config.measure.set}
    missing = sorted(name for name in needed if not (data / name / "complete.json").is_file())
    if missing:
        raise ConfigError(f"{data} lacks the built set(s) {', '.join(missing)}: run benchmarks/vision_minibench/build "
                          f"--out {data} first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(to_dict(config), indent=2))
    seconds: dict[str, float] = {}
    code = commit()  # the code that runs (a commit made while it runs is not it)
    started = time.perf_counter()
    runs = pretrain(config, out, data)
    seconds["pretrain"] = time.perf_counter() - started
    linear_reports = linear(config, out, data)
    seconds["linear"] = time.perf_counter() - started - sum(seconds.values())
    fewshot_reports = fewshot(config, out, data)
    seconds["fewshot"] = time.perf_counter() - started - sum(seconds.values())
    measured = measure(config, out, data, linear_reports, fewshot_reports)
    seconds["measure"] = time.perf_counter() - started - sum(seconds.values())
    seconds["total"] = time.perf_counter() - started
    return write_results(out, config, runs, linear_reports, fewshot_reports, measured, seconds, code)


def main(argv: list[str] | None = None) -> int:
    return run_main(VisionMinibenchConfig, run, "configs/vision_minibench/cpu.yaml", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
