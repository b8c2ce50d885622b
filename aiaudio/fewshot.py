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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiaudio.audio.data import default_cache_root
from aiaudio.audio.metaaudio import METAAUDIO_SETS, LogMelSet, SegmentPolicy, build_logmel_set, prepare_metaaudio
from aiaudio.audio.mfcc import mfcc_statistics
from aiaudio.audio.synthetic import synthetic_entries
from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.encoder import load_encoder
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.episodes import SegmentPool
from aiaudio.eval.fewshot import (
    EpisodeConfig,
    EpisodeData,
    FewshotEvaluator,
    FewshotRunConfig,
    descriptor_label,
    evaluate_encoder,
    floor_row,
    format_table,
    write_report,
)
from aiaudio.seeding import generator_for

__all__ = [
    "EpisodeConfig", "FewshotConfig", "FewshotDataConfig", "descriptor_label", "format_table", "load_evaluation_data",
    "parse_fewshot_config", "run_fewshot",
]

log = logging.getLogger(__name__)

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
        return default_cache_root() / "fewshot"


@dataclass
class FewshotConfig(FewshotRunConfig):
    """A few-shot run (see :class:`~aiaudio.eval.fewshot.FewshotRunConfig`) on a MetaAudio set or synthetic audio."""

    data: FewshotDataConfig = field(default_factory=FewshotDataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    progress: bool = True
    floor: bool = True  # add the no-learning floor: 20 MFCC means and stds, nearest class centroid


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

    def episode_data(self, device: torch.device) -> EpisodeData:
        """The set as the core's few-shot evaluator sees it (features cached beside the log-mels)."""
        pool = SegmentPool(torch.from_numpy(self.logmels.clip_class), torch.from_numpy(self.logmels.segment_clip))

        def inputs(segments: torch.Tensor) -> torch.Tensor:
            return self.logmels.gather(segments.cpu().numpy(), device)

        return EpisodeData(
            pool, inputs, len(self.logmels), self.val_classes, self.test_classes, self.val_clips, self.test_clips,
            self.logmels.directory / "features",
        )


def load_evaluation_data(config: FewshotDataConfig, seed: int, progress: bool, device: torch.device) -> EvaluationData:
    """Read, split and compute (or reuse) the log-mels of the configured evaluation set."""
    root = require_directory(config.root, "data.root", "dataset")
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


FLOOR_READOUT = "MFCC statistics, nearest centroid"


def mfcc_table(logmels: LogMelSet, batch: int = 512) -> torch.Tensor:
    """MFCC statistics ``[S, 40]`` of every segment of the store (see :mod:`aiaudio.audio.mfcc`)."""
    return torch.cat([mfcc_statistics(logmels.gather(slice(start, min(start + batch, len(logmels)))))
                      for start in range(0, len(logmels), batch)])


def run_fewshot(config: FewshotConfig) -> dict[str, Any]:
    """Evaluate the configured checkpoint(s); returns the results (also written to ``out_dir``)."""
    if not config.checkpoint and not config.baseline:
        raise ConfigError("give checkpoint=RUN_DIR (and/or baseline=RUN_DIR) to evaluate")
    device = resolve_device(config.device)
    data = load_evaluation_data(config.data, config.episodes.seed, config.progress, device)
    evaluator = FewshotEvaluator(config.episodes, config.learner, config.sweep, data.episode_data(device), device,
                                 config.statistics, config.set_invariance)
    rows: list[dict[str, Any]] = []
    names: tuple[str, ...] = ()
    if config.checkpoint:
        model = load_encoder(config.checkpoint, device)
        names = model.space.names
        rows += evaluate_encoder(evaluator, model, config.fixed, "amortised", config.sklearn, config.selected,
                                 config.per_episode)
    if config.baseline:
        rows += evaluate_encoder(evaluator, load_encoder(config.baseline, device), [], "baseline", config.sklearn)
    if config.floor:
        rows.append(floor_row(evaluator, mfcc_table(data.logmels), FLOOR_READOUT))
    report = {"config": to_dict(config), "factors": list(names), "log_mels": str(data.logmels.directory), "rows": rows}
    data_config = config.data
    title = f"{data_config.name} ({data_config.label})" if data_config.name == "synthetic" else data_config.name
    write_report(Path(config.out_dir), report, title)
    return report
