"""``aiaudio fewshot``: N-way K-shot evaluation of frozen encoders with learned invariances, as in the paper.

For a MetaAudio set (or the built-in synthetic data): split the classes, compute the log-mels of the validation and
test classes once, then for each learner choose its hyper-parameters on validation episodes and score it on test
episodes. Learners:

* ``learned i``: the amortised encoder with a linear head and a per-episode descriptor learned on the support set;
* ``i = <descriptor>``: the amortised encoder at a fixed descriptor with the same head (features computed once);
* ``baseline``: a plain encoder (e.g. SimCLR ResNet18) with the same head;
* ``logistic`` / ``ridge`` (optional): scikit-learn readouts on the frozen features at the first fixed descriptor.

Results: a table of accuracy ± 95% CI over test episodes, and the mean learned descriptor per factor in percent,
printed and written to ``out_dir`` (``results.json``, ``results.md``, ``learned_invariance.png``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiaudio.audio.metaaudio import METAAUDIO_SETS, LogMelSet, SegmentPolicy, build_logmel_set, prepare_metaaudio
from aiaudio.audio.synthetic import synthetic_entries
from aiaudio.config import ConfigError, from_dict, to_dict
from aiaudio.encoder import PretrainedEncoder, load_encoder
from aiaudio.engine.runtime import resolve_device
from aiaudio.engine.files import atomic_output, atomic_write_text
from aiaudio.eval.episodes import EpisodeSampler, SegmentPool
from aiaudio.eval.learner import (
    AmortisedFeatures,
    EpisodeEncoder,
    EpisodeResults,
    FrozenFeatures,
    LearnerConfig,
    feature_table,
    run_episodes,
    sklearn_accuracy,
    with_overrides,
)
from aiaudio.eval.plots import learned_invariance_bars
from aiaudio.eval.stats import mean_ci
from aiaudio.invariance import InvarianceSpace
from aiaudio.seeding import generator_for, mix_seed

log = logging.getLogger(__name__)

_VAL_STREAM = 1  # seeding stream of the validation episodes (test episodes use the seed itself)
_CLIP_SPLIT_STREAM = 2


@dataclass
class FewshotDataConfig:
    """The evaluation data.

    ``name``: a MetaAudio set (esc50, nsynth, voxceleb1, fsdkaggle18) in its official layout under ``root``, or
    ``synthetic`` (a folder written by ``aiaudio synth``; ``label`` names the factor that is the class, and since
    validation and test then share their classes, a seeded ``val_fraction`` of the clips is held for validation).
    ``cache_dir``: where log-mels and features are cached (default ``$AIAUDIO_CACHE/fewshot`` or ``~/.cache/aiaudio``).
    """

    name: str = "esc50"
    root: str | None = None
    split_file: str | None = None
    cache_dir: str | None = None
    stats_clips: int | None = 2000
    workers: int | None = None
    label: str = "family"
    val_fraction: float = 0.3
    segment_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in (*METAAUDIO_SETS, "synthetic"):
            raise ValueError(f"data.name must be one of {[*METAAUDIO_SETS, 'synthetic']}, got {self.name!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {self.val_fraction}")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("AIAUDIO_CACHE", Path.home() / ".cache" / "aiaudio")).expanduser() / "fewshot"


@dataclass
class EpisodeConfig:
    ways: int = 5
    shots: int = 1
    queries: int = 1
    test_episodes: int = 10000
    val_episodes: int = 300
    seed: int = 0


@dataclass
class SweepConfig:
    """Hyper-parameter grid, searched on validation episodes for each learner (``invariance_lr`` only with i)."""

    lr: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03])
    invariance_lr: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1])


@dataclass
class FewshotConfig:
    checkpoint: str | None = None
    baseline: str | None = None
    out_dir: str = "runs/fewshot"
    data: FewshotDataConfig = field(default_factory=FewshotDataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    fixed: list[str] = field(default_factory=lambda: ["all"])
    sklearn: bool = False
    device: str = "auto"
    progress: bool = True


def parse_fewshot_config(raw: dict[str, Any]) -> FewshotConfig:
    return from_dict(FewshotConfig, raw)


@dataclass
class EvaluationData:
    """Log-mels of the evaluation clips and which classes and clips validation and test episodes draw from."""

    logmels: LogMelSet
    val_classes: list[int]
    test_classes: list[int]
    val_clips: torch.Tensor | None = None
    test_clips: torch.Tensor | None = None

    @property
    def pool(self) -> SegmentPool:
        return SegmentPool(torch.from_numpy(self.logmels.clip_class), torch.from_numpy(self.logmels.segment_clip))


def load_evaluation_data(config: FewshotDataConfig, seed: int, progress: bool, device: torch.device) -> EvaluationData:
    """Read, split and compute (or reuse) the log-mels of the configured evaluation set."""
    if not config.root:
        raise ConfigError("data.root is not set: give data.root=/path/to/dataset")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root {root} is not a directory")
    cache_dir = config.resolved_cache_dir()
    if config.name != "synthetic":
        data = prepare_metaaudio(
            config.name, root, cache_dir, seed, split_file=config.split_file, stats_clips=config.stats_clips,
            workers=config.workers, progress=progress, device=device,
        )
        val = data.class_indices("val").tolist()
        test = data.class_indices("test").tolist()
        return EvaluationData(data.logmels, val, test)
    entries = synthetic_entries(root, config.label)
    classes = sorted({entry.labels[0] for entry in entries}, key=_natural_key)
    logmels = build_logmel_set(
        entries, classes, classes, cache_dir, SegmentPolicy(config.segment_seconds, variable_length=False),
        name=f"synthetic-{config.label}", seed=seed, stats_clips=config.stats_clips, workers=config.workers,
        progress=progress, device=device,
    )
    generator = generator_for(seed, _CLIP_SPLIT_STREAM)
    val_clips = torch.rand(logmels.num_clips, generator=generator) < config.val_fraction
    everything = list(range(len(logmels.class_names)))
    return EvaluationData(logmels, everything, everything, val_clips, ~val_clips)


def _natural_key(text: str) -> tuple:
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


class _Evaluator:
    """Runs learners on validation and test episodes of one evaluation set."""

    def __init__(self, config: FewshotConfig, data: EvaluationData, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, device
        self.pool = data.pool
        e = config.episodes
        self.val_episodes = EpisodeSampler(
            self.pool, data.val_classes, e.ways, e.shots, e.queries, seed=mix_seed(e.seed, _VAL_STREAM), clips=data.val_clips,
        ).sample(e.val_episodes)
        self.test_episodes = EpisodeSampler(
            self.pool, data.test_classes, e.ways, e.shots, e.queries, seed=e.seed, clips=data.test_clips
        ).sample(e.test_episodes)

    def inputs(self, segments: torch.Tensor) -> torch.Tensor:
        return self.data.logmels.gather(segments.cpu().numpy(), self.device)

    def features(self, model: PretrainedEncoder, descriptor: torch.Tensor | None) -> torch.Tensor:
        """Features of every evaluation segment at one descriptor, cached on disk per (checkpoint, data, i)."""
        name = "plain" if descriptor is None else "-".join(f"{v:g}" for v in descriptor.tolist())
        path = self.data.logmels.directory / "features" / f"{model.fingerprint()}-{name}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path)).to(self.device)
        start = descriptor.to(self.device) if descriptor is not None else None
        table = feature_table(model, self.inputs, len(self.data.logmels), start)
        with atomic_output(path) as tmp:
            np.save(tmp, table.cpu().numpy())
        return table

    def evaluate(self, encoder: EpisodeEncoder, start: torch.Tensor) -> dict[str, Any]:
        """Sweep on validation episodes, then score the best setting on test episodes."""
        sweep = self.config.sweep
        grid = itertools.product(sweep.lr, sweep.invariance_lr if encoder.learns_invariance else [0.0])
        best: tuple[float, LearnerConfig] | None = None
        for lr, invariance_lr in grid:
            candidate = with_overrides(self.config.learner, lr=lr, invariance_lr=invariance_lr)
            score = float(run_episodes(encoder, self.pool, self.val_episodes, candidate, start, self.device).accuracy.mean())
            log.info("validation: lr %g, invariance_lr %g -> accuracy %.4f", lr, invariance_lr, score)
            if best is None or score > best[0]:
                best = (score, candidate)
        assert best is not None
        results = run_episodes(encoder, self.pool, self.test_episodes, best[1], start, self.device)
        return _summary(results, best[0], best[1], encoder.learns_invariance)


def _summary(results: EpisodeResults, val_accuracy: float, config: LearnerConfig, learned: bool) -> dict[str, Any]:
    accuracy = mean_ci(results.accuracy)
    summary: dict[str, Any] = {
        "accuracy": accuracy.mean, "ci95": accuracy.ci95, "episodes": accuracy.n, "val_accuracy": val_accuracy,
        "lr": config.lr, "mean_steps": float(results.steps.float().mean()),
    }
    if learned:
        summary["invariance_lr"] = config.invariance_lr
        summary["learned_i"] = results.descriptors.mean(0).tolist()
        summary["learned_i_std"] = results.descriptors.std(0, correction=0).tolist()
    return summary


def run_fewshot(config: FewshotConfig) -> dict[str, Any]:
    """Evaluate the configured checkpoint(s); returns the results (also written to ``out_dir``)."""
    if not config.checkpoint and not config.baseline:
        raise ConfigError("give checkpoint=RUN_DIR (and/or baseline=RUN_DIR) to evaluate")
    device = resolve_device(config.device)
    data = load_evaluation_data(config.data, config.episodes.seed, config.progress, device)
    evaluator = _Evaluator(config, data, device)
    rows: list[dict[str, Any]] = []
    names: tuple[str, ...] = ()
    if config.checkpoint:
        model = load_encoder(config.checkpoint, device)
        names = model.space.names
        fixed = [model.descriptor(text) for text in config.fixed]
        if model.amortised:
            start = torch.full((model.space.dim,), config.learner.init)
            rows.append({"model": "amortised", "readout": "learned i", **evaluator.evaluate(AmortisedFeatures(model, evaluator.inputs), start)})
        for descriptor in fixed if model.amortised else [None]:
            table = evaluator.features(model, descriptor)
            label = f"i = {descriptor_label(model.space, descriptor)}" if descriptor is not None else "fixed features"
            start = descriptor if descriptor is not None else torch.zeros(model.space.dim)
            rows.append({"model": "amortised" if model.amortised else "plain", "readout": label,
                         "descriptor": None if descriptor is None else descriptor.tolist(),
                         **evaluator.evaluate(FrozenFeatures(table), start)})
        if config.sklearn:
            rows += _sklearn_rows(evaluator, model, fixed[0] if model.amortised and fixed else None, "amortised" if model.amortised else "plain")
    if config.baseline:
        baseline = load_encoder(config.baseline, device)
        table = evaluator.features(baseline, None)
        rows.append({"model": "baseline", "readout": "linear", **evaluator.evaluate(FrozenFeatures(table), torch.zeros(len(names) or 1))})
        if config.sklearn:
            rows += _sklearn_rows(evaluator, baseline, None, "baseline")
    report = {"config": to_dict(config), "factors": list(names), "log_mels": str(data.logmels.directory), "rows": rows}
    write_report(Path(config.out_dir), report)
    return report


def _sklearn_rows(evaluator: _Evaluator, model: PretrainedEncoder, descriptor: torch.Tensor | None, label: str) -> list[dict[str, Any]]:
    table = evaluator.features(model, descriptor)
    rows = []
    for kind in ("logistic", "ridge"):
        accuracy = mean_ci(sklearn_accuracy(table, evaluator.pool, evaluator.test_episodes, kind))
        readout = kind if descriptor is None else f"{kind}, i = {descriptor_label(model.space, descriptor)}"
        rows.append({"model": label, "readout": readout, "accuracy": accuracy.mean, "ci95": accuracy.ci95, "episodes": accuracy.n})
    return rows


def descriptor_label(space: InvarianceSpace, descriptor: torch.Tensor) -> str:
    """"all", "none", the active factors of a binary descriptor joined by '+', or the K numbers."""
    if torch.all(descriptor == 1):
        return "all"
    if torch.all(descriptor == 0):
        return "none"
    if torch.all((descriptor == 0) | (descriptor == 1)):
        return space.name_of(descriptor)
    return ",".join(f"{v:g}" for v in descriptor.tolist())


def format_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table: accuracy ± 95% CI in percent, and the mean learned i per factor."""
    factors = report["factors"]
    header = ["model", "readout", "accuracy (%)", *factors]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        learned = row.get("learned_i")
        cells = [f"{100 * v:.0f}" for v in learned] if learned else ["" for _ in factors]
        accuracy = f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}"
        lines.append("| " + " | ".join([row["model"], row["readout"], accuracy, *cells]) + " |")
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """``results.json``, ``results.md`` and, when i was learned, ``learned_invariance.png`` (bars in percent)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2))
    data = report["config"]["data"]
    title = f"{data['name']} ({data['label']})" if data["name"] == "synthetic" else data["name"]
    episodes = report["config"]["episodes"]
    heading = f"# Few-shot: {title}, {episodes['ways']}-way {episodes['shots']}-shot, {episodes['test_episodes']} test episodes\n\n"
    atomic_write_text(out_dir / "results.md", heading + format_table(report) + "\n")
    learned = {row["readout"]: row["learned_i"] for row in report["rows"] if row.get("learned_i")}
    if learned:
        learned_invariance_bars({title: next(iter(learned.values()))}, report["factors"], out_dir / "learned_invariance.png")
