"""``aivision linear``: a linear head and the task's own invariance learned on a labelled image set.

The images (class folders, or a CSV of paths with class names or numeric targets: landmark coordinates, say) are
read once at the evaluation size (shorter side resized to ``data.resize``, default ``size / 0.875``, then a centre
crop, the paper's resize 256 / crop 224), the test split is set aside, and the core's readouts run: the learned
descriptor, each fixed descriptor, or plain features for a baseline; hyper-parameters are chosen on a validation split
carved from the training images, never the test split. Results: ``results.{json,md}`` in ``out_dir``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.engine.pretrained import PretrainedEncoder, load_encoder
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.labelled import (
    METRICS,
    LabelledDataConfig,
    ReadoutRunConfig,
    LabelledTargets,
    labelled_targets,
    lowshot_readouts,
    run_readouts,
    test_mask,
    train_test_rows,
    write_readout_report,
)
from aiaudio.eval.learner import feature_table
from aiaudio.eval.finetune import FinetuneConfig, finetune_readout
from aiaudio.eval.plans import fixed_descriptor, readout_plans, reference_rows
from aiaudio.eval.readout import ReadoutData
from aivision.augment import ImageInput
from aivision.data import ImageEntry, ImageSet, csv_image_entries, image_folder_entries
from aivision.datasets import read_official


@dataclass
class LinearDataConfig(LabelledDataConfig):
    """A labelled image set (see :class:`~aiaudio.eval.labelled.LabelledDataConfig`), or (``format: official``) one
    of the paper's downstream sets in its official layout under ``root`` (:mod:`aivision.datasets`): ``official`` names
    it (cifar10, flowers102, 300w, ...), ``train_split`` and ``test_split`` its splits (no ``test_split``: a seeded
    ``test_fraction`` of the training split is the test set), ``options`` go to its reader (``fold``, ``label``, ...).
    ``resize``: the shorter side before the centre crop to the encoder's input size (default: input size / 0.875)."""

    FORMATS: ClassVar[tuple[str, ...]] = ("folder", "csv", "official")

    official: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    options: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.format == "official") != (self.official is not None):
            raise ValueError("data.official names the set of data.format=official (and is used with it only)")


@dataclass
class LinearConfig(ReadoutRunConfig):
    """A readout run (see :class:`~aiaudio.eval.labelled.ReadoutRunConfig`) on a labelled image set, with optional
    fine-tuning baselines: ``finetune`` lists block counts (0: the whole encoder; k: its last k blocks), trained by
    ``finetune_learner`` at the descriptor ``finetune_at``; ``finetune_time_matched`` gives each the wall time the
    learned-invariance readout took."""

    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    finetune: list[int] = field(default_factory=list)
    finetune_learner: FinetuneConfig = field(default_factory=FinetuneConfig)
    finetune_at: str = "all"
    finetune_time_matched: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(blocks < 0 for blocks in self.finetune):
            raise ValueError(f"finetune lists block counts >= 0 (0: the whole encoder), got {self.finetune}")
        if self.finetune_time_matched and not self.learn_invariance:
            raise ValueError("finetune_time_matched matches the learned-invariance readout: set learn_invariance=true")


def parse_linear_config(raw: dict[str, Any]) -> LinearConfig:
    config = from_dict(LinearConfig, raw)
    if not config.checkpoint:
        raise ConfigError("checkpoint is not set: give checkpoint=runs/<pretraining run> (or a checkpoint directory)")
    if config.data.format in ("folder", "official"):
        require_directory(config.data.root, "data.root", "labelled image folder")
    elif not config.data.csv:
        raise ConfigError("data.csv is not set: give data.csv=/path/to/labels.csv")
    return config


def image_transform(encoder: PretrainedEncoder) -> ImageInput:
    """The image input transform of a loaded encoder; an error naming the checkpoint for any other input."""
    if not isinstance(encoder.transform, ImageInput):
        raise ConfigError(f"{encoder.source} takes {type(encoder.transform).__name__} inputs: it is not an image encoder")
    return encoder.transform


def read_entries(data: LabelledDataConfig) -> list[ImageEntry]:
    """The images of a labelled folder or CSV, labelled by class folder or by the CSV's columns."""
    if data.format == "folder":
        return image_folder_entries(Path(data.root).expanduser())
    root = None if data.root is None else Path(data.root).expanduser()
    return csv_image_entries(Path(data.csv).expanduser(), root, data.path_column, data.csv_columns())


def load_images(entries: list[ImageEntry], encoder: PretrainedEncoder, resize: int | None) -> torch.Tensor:
    """uint8 ``[N, 3, s, s]`` of every image at the encoder's input size ``s`` (resize, then centre crop)."""
    size = image_transform(encoder).size
    return ImageSet(entries, size, resize or round(size / 0.875)).load_all()


def read_official_set(data: LinearDataConfig, encoder: PretrainedEncoder) -> tuple[torch.Tensor, LabelledTargets, int]:
    """Images (at the encoder's size, or in memory), targets and split of an official set; and its item count."""
    root = Path(data.root).expanduser()
    parts = [read_official(data.official, root, data.train_split, **data.options)]
    if data.test_split:
        parts.append(read_official(data.official, root, data.test_split, **data.options))
    if parts[0].task != data.task:
        raise ConfigError(f"{data.official} is a {parts[0].task} set: set data.task={parts[0].task}")
    if any(part.class_names != parts[0].class_names for part in parts):
        raise ConfigError(f"{data.official}: splits {data.train_split} and {data.test_split} name different classes")
    images = torch.cat([part.images if part.images is not None else load_images(part.entries, encoder, data.resize)
                        for part in parts])
    is_test = np.concatenate([np.full(len(part), index == 1) for index, part in enumerate(parts)])
    labelled = LabelledTargets(np.concatenate([part.targets for part in parts]), parts[0].class_names,
                               is_test if data.test_split else None)
    return images, labelled, len(images)


def run_linear(config: LinearConfig) -> dict[str, Any]:
    """Run every configured readout; write ``results.json`` and ``results.md`` to ``out_dir``; return the report."""
    data = config.data
    device = resolve_device(config.device)
    encoder = load_encoder(Path(config.checkpoint).expanduser(), device)
    if data.format == "official":
        images, labelled, count = read_official_set(data, encoder)
    else:
        entries = read_entries(data)
        labelled = labelled_targets([e.key for e in entries], [e.labels for e in entries], data)
        images, count = load_images(entries, encoder, data.resize), len(entries)
    train, test = train_test_rows(test_mask(labelled, data), data)
    used = torch.cat([train, test])  # only the used images are kept (max_train / max_test)
    images, targets = images[used], torch.from_numpy(labelled.targets)[used]
    train, test = torch.arange(len(train)), torch.arange(len(train), len(used))

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return encoder.inputs(images[rows.cpu()])

    def features_at(descriptor: torch.Tensor | None) -> torch.Tensor:
        return feature_table(encoder, inputs, len(images), descriptor, config.learner.eval_batch_size)

    readout_data = ReadoutData(
        torch.arange(len(images)), targets, data.task,
        len(labelled.class_names) if data.task == "classification" else None,
    )
    reference = None
    if config.statistics.source == "reference":
        reference = inputs(reference_rows(train, config.statistics, "training images"))
    with encoder.measured_statistics(reference):
        plans = readout_plans(encoder, config.fixed, config.learn_invariance, config.learner.init, inputs, features_at)
        results = run_readouts(
            encoder, plans, readout_data, train, test, config.learner, config.sweep, data.val_fraction, data.seed, device
        )
        lowshot = lowshot_readouts(
            encoder, plans, readout_data, train, test, config.learner, config.sweep, config.lowshot_fractions,
            config.lowshot_splits, data.val_fraction, data.seed, device,
        ) if config.lowshot_fractions else {}
    for blocks in config.finetune:
        learner = config.finetune_learner
        if config.finetune_time_matched and "learned" in results:
            learner = dataclasses.replace(learner, seconds=results["learned"]["seconds"])
        descriptor = fixed_descriptor(encoder, config.finetune_at, 0) if encoder.amortised else None
        name = "finetune:all" if blocks == 0 else f"finetune:last{blocks}"
        results[name] = finetune_readout(encoder.encoder, inputs, readout_data, train, test, blocks, learner,
                                         descriptor, data.val_fraction, data.seed, device)
        if descriptor is not None:
            results[name]["descriptor"] = encoder.space.to_mapping(descriptor)
        results[name].update(mode="finetune", invariance_lr=None)
    report = {
        "checkpoint": str(encoder.source), "fingerprint": encoder.fingerprint(), "amortised": encoder.amortised,
        "task": data.task, "metric": METRICS[data.task], "factors": list(encoder.space.names),
        "data": {
            "format": data.format, "source": data.official or data.source, "images": count, "train_images": len(train),
            "test_images": len(test), "classes": labelled.class_names,
            "target_columns": list(data.target_columns) if data.task == "regression" else [],
            "summary": f"{data.format} `{data.official or data.source}`: {count} images ({len(train)} train incl. validation, "
                       f"{len(test)} test{' used' if len(used) < count else ''}) at {images.shape[-1]} px",
        },
        "readouts": results,
        "lowshot": lowshot,
        "statistics": config.statistics.source if encoder.measures_statistics else "running",
        "config": to_dict(config),
    }
    write_readout_report(Path(config.out_dir), report)
    return report
