"""``aiaudio readout``: the many-shot linear readout of a pretrained encoder on a labelled audio folder or CSV.

Steps: read the clips (:func:`~aiaudio.audio.datasets.folder_entries` or :func:`~aiaudio.audio.datasets.csv_entries`),
split off the test clips (a CSV column, or a seeded fraction stratified by class), compute their log-mels once into a
reusable store (:func:`~aiaudio.audio.metaaudio.build_logmel_set`), load the frozen encoder and run the readouts of
:mod:`aiaudio.eval.readout`:

* ``learned``: a linear head and one descriptor ``i`` for the whole task (amortised encoders, ``learn_invariance``);
* ``fixed:<descriptor>``: a head on features computed once at each descriptor of ``fixed``;
* ``plain``: a head on features computed once (an encoder without a descriptor).

Log-mels come from the project's log-mel store, with the checkpoint's own log-mel parameters (sample rate, FFT, mel
bands), so every readout and the MetaAudio few-shot evaluation see the same input encoding: each clip z-normalised
over its length, cut or tiled to ``segment_seconds`` (or, with ``variable_length``, split into consecutive segments
whose outputs are averaged per clip), then globally normalised with one mean and std taken from the training clips
only. The store is keyed by the clips, their split and the settings, so reruns reuse it.

Results go to ``out_dir/results.json`` and ``out_dir/results.md`` (written atomically).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiaudio.audio.cache import ClipEntry
from aiaudio.audio.datasets import DatasetError, csv_entries, folder_entries
from aiaudio.audio.metaaudio import SegmentPolicy, build_logmel_set
from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.encoder import load_encoder, logmel_of
from aiaudio.engine.files import atomic_write_text
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.learner import feature_table
from aiaudio.eval.plans import readout_plans
from aiaudio.eval.sweep import SweepConfig
from aiaudio.eval.readout import (
    ReadoutData,
    ReadoutLearnerConfig,
    linear_readout,
    result_summary,
    split_off,
)
from aiaudio.seeding import mix_seed

log = logging.getLogger(__name__)

_TEST_SPLIT_STREAM = 0x7E57  # the test split's seed is derived from data.seed apart from the validation split's
SPLIT_NAMES: tuple[str, str] = ("train", "test")
METRICS = {"classification": "accuracy", "regression": "r2"}


@dataclass
class ReadoutDataConfig:
    """The labelled audio and how it is split and cut.

    Attributes:
        format: ``"folder"`` (every audio file under ``root``, its class the parent folder's name) or ``"csv"``.
        root: folder format: the audio folder; csv format: the folder relative paths resolve against (default: the
            CSV's folder).
        csv: csv format: the CSV file (with a header row).
        path_column: csv: the column of audio paths.
        label_column: csv, classification: the column of class names.
        target_columns: csv, regression: the column(s) of numeric targets.
        task: ``"classification"`` (scored by accuracy) or ``"regression"`` (scored by R^2; csv only).
        split_column: csv: a column naming each clip's split; clips whose value is ``test_value`` are the test
            set, all others train. None: a seeded ``test_fraction`` of the clips (stratified by class) is the test set.
        test_value: the ``split_column`` value of test clips.
        test_fraction: share of clips held out for testing when there is no ``split_column``.
        val_fraction: share of the training clips held out for validation (stratified by class).
        seed: seed of the test and validation splits.
        segment_seconds: length of an example, in seconds.
        variable_length: False: one example per clip (its start, tiled when shorter); True: consecutive segments,
            a clip's output the mean of its segments'.
        cache_dir: parent folder of the log-mel store (default ``<out_dir>/logmels``).
        stats_clips: most training clips used for the normalisation statistics (None: all).
        workers: decoding processes (None: every CPU; 0 or 1: in this process).
        batch_segments: segments per log-mel batch.
    """

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
    segment_seconds: float = 5.0
    variable_length: bool = False
    cache_dir: str | None = None
    stats_clips: int | None = 2000
    workers: int | None = None
    batch_segments: int = 64

    def __post_init__(self) -> None:
        if self.format not in ("folder", "csv"):
            raise ValueError(f"data.format must be folder or csv, got {self.format!r}")
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
        if self.segment_seconds <= 0 or self.batch_segments < 1:
            raise ValueError("data.segment_seconds must be positive and data.batch_segments >= 1")


@dataclass
class ReadoutConfig:
    """A readout run.

    Attributes:
        checkpoint: a pretraining run directory (its latest checkpoint) or a checkpoint directory.
        out_dir: where results (and, by default, the log-mel store) go.
        data: the labelled audio.
        learner: how each readout is trained (lr, weight_decay and, when swept, invariance_lr come from the sweep).
        sweep: the lr x weight-decay (x invariance-lr, learned readout) grid, chosen by validation score.
        learn_invariance: run the ``learned`` readout (amortised encoders).
        fixed: descriptors of ``fixed`` readouts (amortised encoders): ``"all"``, ``"0,1,0,0,1,0,0"`` (K numbers)
            or ``"pitch_shift=0.5,fade_in=1,..."`` (every factor named).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: show progress bars while decoding.
    """

    checkpoint: str | None = None
    out_dir: str = "runs/readout"
    data: ReadoutDataConfig = field(default_factory=ReadoutDataConfig)
    learner: ReadoutLearnerConfig = field(default_factory=ReadoutLearnerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    learn_invariance: bool = True
    fixed: list[str] = field(default_factory=lambda: ["all"])
    device: str = "auto"
    progress: bool = True


def parse_readout_config(raw: dict[str, Any]) -> ReadoutConfig:
    """Validate a raw config mapping into a :class:`ReadoutConfig` (a :class:`ConfigError` names the bad key)."""
    config = from_dict(ReadoutConfig, raw)
    if not config.checkpoint:
        raise ConfigError("checkpoint is not set: give checkpoint=runs/<pretraining run> (or a checkpoint directory)")
    data = config.data
    if data.format == "folder":
        require_directory(data.root, "data.root", "labelled folder")
    if data.format == "csv" and not data.csv:
        raise ConfigError("data.csv is not set: give data.csv=/path/to/labels.csv")
    return config


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LabelledClips:
    """Clips with their targets and, from a split column, which are test clips.

    Attributes:
        entries: the clips.
        targets: class indices ``[C]`` (classification), or float targets ``[C]`` (one target column) or ``[C, D]``.
        class_names: classification: the class of each index; regression: empty.
        is_test: ``[C]`` bool from the split column, or None (split by fraction).
    """

    entries: list[ClipEntry]
    targets: np.ndarray
    class_names: list[str]
    is_test: np.ndarray | None


def read_labelled_clips(data: ReadoutDataConfig) -> LabelledClips:
    """Read the clips, targets and (if configured) split of a labelled folder or CSV.

    Raises:
        DatasetError: a missing file or column, an unlabelled file, an empty cell or a non-numeric target.
    """
    if data.format == "folder":
        entries = folder_entries(Path(data.root).expanduser())
        unlabelled = [entry.key for entry in entries if not entry.labels]
        if unlabelled:
            raise DatasetError(
                f"{data.root}: audio files directly in the folder have no class (put them in class folders), "
                f"e.g. {unlabelled[0]!r}"
            )
        names = [entry.labels[0] for entry in entries]
        classes = sorted(set(names))
        index = {name: position for position, name in enumerate(classes)}
        return LabelledClips(entries, np.array([index[name] for name in names], dtype=np.int64), classes, None)

    csv_path = Path(data.csv).expanduser()
    value_columns = [data.label_column] if data.task == "classification" else list(data.target_columns)
    columns = value_columns + ([data.split_column] if data.split_column else [])
    entries = csv_entries(
        csv_path, None if data.root is None else Path(data.root).expanduser(), data.path_column, columns
    )
    if not entries:
        raise DatasetError(f"{csv_path} lists no clips")
    for entry in entries:
        if len(entry.labels) != len(columns):
            raise DatasetError(f"{csv_path}: the row of {entry.key!r} has an empty cell in column(s) {columns}")
    is_test = None
    if data.split_column:
        is_test = np.array([entry.labels[-1] == data.test_value for entry in entries])
    if data.task == "classification":
        names = [entry.labels[0] for entry in entries]
        classes = sorted(set(names))
        index = {name: position for position, name in enumerate(classes)}
        targets = np.array([index[name] for name in names], dtype=np.int64)
        return LabelledClips(entries, targets, classes, is_test)
    rows = []
    for entry in entries:
        try:
            values = [float(text) for text in entry.labels[: len(value_columns)]]
        except ValueError:
            raise DatasetError(
                f"{csv_path}: the row of {entry.key!r} has a non-numeric target in {value_columns}: "
                f"{list(entry.labels[: len(value_columns)])}"
            ) from None
        if not all(math.isfinite(value) for value in values):
            raise DatasetError(f"{csv_path}: the row of {entry.key!r} has a non-finite target {values}")
        rows.append(values)
    targets = np.array(rows, dtype=np.float32)
    return LabelledClips(entries, targets[:, 0] if targets.shape[1] == 1 else targets, [], is_test)


def select_test_clips(clips: LabelledClips, data: ReadoutDataConfig) -> np.ndarray:
    """Which clips are test clips: the split column, or a seeded stratified ``test_fraction``."""
    if clips.is_test is not None:
        mask = clips.is_test
    else:
        strata = torch.from_numpy(clips.targets) if data.task == "classification" else None
        _, held = split_off(
            torch.arange(len(clips.entries)), data.test_fraction, mix_seed(data.seed, _TEST_SPLIT_STREAM), strata
        )
        mask = np.zeros(len(clips.entries), dtype=bool)
        mask[held.numpy()] = True
    where = data.csv if data.format == "csv" else data.root
    if mask.all() or not mask.any():
        raise DatasetError(f"{where}: the split leaves {'no training' if mask.all() else 'no test'} clips")
    return mask


# --------------------------------------------------------------------------------------------------------------
# Readouts
# --------------------------------------------------------------------------------------------------------------


def run_readout(config: ReadoutConfig) -> dict[str, Any]:
    """Run every configured readout; write ``results.json`` and ``results.md`` to ``out_dir``; return a summary."""
    data = config.data
    device = resolve_device(config.device)
    out_dir = Path(config.out_dir)
    clips = read_labelled_clips(data)
    is_test = select_test_clips(clips, data)
    encoder = load_encoder(Path(config.checkpoint).expanduser(), device)
    frontend_config = logmel_of(encoder).config
    split_entries = [
        ClipEntry(entry.key, entry.path, (SPLIT_NAMES[int(test)],)) for entry, test in zip(clips.entries, is_test)
    ]
    store = build_logmel_set(
        split_entries, list(SPLIT_NAMES), [SPLIT_NAMES[0]],
        Path(data.cache_dir).expanduser() if data.cache_dir else out_dir / "logmels",
        SegmentPolicy(data.segment_seconds, data.variable_length, frontend_config.sample_rate),
        name="readout", seed=data.seed, stats_clips=data.stats_clips, logmel_config=frontend_config,
        workers=data.workers, progress=config.progress, batch_segments=data.batch_segments, device=device,
    )
    position = {entry.key: index for index, entry in enumerate(clips.entries)}
    kept = np.array([position[key] for key in store.clip_keys], dtype=np.int64)
    store_is_test = torch.from_numpy(store.clip_class == SPLIT_NAMES.index("test"))
    readout_data = ReadoutData(
        torch.from_numpy(store.segment_clip), torch.from_numpy(clips.targets[kept]), data.task,
        len(clips.class_names) if data.task == "classification" else None,
    )
    train_clips = torch.nonzero(~store_is_test).flatten()
    test_clips = torch.nonzero(store_is_test).flatten()

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return store.gather(rows.cpu().numpy(), device)

    def features_at(descriptor: torch.Tensor | None) -> torch.Tensor:
        return feature_table(encoder, inputs, len(store), descriptor, config.learner.eval_batch_size)

    results: dict[str, Any] = {}
    plans = readout_plans(encoder, config.fixed, config.learn_invariance, config.learner.init, inputs, features_at)
    for plan in plans:
        name = plan.kind if plan.kind != "fixed" else f"fixed:{plan.text}"
        features, start = plan.encoder, plan.start
        log.info("readout %s: %d training and %d test clips", name, len(train_clips), len(test_clips))
        result = linear_readout(
            features, readout_data, train_clips, test_clips, config.learner, config.sweep, start,
            data.val_fraction, data.seed, device,
        )
        summary = result_summary(result)
        descriptor = result.descriptor
        summary["descriptor"] = None if descriptor is None else encoder.space.to_mapping(descriptor.cpu().clamp(0, 1))
        summary["mode"] = name.split(":", 1)[0]
        results[name] = summary

    report = {
        "checkpoint": str(encoder.source),
        "fingerprint": encoder.fingerprint(),
        "amortised": encoder.amortised,
        "task": data.task,
        "metric": METRICS[data.task],
        "data": {
            "format": data.format,
            "source": str(data.csv if data.format == "csv" else data.root),
            "clips": len(clips.entries),
            "used_clips": store.num_clips,
            "left_out_clips": len(clips.entries) - store.num_clips,
            "train_clips": len(train_clips),
            "test_clips": len(test_clips),
            "segments": len(store),
            "classes": clips.class_names,
            "target_columns": list(data.target_columns) if data.task == "regression" else [],
            "logmel_store": str(store.directory),
        },
        "readouts": results,
        "config": to_dict(config),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(report))
    return {
        "out_dir": str(out_dir),
        "metric": report["metric"],
        "readouts": {
            name: {"test_score": r["test_score"], "val_score": r["val_score"], "descriptor": r["descriptor"]}
            for name, r in results.items()
        },
    }


def results_markdown(report: dict[str, Any]) -> str:
    """A Markdown account of a readout report: the data, then one row per readout."""
    data = report["data"]
    metric = report["metric"]
    lines = [
        f"# Linear readout ({report['task']}, {metric})",
        "",
        f"- checkpoint: `{report['checkpoint']}` (weights {report['fingerprint']}, "
        f"{'amortised' if report['amortised'] else 'plain'})",
        f"- data: {data['format']} `{data['source']}`: {data['used_clips']} of {data['clips']} clips used "
        f"({data['train_clips']} train incl. validation, {data['test_clips']} test), {data['segments']} segments",
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
    return "\n".join(lines) + "\n"
