"""Run the whole pipeline on the mini benchmark (built by ``build.py``) and write its results table and plots.

1. Cache the FSD50K-layout corpus and pretrain AI-SimCLR (Hyper-ResNet18, amortised over the 7 CLAR augmentations)
   and SimCLR (ResNet18, all augmentations on) with the same budget (steps, batch, crops, optimiser).
2. Few-shot (5-way, 1- and 5-shot) on the ESC-50-layout and NSynth-layout sets with the real MetaAudio readers and
   protocol: per episode a linear head and the episode's own invariance i are learned; hyper-parameters are chosen on
   validation classes, never on the test classes.
3. Measure the amortised encoder's invariances on the corpus' val split, with the learned i of each task beside them.
4. ``results.md`` / ``results.json``: accuracy ± 95% CI per set and shot count, and the learned i per factor in
   percent, as in the paper's audio table; ``training_curves.png``; the few-shot and measurement plots.

Each finished stage is reused when the command is rerun with the same settings (pretraining resumes from its last
checkpoint; a few-shot run whose ``results.json`` holds the same configuration is not redone).

    benchmarks/minibench/run [configs/minibench/cpu.yaml] [key=value ...]
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aiaudio.config import ConfigError, apply_overrides, load_yaml, to_dict  # noqa: E402
from aiaudio.engine.files import atomic_write_text  # noqa: E402
from aiaudio.engine.metrics import read_metrics  # noqa: E402
from aiaudio.eval.fewshot import JOINTLY_READOUT  # noqa: E402
from aiaudio.fewshot import parse_fewshot_config, run_fewshot  # noqa: E402
from aiaudio.measure import parse_measure_config, run_measure  # noqa: E402
from aiaudio.pretrain import parse_config, run_cache, run_pretrain  # noqa: E402
from benchmarks.pipeline import repo_path, reused_report, run_main  # noqa: E402

LOG = logging.getLogger("minibench.run")
MODELS: tuple[str, ...] = ("ai_simclr", "simclr")
#: Short column names for the CLAR factors, in the paper's order.
FACTOR_ABBREVIATIONS = {"pitch_shift": "PS", "fade_in": "FI", "fade_out": "FO", "noise": "NI", "time_mask": "TM",
                        "time_shift": "TS", "time_stretch": "TSt"}
SET_TITLES = {"esc50": "sound events (megaglest, ESC-50 layout)", "nsynth": "instruments (TimGM6mb, NSynth layout)"}


@dataclass
class PretrainStage:
    ai_simclr: str = "configs/audio/fsd50k_ai_simclr_resnet18.yaml"
    simclr: str = "configs/audio/fsd50k_simclr_resnet18.yaml"
    overrides: list[str] = field(default_factory=list)


@dataclass
class FewshotStage:
    sets: dict[str, str] = field(default_factory=lambda: {"esc50": "configs/audio/metaaudio_esc50.yaml",
                                                          "nsynth": "configs/audio/metaaudio_nsynth.yaml"})
    shots: list[int] = field(default_factory=lambda: [1, 5])
    overrides: list[str] = field(default_factory=list)


@dataclass
class MeasureStage:
    config: str = "configs/audio/measure.yaml"
    overrides: list[str] = field(default_factory=list)


@dataclass
class MinibenchConfig:
    data_dir: str = "data/minibench"
    out_dir: str = "runs/minibench"
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    fewshot: FewshotStage = field(default_factory=FewshotStage)
    measure: MeasureStage = field(default_factory=MeasureStage)


def pretrain(config: MinibenchConfig, out: Path, data: Path) -> dict[str, dict[str, Any]]:
    """Cache the corpus and pretrain both models (resuming finished or interrupted runs)."""
    runs = {}
    for name in MODELS:
        raw = load_yaml(repo_path(getattr(config.pretrain, name)))
        run_config = parse_config(apply_overrides(raw, [
            f"data.root={data / 'fsd50k'}", f"data.cache_dir={out / 'cache' / 'pretrain'}", f"run_dir={out / name}",
            *config.pretrain.overrides,
        ]))
        run_cache(run_config, progress=False)
        started = time.perf_counter()
        summary = run_pretrain(run_config)
        runs[name] = {"summary": summary, "seconds": time.perf_counter() - started, "config": to_dict(run_config)}
        LOG.info("pretrained %s: %s", name, summary)
    return runs


def fewshot(
    config: MinibenchConfig, out: Path, data: Path, step: int | None = None, extra: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Few-shot runs for every set and shot count; a run already done with the same configuration is reused.

    ``step``: read out both models' checkpoints after that many pretraining steps (in ``curves/step_N``) instead of
    the final ones (in ``fewshot``); ``extra``: overrides applied after the stage's own."""
    reports = {}
    models = [out / name for name in MODELS]
    where = out / "fewshot"
    if step is not None:
        models = [model / "checkpoints" / f"step_{step:08d}" for model in models]
        where = out / "curves" / f"step_{step}"
    for set_name, set_config in config.fewshot.sets.items():
        for shots in config.fewshot.shots:
            key = f"{set_name}-{shots}shot"
            run_config = parse_fewshot_config(apply_overrides(load_yaml(repo_path(set_config)), [
                f"checkpoint={models[0]}", f"baseline={models[1]}", f"data.root={data / set_name}",
                f"data.cache_dir={out / 'cache' / 'fewshot'}", f"out_dir={where / key}",
                f"episodes.shots={shots}", "progress=false", *config.fewshot.overrides, *extra,
            ]))
            reports[key] = reused_report(where / key / "results.json", to_dict(run_config),
                                         lambda c=run_config: run_fewshot(c), f"few-shot {key}")
    return reports


def measure(config: MinibenchConfig, out: Path, data: Path, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    results = [str(out / "fewshot" / key / "results.json") for key in reports]
    return run_measure(parse_measure_config(apply_overrides(load_yaml(repo_path(config.measure.config)), [
        f"checkpoint={out / 'ai_simclr'}", f"data.root={data / 'fsd50k'}", "data.split=val",
        f"data.cache_dir={out / 'cache' / 'measure'}", f"out_dir={out / 'measure'}",
        "fewshot_results=[" + ",".join(results) + "]", *config.measure.overrides,
    ])))


def _row(report: dict[str, Any], model: str, prefix: str) -> dict[str, Any]:
    return next(row for row in report["rows"] if row["model"] == model and row["readout"].startswith(prefix))


def _accuracy(row: dict[str, Any]) -> str:
    return f"{100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}"


def _every_report(reports: dict[str, dict[str, Any]], model: str, prefix: str = "") -> bool:
    """Whether every report has a row of ``model`` whose readout starts with ``prefix``."""
    return all(any(row["model"] == model and row["readout"].startswith(prefix) for row in r["rows"])
               for r in reports.values())


def results_table(reports: dict[str, dict[str, Any]]) -> str:
    """Accuracy ± 95% CI (%) per set and shot count, and the mean learned i per factor (%), as a Markdown table;
    with the set-wide invariance learned jointly on validation (``selected: [jointly]``) and the no-learning MFCC
    floor when the runs have them."""
    factors = next(iter(reports.values()))["factors"]
    jointly, floor = _every_report(reports, "amortised", JOINTLY_READOUT), _every_report(reports, "floor")
    header = ["set", "shots", "SimCLR", "AI-SimCLR, learned i", "AI-SimCLR, i = all",
              *(["AI-SimCLR, i learned jointly on validation"] if jointly else []),
              *(["MFCC floor (no learning)"] if floor else []),
              *(FACTOR_ABBREVIATIONS.get(name, name) for name in factors)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, report in reports.items():
        learned = _row(report, "amortised", "learned i")
        cells = [report["config"]["data"]["name"], str(report["config"]["episodes"]["shots"]),
                 _accuracy(_row(report, "baseline", "linear")), _accuracy(learned),
                 _accuracy(_row(report, "amortised", "i = all")),
                 *([_accuracy(_row(report, "amortised", JOINTLY_READOUT))] if jointly else []),
                 *([_accuracy(_row(report, "floor", ""))] if floor else []),
                 *(f"{100 * v:.0f}" for v in learned["learned_i"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jointly_table(reports: dict[str, dict[str, Any]]) -> str | None:
    """The invariance learned jointly on each set's validation episodes, per factor in %, as a Markdown table (None
    when the runs did not learn one)."""
    if not _every_report(reports, "amortised", JOINTLY_READOUT):
        return None
    factors = next(iter(reports.values()))["factors"]
    header = ["set", "shots", *(FACTOR_ABBREVIATIONS.get(name, name) for name in factors)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports.values():
        chosen = _row(report, "amortised", JOINTLY_READOUT)["chosen_i"]
        cells = [report["config"]["data"]["name"], str(report["config"]["episodes"]["shots"]),
                 *(f"{100 * v:.0f}" for v in chosen)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curves(out: Path, path: Path) -> Path:
    """Contrastive loss against step for both models (the AI-SimCLR loss mixes descriptors, one per step)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, label in zip(MODELS, ("AI-SimCLR (Hyper-ResNet18)", "SimCLR (ResNet18)")):
        records = [r for r in read_metrics(out / name) if "loss" in r and "step" in r]
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("Mini benchmark pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(out: Path, config: MinibenchConfig, runs: dict, reports: dict, measured: dict, seconds: dict) -> str:
    e = next(iter(reports.values()))["config"]["episodes"]
    table = results_table(reports)
    curves = training_curves(out, out / "training_curves.png")
    pretrain_lines = []
    for name, run in runs.items():
        records = [r for r in read_metrics(out / name) if "loss" in r]
        model = run["config"]["model"]
        trainer = run["config"]["trainer"]
        pretrain_lines.append(
            f"- {name}: {model['encoder']} width {model['width']}, {trainer['steps']} steps of {trainer['batch_size']} "
            f"{run['config']['data']['crop_seconds']} s crops, loss {records[0]['loss']:.2f} -> {records[-1]['loss']:.2f}")
    text = "\n".join([
        "# Mini benchmark results",
        "",
        f"5-way few-shot, {e['queries']} queries per class, {e['test_episodes']} test episodes on test classes "
        "(hyper-parameters chosen on validation classes); accuracy % ± 95% CI; learned i: mean over test episodes, %; "
        "i learned jointly on validation: one invariance per set, learned on the validation episodes' queries.",
        "",
        table,
        "",
        *(["Invariance learned jointly on each set's validation episodes (%):", "", jointly, ""]
          if (jointly := jointly_table(reports)) else []),
        "Pretraining:",
        *pretrain_lines,
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        f"Plots: {curves.name}, fewshot/*/learned_invariance.png, {Path(measured['out_dir']).name}/ (radar charts and "
        "the invariance table).",
        "",
    ])
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps({
        "config": to_dict(config), "seconds": seconds, "pretrain": runs,
        "fewshot": {key: {"rows": r["rows"], "factors": r["factors"], "seconds": r["seconds"]} for key, r in reports.items()},
        "measure_dir": measured["out_dir"],
    }, indent=2, default=str))
    return text


def run(config: MinibenchConfig) -> str:
    out, data = repo_path(config.out_dir), repo_path(config.data_dir)
    missing = [name for name in ("fsd50k", *config.fewshot.sets) if not (data / name / "complete.json").is_file()]
    if missing:
        raise ConfigError(f"{data} lacks the built set(s) {', '.join(missing)}: run benchmarks/minibench/build "
                          f"--out {data} first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(to_dict(config), indent=2))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    runs = pretrain(config, out, data)
    seconds["pretrain"] = time.perf_counter() - started
    reports = fewshot(config, out, data)
    seconds["fewshot"] = time.perf_counter() - started - seconds["pretrain"]
    measured = measure(config, out, data, reports)
    seconds["measure"] = time.perf_counter() - started - seconds["pretrain"] - seconds["fewshot"]
    seconds["total"] = time.perf_counter() - started
    return write_results(out, config, runs, reports, measured, seconds)


def main(argv: list[str] | None = None) -> int:
    return run_main(MinibenchConfig, run, "configs/minibench/cpu.yaml", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
