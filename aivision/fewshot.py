"""``aivision fewshot``: N-way K-shot episodes on an image set, with a per-episode learned invariance.

Classes are split class-disjointly: ``root/{train,val,test}/<class>/`` when those folders exist (validation episodes
from ``val``, test episodes from ``test``), else a seeded split of the classes of ``root/<class>/``
(``val_classes`` / ``test_classes`` fractions). The core's evaluator samples seeded episodes, chooses the learner's
settings on validation episodes and scores them on test episodes; an amortised encoder is read out with learned i and
at each fixed descriptor, a baseline with plain features. Both see the very same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.engine.pretrained import PretrainedEncoder, load_encoder
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.episodes import SegmentPool
from aiaudio.eval.fewshot import (
    EpisodeConfig,
    EpisodeData,
    FewshotEvaluator,
    FewshotRunConfig,
    evaluate_encoder,
    write_report,
)
from aiaudio.seeding import generator_for
from aivision.data import ImageEntry, image_folder_entries
from aivision.linear import load_images

_CLASS_SPLIT_STREAM = 3


@dataclass
class FewshotImageDataConfig:
    """The evaluation images (see the module docstring); ``resize`` as in ``aivision linear``."""

    root: str | None = None
    val_classes: float = 0.2
    test_classes: float = 0.4
    resize: int | None = None

    def __post_init__(self) -> None:
        if not (0 < self.val_classes < 1 and 0 < self.test_classes < 1 and self.val_classes + self.test_classes <= 1):
            raise ValueError("data.val_classes and data.test_classes must be fractions in (0, 1) summing to at most 1")


@dataclass
class ImageEpisodeConfig(EpisodeConfig):
    """Episodes as the paper's image tables: 16 queries per class, 2,000 test episodes."""

    queries: int = 16
    test_episodes: int = 2000


@dataclass
class VisionFewshotConfig(FewshotRunConfig):
    """A few-shot run (see :class:`~aiaudio.eval.fewshot.FewshotRunConfig`) on an image set."""

    data: FewshotImageDataConfig = field(default_factory=FewshotImageDataConfig)
    episodes: ImageEpisodeConfig = field(default_factory=ImageEpisodeConfig)


def parse_fewshot_config(raw: dict[str, Any]) -> VisionFewshotConfig:
    config = from_dict(VisionFewshotConfig, raw)
    if not config.checkpoint and not config.baseline:
        raise ConfigError("give checkpoint=RUN_DIR (and/or baseline=RUN_DIR) to evaluate")
    require_directory(config.data.root, "data.root", "image folder")
    return config


def class_split(config: FewshotImageDataConfig, seed: int) -> tuple[list[ImageEntry], list[int], list[int], list[str]]:
    """Every image, the class indices of validation and of test episodes, and the class names."""
    root = Path(config.root).expanduser()
    if all((root / split).is_dir() for split in ("train", "val", "test")):
        parts = {split: image_folder_entries(root / split) for split in ("val", "test")}
        entries = [ImageEntry(f"{split}/{e.key}", e.path, (f"{split}/{e.labels[0]}",)) for split, items in parts.items()
                   for e in items]
        names = sorted({e.labels[0] for e in entries})
        val = [i for i, name in enumerate(names) if name.startswith("val/")]
        test = [i for i, name in enumerate(names) if name.startswith("test/")]
        return entries, val, test, names
    entries = image_folder_entries(root)
    names = sorted({e.labels[0] for e in entries})
    order = torch.randperm(len(names), generator=generator_for(seed, _CLASS_SPLIT_STREAM)).tolist()
    val_count, test_count = round(config.val_classes * len(names)), round(config.test_classes * len(names))
    if val_count < 2 or test_count < 2:
        raise ConfigError(f"{root} has {len(names)} classes: too few for class-disjoint validation and test episodes")
    return entries, sorted(order[:val_count]), sorted(order[val_count : val_count + test_count]), names


def episode_data(entries: list[ImageEntry], names: list[str], val: list[int], test: list[int],
                 encoder: PretrainedEncoder, resize: int | None) -> EpisodeData:
    """The episodes' view of the images for one encoder (its own input size and normalisation)."""
    index = {name: position for position, name in enumerate(names)}
    episode_classes = set(val) | set(test)
    used = [e for e in entries if index[e.labels[0]] in episode_classes]
    images = load_images(used, encoder, resize)
    pool = SegmentPool(torch.tensor([index[e.labels[0]] for e in used]))

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return encoder.inputs(images[rows.cpu()])

    return EpisodeData(pool, inputs, len(images), val, test)


def run_fewshot(config: VisionFewshotConfig) -> dict[str, Any]:
    """Evaluate the configured checkpoint(s); returns the results (also written to ``out_dir``)."""
    device = resolve_device(config.device)
    entries, val, test, names = class_split(config.data, config.episodes.seed)
    rows: list[dict[str, Any]] = []
    factors: list[str] = []
    for path, label, fixed in ((config.checkpoint, "amortised", config.fixed), (config.baseline, "baseline", [])):
        if not path:
            continue
        encoder = load_encoder(Path(path).expanduser(), device)
        factors = factors or list(encoder.space.names)
        data = episode_data(entries, names, val, test, encoder, config.data.resize)
        evaluator = FewshotEvaluator(config.episodes, config.learner, config.sweep, data, device, config.statistics,
                                     config.set_invariance)
        rows += evaluate_encoder(evaluator, encoder, fixed, label, config.sklearn, config.selected,
                                 config.per_episode)
    report = {"config": to_dict(config), "factors": factors, "classes": {"val": len(val), "test": len(test)}, "rows": rows}
    write_report(Path(config.out_dir), report, Path(config.data.root).name)
    return report
