"""Labelled data for many-shot readouts, for any modality: the config of a labelled folder or CSV, targets from
labels, the test split, and the run of every readout plan with its report.

A modality reads its items (audio clips, images) into entries whose ``labels`` are the CSV cells (or the class folder)
and supplies model inputs; everything from labels to ``results.json`` is here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from aiaudio.config import DataError
from aiaudio.engine.files import atomic_write_text
from aiaudio.engine.pretrained import PretrainedEncoder
from aiaudio.eval.plans import ReadoutPlan, StatisticsConfig
from aiaudio.eval.readout import ReadoutData, ReadoutLearnerConfig, linear_readout, result_summary, split_off
from aiaudio.eval.stats import mean_ci
from aiaudio.eval.sweep import SweepConfig
from aiaudio.seeding import mix_seed

log = logging.getLogger(__name__)

_TEST_SPLIT_STREAM = 0x7E57  # the test split's seed is derived from data.seed apart from the validation split's
_SUBSET_STREAM = 0x5B5E7  # and the max_train / max_test subsets' apart from both
METRICS: dict[str, str] = {"classification": "accuracy", "regression": "r2"}


@dataclass
class LabelledDataConfig:
    """A labelled folder or CSV and how it is split (a modality adds how its items are read).

    Attributes:
        format: ``"folder"`` (every item under ``root``, its class the parent folder's name) or ``"csv"``.
        root: folder format: the folder; csv format: the folder relative paths resolve against (default: the CSV's).
        csv: csv format: the CSV file (with a header row).
        path_column: csv: the column of item paths.
        label_column: csv, classification: the column of class names.
        target_columns: csv, regression: the column(s) of numeric targets.
        task: ``"classification"`` (scored by accuracy) or ``"regression"`` (scored by R^2; csv only).
        split_column: csv: a column naming each item's split; items whose value is ``test_value`` are the test set,
            all others train. None: a seeded ``test_fraction`` of the items (stratified by class) is the test set.
        test_value: the ``split_column`` value of test items.
        test_fraction: share of items held out for testing when there is no ``split_column``.
        val_fraction: share of the training items held out for validation (stratified by class).
        seed: seed of the test and validation splits (and of the subsets ``max_train`` / ``max_test`` keep).
        max_train, max_test: use at most this many training (incl. validation) / test items, a seeded random subset
            (None: all); for quick runs on large sets, e.g. a CPU benchmark on CIFAR-sized data.
    """

    #: The formats this modality reads (a modality with more widens it).
    FORMATS: ClassVar[tuple[str, ...]] = ("folder", "csv")

    format: str = "folder"
    root: str | None = None
    csv: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    target_columns: list[str] = field(default_factory=lambda: ["target"])
    task: str = "classification"
    split_column: str | None = None
    test_value: str = "test"
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    seed: int = 0
    max_train: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        if any(limit is not None and limit < 1 for limit in (self.max_train, self.max_test)):
            raise ValueError(f"data.max_train and data.max_test must be >= 1 or null, got {self.max_train} and "
                             f"{self.max_test}")
        if self.format not in self.FORMATS:
            raise ValueError(f"data.format must be one of {list(self.FORMATS)}, got {self.format!r}")
        if self.task not in METRICS:
            raise ValueError(f"data.task must be classification or regression, got {self.task!r}")
        if self.format == "folder" and self.task == "regression":
            raise ValueError("data.task=regression needs data.format=csv (a folder gives class labels only)")
        if self.format == "folder" and self.split_column is not None:
            raise ValueError("data.split_column is a CSV column; a folder is split by data.test_fraction")
        if self.task == "regression" and not self.target_columns:
            raise ValueError("data.target_columns must name at least one column for regression")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"data.{name} must lie strictly between 0 and 1, got {getattr(self, name)}")

    @property
    def source(self) -> str:
        """The CSV or folder, for messages."""
        return str(self.csv if self.format == "csv" else self.root)

    def value_columns(self) -> list[str]:
        """The CSV columns that hold the task's values."""
        return [self.label_column] if self.task == "classification" else list(self.target_columns)

    def csv_columns(self) -> list[str]:
        """Every CSV column a reader must return, in order: the values, then the split column."""
        return self.value_columns() + ([self.split_column] if self.split_column else [])


@dataclass
class ReadoutRunConfig:
    """What every many-shot readout run sets besides its data (a modality adds ``data``).

    Attributes:
        checkpoint: a pretraining run directory (its latest checkpoint) or a checkpoint directory.
        out_dir: where results go.
        learner: how each readout is trained (lr, weight_decay and, when swept, invariance_lr come from the sweep).
        sweep: the lr x weight-decay (x invariance-lr, learned readout) grid, chosen by validation score.
        learn_invariance: run the ``learned`` readout (amortised encoders).
        fixed: descriptors of ``fixed`` readouts (amortised encoders): ``"all"``, K numbers, or every factor named
            (``"spatial=1,appearance=0"``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        lowshot_fractions: also read out from seeded subsets holding these fractions of the training items (the
            paper's low-shot regression: 0.05, 0.1, 0.2); empty: none.
        lowshot_splits: subsets per fraction (the paper: 100).
        statistics: the BatchNorm statistics of an amortised encoder's features (see
            :class:`~aiaudio.eval.plans.StatisticsConfig`): by default measured at each descriptor on training items.
    """

    checkpoint: str | None = None
    out_dir: str = "runs/readout"
    learner: ReadoutLearnerConfig = field(default_factory=ReadoutLearnerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    learn_invariance: bool = True
    fixed: list[str] = field(default_factory=lambda: ["all"])
    device: str = "auto"
    lowshot_fractions: list[float] = field(default_factory=list)
    lowshot_splits: int = 100
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)

    def __post_init__(self) -> None:
        if any(not 0.0 < f < 1.0 for f in self.lowshot_fractions) or self.lowshot_splits < 1:
            raise ValueError("lowshot_fractions must lie strictly between 0 and 1, and lowshot_splits be >= 1")


@dataclass
class LabelledTargets:
    """Targets of labelled items and, from a split column, which are test items.

    Attributes:
        targets: class indices ``[N]`` (classification), or float targets ``[N]`` (one column) or ``[N, D]``.
        class_names: classification: the class of each index; regression: empty.
        is_test: ``[N]`` bool from the split column, or None (split by fraction).
    """

    targets: np.ndarray
    class_names: list[str]
    is_test: np.ndarray | None


def labelled_targets(keys: Sequence[str], labels: Sequence[Sequence[str]], data: LabelledDataConfig) -> LabelledTargets:
    """Targets from each item's labels (the class folder, or the CSV cells of :meth:`LabelledDataConfig.csv_columns`).

    Raises:
        DataError: an item without a class, an empty cell, or a non-numeric or non-finite target (naming the item).
    """
    where = data.source
    if not keys:
        raise DataError(f"{where} lists no items")
    expected = 1 if data.format == "folder" else len(data.csv_columns())
    for key, row in zip(keys, labels):
        if len(row) < expected:
            what = "has no class (put items in class folders)" if data.format == "folder" else "has an empty cell"
            raise DataError(f"{where}: {key!r} {what} in {data.csv_columns() if data.format == 'csv' else 'its path'}")
    is_test = None
    if data.format == "csv" and data.split_column:
        is_test = np.array([row[-1] == data.test_value for row in labels])
    if data.task == "classification":
        names = [row[0] for row in labels]
        classes = sorted(set(names))
        index = {name: position for position, name in enumerate(classes)}
        return LabelledTargets(np.array([index[name] for name in names], dtype=np.int64), classes, is_test)
    columns = data.value_columns()
    values = []
    for key, row in zip(keys, labels):
        try:
            numbers = [float(text) for text in row[: len(columns)]]
        except ValueError:
            raise DataError(f"{where}: the row of {key!r} has a non-numeric target in {columns}: {list(row[:len(columns)])}") from None
        if not all(math.isfinite(number) for number in numbers):
            raise DataError(f"{where}: the row of {key!r} has a non-finite target {numbers}")
        values.append(numbers)
    targets = np.array(values, dtype=np.float32)
    return LabelledTargets(targets[:, 0] if targets.shape[1] == 1 else targets, [], is_test)


def test_mask(labelled: LabelledTargets, data: LabelledDataConfig) -> np.ndarray:
    """Which items are test items: the split column, or a seeded stratified ``test_fraction``."""
    count = len(labelled.targets)
    if labelled.is_test is not None:
        mask = labelled.is_test
    else:
        strata = torch.from_numpy(labelled.targets) if data.task == "classification" else None
        _, held = split_off(torch.arange(count), data.test_fraction, mix_seed(data.seed, _TEST_SPLIT_STREAM), strata)
        mask = np.zeros(count, dtype=bool)
        mask[held.numpy()] = True
    if mask.all() or not mask.any():
        raise DataError(f"{data.source}: the split leaves {'no training' if mask.all() else 'no test'} items")
    return mask


def train_test_rows(is_test: np.ndarray | torch.Tensor, data: LabelledDataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the training and of the test items, at most ``data.max_train`` / ``data.max_test`` of each (a
    seeded random subset, in ascending order)."""
    is_test = torch.as_tensor(is_test, dtype=torch.bool)
    rows = []
    for stream, (mask, limit) in enumerate(((~is_test, data.max_train), (is_test, data.max_test))):
        chosen = torch.nonzero(mask).flatten()
        if limit is not None and len(chosen) > limit:
            generator = torch.Generator().manual_seed(mix_seed(data.seed, _SUBSET_STREAM + stream))
            chosen = chosen[torch.randperm(len(chosen), generator=generator)[:limit]].sort().values
        rows.append(chosen)
    return rows[0], rows[1]


def run_readouts(
    encoder: PretrainedEncoder, plans: Sequence[ReadoutPlan], data: ReadoutData, train: torch.Tensor,
    test: torch.Tensor, learner: ReadoutLearnerConfig, sweep: SweepConfig, val_fraction: float, seed: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Fit and score every plan (``learned``, ``fixed:<text>``, ``plain``); the summaries by name."""
    results: dict[str, dict[str, Any]] = {}
    for plan in plans:
        name = plan.name
        log.info("readout %s: %d training and %d test items", name, len(train), len(test))
        started = time.perf_counter()
        result = linear_readout(plan.encoder, data, train, test, learner, sweep, plan.start, val_fraction, seed, device)
        summary = result_summary(result)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        descriptor = result.descriptor
        summary["descriptor"] = None if descriptor is None else encoder.space.to_mapping(descriptor.cpu().clamp(0, 1))
        summary["mode"] = plan.kind
        results[name] = summary
    return results


_LOWSHOT_STREAM = 0x1057  # the low-shot subsets' seeds are derived from data.seed apart from the other splits'


def lowshot_readouts(
    encoder: PretrainedEncoder, plans: Sequence[ReadoutPlan], data: ReadoutData, train: torch.Tensor,
    test: torch.Tensor, learner: ReadoutLearnerConfig, sweep: SweepConfig, fractions: Sequence[float], splits: int,
    val_fraction: float, seed: int, device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Low-shot readouts (the paper's low-shot regression): for each fraction s of the training items and each of
    ``splits`` seeded subsets of that size, fit every plan on the subset alone (validation carved from it) and score it
    on the whole test set; the mean test score and its 95% interval over the subsets, per plan and fraction."""
    strata = data.targets if data.task == "classification" else None
    results: dict[str, dict[str, Any]] = {}
    for fraction in fractions:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"lowshot.fractions must lie strictly between 0 and 1, got {fraction}")
        scores: dict[str, list[float]] = {}
        for split in range(splits):
            split_seed = mix_seed(seed, _LOWSHOT_STREAM, split)
            _, subset = split_off(train, fraction, split_seed, None if strata is None else strata[train])
            for plan in plans:
                result = linear_readout(plan.encoder, data, subset, test, learner, sweep, plan.start, val_fraction,
                                        split_seed, device)
                scores.setdefault(plan.name, []).append(result.test_score)
        for name, values in scores.items():
            summary = mean_ci(values)
            results.setdefault(name, {})[f"{fraction:g}"] = {
                "test_score": summary.mean, "ci95": summary.ci95, "splits": summary.n,
                "train_items": int(round(fraction * len(train))),
            }
    return results


def write_readout_report(out_dir: Path, report: dict[str, Any]) -> None:
    """``results.json`` and ``results.md`` (a report with ``task``, ``metric``, ``checkpoint``, ``fingerprint``,
    ``amortised``, ``data`` (``summary`` text) and ``readouts``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", readout_markdown(report))


def readout_markdown(report: dict[str, Any]) -> str:
    """A Markdown account of a readout report: the data, then one row per readout."""
    metric = report["metric"]
    lines = [
        f"# Linear readout ({report['task']}, {metric})",
        "",
        f"- checkpoint: `{report['checkpoint']}` (weights {report['fingerprint']}, "
        f"{'amortised' if report['amortised'] else 'plain'})",
        f"- data: {report['data']['summary']}",
        "",
        f"| readout | test {metric} | val {metric} | lr | weight decay | invariance lr | best epoch | descriptor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["readouts"].items():
        descriptor = result["descriptor"]
        text = "-" if descriptor is None else ", ".join(f"{k}={v:.2f}" for k, v in descriptor.items())
        invariance_lr = "-" if result.get("invariance_lr") is None else f"{result['invariance_lr']:g}"
        lines.append(
            f"| {name} | {result['test_score']:.4f} | {result['val_score']:.4f} | {result['lr']:g} | "
            f"{result['weight_decay']:g} | {invariance_lr} | {result['best_epoch']} | {text} |"
        )
    lowshot = report.get("lowshot")
    if lowshot:
        fractions = list(next(iter(lowshot.values())))
        lines += ["", f"Low-shot: test {metric} ± 95% CI over seeded training subsets of each fraction", "",
                  "| readout | " + " | ".join(f"s = {f}" for f in fractions) + " |", "|---|" + "---|" * len(fractions)]
        for name, by_fraction in lowshot.items():
            cells = [f"{v['test_score']:.4f} ± {v['ci95']:.4f} ({v['splits']})" for v in by_fraction.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
