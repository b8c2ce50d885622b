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

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiaudio.audio.cache import ClipEntry
from aiaudio.audio.datasets import csv_entries, folder_entries
from aiaudio.audio.metaaudio import SegmentPolicy, build_logmel_set
from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.encoder import load_encoder, logmel_of
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.labelled import (
    METRICS,
    LabelledDataConfig,
    LabelledTargets,
    ReadoutRunConfig,
    labelled_targets,
    lowshot_readouts,
    run_readouts,
    test_mask,
    train_test_rows,
    write_readout_report,
)
from aiaudio.eval.learner import feature_table
from aiaudio.eval.plans import readout_plans, reference_rows
from aiaudio.eval.readout import ReadoutData

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, str] = ("train", "test")


@dataclass
class ReadoutDataConfig(LabelledDataConfig):
    """The labelled audio (see :class:`~aiaudio.eval.labelled.LabelledDataConfig` for the format, columns and split)
    and how it is cut.

    Attributes:
        segment_seconds: length of an example, in seconds.
        variable_length: False: one example per clip (its start, tiled when shorter); True: consecutive segments,
            a clip's output the mean of its segments'.
        cache_dir: parent folder of the log-mel store (default ``<out_dir>/logmels``).
        stats_clips: most training clips used for the normalisation statistics (None: all).
        workers: decoding processes (None: every CPU; 0 or 1: in this process).
        batch_segments: segments per log-mel batch.
    """

    segment_seconds: float = 5.0
    variable_length: bool = False
    cache_dir: str | None = None
    stats_clips: int | None = 2000
    workers: int | None = None
    batch_segments: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.segment_seconds <= 0 or self.batch_segments < 1:
            raise ValueError("data.segment_seconds must be positive and data.batch_segments >= 1")


@dataclass
class ReadoutConfig(ReadoutRunConfig):
    """A readout run (see :class:`~aiaudio.eval.labelled.ReadoutRunConfig`) on labelled audio; ``progress`` shows
    progress bars while decoding."""

    data: ReadoutDataConfig = field(default_factory=ReadoutDataConfig)
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


def read_labelled_clips(data: ReadoutDataConfig) -> tuple[list[ClipEntry], LabelledTargets]:
    """The clips of a labelled folder or CSV, and their targets and (if configured) split.

    Raises:
        DatasetError: a missing file or column; DataError: an unlabelled file, an empty cell or a bad target.
    """
    if data.format == "folder":
        entries = folder_entries(Path(data.root).expanduser())
    else:
        root = None if data.root is None else Path(data.root).expanduser()
        entries = csv_entries(Path(data.csv).expanduser(), root, data.path_column, data.csv_columns())
    return entries, labelled_targets([e.key for e in entries], [e.labels for e in entries], data)


def run_readout(config: ReadoutConfig) -> dict[str, Any]:
    """Run every configured readout; write ``results.json`` and ``results.md`` to ``out_dir``; return a summary."""
    data = config.data
    device = resolve_device(config.device)
    out_dir = Path(config.out_dir)
    entries, labelled = read_labelled_clips(data)
    is_test = test_mask(labelled, data)
    encoder = load_encoder(Path(config.checkpoint).expanduser(), device)
    frontend_config = logmel_of(encoder).config
    split_entries = [
        dataclasses.replace(entry, labels=(SPLIT_NAMES[int(test)],)) for entry, test in zip(entries, is_test)
    ]
    store = build_logmel_set(
        split_entries, list(SPLIT_NAMES), [SPLIT_NAMES[0]],
        Path(data.cache_dir).expanduser() if data.cache_dir else out_dir / "logmels",
        SegmentPolicy(data.segment_seconds, data.variable_length, frontend_config.sample_rate),
        name="readout", seed=data.seed, stats_clips=data.stats_clips, logmel_config=frontend_config,
        workers=data.workers, progress=config.progress, batch_segments=data.batch_segments, device=device,
    )
    position = {entry.key: index for index, entry in enumerate(entries)}
    kept = np.array([position[key] for key in store.clip_keys], dtype=np.int64)
    store_is_test = torch.from_numpy(store.clip_class == SPLIT_NAMES.index("test"))
    readout_data = ReadoutData(
        torch.from_numpy(store.segment_clip), torch.from_numpy(labelled.targets[kept]), data.task,
        len(labelled.class_names) if data.task == "classification" else None,
    )
    train_clips, test_clips = train_test_rows(store_is_test, data)

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return store.gather(rows.cpu().numpy(), device)

    def features_at(descriptor: torch.Tensor | None) -> torch.Tensor:
        return feature_table(encoder, inputs, len(store), descriptor, config.learner.eval_batch_size)

    reference = None
    if config.statistics.source == "reference":
        segments = torch.nonzero(torch.isin(readout_data.segment_clip, train_clips)).flatten()
        reference = inputs(reference_rows(segments, config.statistics, "segments of training clips"))
    with encoder.measured_statistics(reference):
        plans = readout_plans(encoder, config.fixed, config.learn_invariance, config.learner.init, inputs, features_at)
        results = run_readouts(
            encoder, plans, readout_data, train_clips, test_clips, config.learner, config.sweep, data.val_fraction,
            data.seed, device,
        )
        lowshot = lowshot_readouts(
            encoder, plans, readout_data, train_clips, test_clips, config.learner, config.sweep,
            config.lowshot_fractions, config.lowshot_splits, data.val_fraction, data.seed, device,
        ) if config.lowshot_fractions else {}
    report = {
        "checkpoint": str(encoder.source),
        "fingerprint": encoder.fingerprint(),
        "amortised": encoder.amortised,
        "task": data.task,
        "metric": METRICS[data.task],
        "data": {
            "format": data.format,
            "source": data.source,
            "clips": len(entries),
            "used_clips": store.num_clips,
            "left_out_clips": len(entries) - store.num_clips,
            "train_clips": len(train_clips),
            "test_clips": len(test_clips),
            "segments": len(store),
            "classes": labelled.class_names,
            "target_columns": list(data.target_columns) if data.task == "regression" else [],
            "logmel_store": str(store.directory),
        },
        "readouts": results,
        "lowshot": lowshot,
        "statistics": config.statistics.source if encoder.measures_statistics else "running",
        "config": to_dict(config),
    }
    counts = report["data"]
    counts["summary"] = (
        f"{data.format} `{data.source}`: {counts['used_clips']} of {counts['clips']} clips used "
        f"({counts['train_clips']} train incl. validation, {counts['test_clips']} test), {counts['segments']} segments"
    )
    write_readout_report(out_dir, report)
    return {
        "out_dir": str(out_dir),
        "metric": report["metric"],
        "readouts": {
            name: {"test_score": r["test_score"], "val_score": r["val_score"], "descriptor": r["descriptor"]}
            for name, r in results.items()
        },
    }
