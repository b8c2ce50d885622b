"""``aivision measure``: how invariant a pretrained image encoder is to each probe, per descriptor.

For the first ``images`` images under ``data.root`` (any depth, sorted by path), read at the encoder's input size
(shorter side resized to ``data.resize``, default size / 0.875, then a centre crop), and each probe of
:mod:`aivision.probes` at fixed magnitudes, the mean similarity between the features of an image and of its
transformed copy (Ericsson et al.), averaged over the probe's magnitudes, for every descriptor asked for. Writes
``invariance.{md,csv,json}``, a radar chart per descriptor, the interpolation curve between two descriptors and, given
``results.json`` files of ``aivision linear`` or ``aivision fewshot``, a bar chart of the learned invariance per task.

The core's :func:`~aiaudio.eval.measure.invariance_table` pairs each view row with the clean row of the same index,
so a probe with M magnitudes is measured against the clean images tiled M times; the mean over the M * N pairs is
the mean over magnitudes, and the centred and Mahalanobis statistics of the tiled clean features equal the untiled
ones (the covariance only scales, which no cosine sees). Probes with the same M share their clean features.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiaudio.config import ConfigError, from_dict, require_directory
from aiaudio.engine.pretrained import PretrainedEncoder, load_encoder
from aiaudio.engine.runtime import resolve_device
from aiaudio.eval.measure import METRICS, Encoder, InvarianceTable, interpolation_curve, invariance_table
from aiaudio.eval.plots import interpolation_plot, learned_invariance_bars, radar_chart
from aivision.embed import folder_images
from aivision.linear import load_images
from aivision.probes import ImageProbeConfig, probe_images


@dataclass
class MeasureDataConfig:
    """The measured images: every image under ``root`` (any depth); ``resize`` as in ``aivision linear``."""

    root: str | None = None
    resize: int | None = None


@dataclass
class MeasureConfig:
    """A measurement run (see the module docstring).

    ``descriptors``: "all", "none", "spatial=1,appearance=0" or K numbers, one table row each; ``interpolate``: two
    of them (or none); ``learned_results``: ``results.json`` files (or their run folders) of ``aivision linear`` or
    ``aivision fewshot``, whose learned i are plotted side by side, labelled by their run folder's name.
    """

    checkpoint: str | None = None
    out_dir: str = "runs/measure"
    data: MeasureDataConfig = field(default_factory=MeasureDataConfig)
    images: int = 256
    batch_size: int = 64
    metric: str = "cosine"
    descriptors: list[str] = field(default_factory=lambda: ["all", "none"])
    interpolate: list[str] = field(default_factory=lambda: ["all", "none"])
    interpolation_steps: int = 9
    probe: ImageProbeConfig = field(default_factory=ImageProbeConfig)
    learned_results: list[str] = field(default_factory=list)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.images < (2 if self.metric == "mahalanobis" else 1) or self.batch_size < 1:
            raise ValueError(f"images and batch_size must be positive (2 images for mahalanobis), got {self.images}, "
                             f"{self.batch_size}")
        texts = [text.strip() for text in self.descriptors]
        if not texts or len(set(texts)) != len(texts):
            raise ValueError(f"descriptors must list at least one descriptor, each once, got {self.descriptors}")
        if len(self.interpolate) not in (0, 2) or self.interpolation_steps < 2:
            raise ValueError(f"interpolate takes two descriptors (or none) and interpolation_steps >= 2, got "
                             f"{self.interpolate} and {self.interpolation_steps}")


def parse_measure_config(raw: dict[str, Any]) -> MeasureConfig:
    """Validate a raw config mapping; the checkpoint and the image folder must be given."""
    config = from_dict(MeasureConfig, raw)
    _require_inputs(config)
    return config


def _require_inputs(config: MeasureConfig) -> None:
    if not config.checkpoint:
        raise ConfigError("checkpoint is not set: give checkpoint=runs/<pretraining run> (or a checkpoint directory)")
    require_directory(config.data.root, "data.root", "image folder")


def read_images(config: MeasureConfig, encoder: PretrainedEncoder) -> torch.Tensor:
    """uint8 ``[N, 3, s, s]``: the first ``config.images`` images under ``data.root`` in path order, at the encoder's
    input size ``s``."""
    entries = folder_images(require_directory(config.data.root, "data.root", "image folder"))
    return load_images(entries[: config.images], encoder, config.data.resize)


def _per_probe(
    table: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    images: torch.Tensor,
    views: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """``[rows, A]``: ``table(clean tiled M times, views with M magnitudes)`` per M, columns in ``views`` order."""
    count = images.shape[0]
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for name, view in views.items():
        if view.shape[0] % count or view.shape[1:] != images.shape[1:]:
            raise ValueError(f"view {name!r} of shape {tuple(view.shape)} is not M copies of {tuple(images.shape)}")
        groups.setdefault(view.shape[0] // count, {})[name] = view
    columns: dict[str, torch.Tensor] = {}
    for magnitudes, group in groups.items():
        values = table(images.repeat(magnitudes, 1, 1, 1), group)
        columns.update(zip(group, values.unbind(1)))
    return torch.stack([columns[name] for name in views], dim=1)


def probe_table(
    encode: Encoder,
    images: torch.Tensor,
    views: Mapping[str, torch.Tensor],
    descriptors: torch.Tensor,
    labels: list[str],
    batch_size: int = 64,
    metric: str = "cosine",
    device: torch.device | str | None = None,
) -> InvarianceTable:
    """The invariance table of stacked probe views (see :func:`~aivision.probes.probe_images`), averaged over each
    probe's magnitudes.

    Args:
        encode: ``encode(x, i) -> [B, F]`` taking batches of ``images`` and views (e.g. uint8, through the input
            transform), in eval mode.
        images: the clean images ``[N, ...]``.
        views: probe name -> ``[M * N, ...]``, magnitude-major.
        descriptors: ``[D, K]``, labelled by ``labels``.
    """
    descriptors = torch.as_tensor(descriptors, dtype=torch.float32)
    values = _per_probe(
        lambda clean, group: invariance_table(encode, clean, group, descriptors, batch_size, metric, device),
        images, views,
    )
    return InvarianceTable(tuple(views), tuple(labels), descriptors, values, metric, int(images.shape[0]))


def probe_curve(
    encode: Encoder,
    images: torch.Tensor,
    views: Mapping[str, torch.Tensor],
    start: torch.Tensor,
    end: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    metric: str = "cosine",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Invariance ``[steps, A]`` of stacked probe views along the line of descriptors from ``start`` to ``end``."""
    return _per_probe(
        lambda clean, group: interpolation_curve(encode, clean, group, start, end, steps, batch_size, metric, device),
        images, views,
    )


def learned_invariance(path: Path, factors: list[str]) -> list[float]:
    """The learned i of a ``results.json`` of ``aivision linear`` (``readouts.learned.descriptor``) or ``aivision
    fewshot`` (the first row with ``learned_i``), in the order of ``factors``."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a readable results.json ({error})") from None
    if isinstance(report.get("readouts"), dict):
        descriptor = (report["readouts"].get("learned") or {}).get("descriptor")
        if not descriptor:
            raise ConfigError(f"{path} holds no learned readout (was the checkpoint amortised, learn_invariance on?)")
        if sorted(descriptor) != sorted(factors):
            raise ConfigError(f"{path} learned i over {sorted(descriptor)}; the encoder's factors are {factors}")
        return [float(descriptor[name]) for name in factors]
    if isinstance(report.get("rows"), list):
        learned = [row["learned_i"] for row in report["rows"] if row.get("learned_i")]
        if not learned:
            raise ConfigError(f"{path} holds no learned invariance (was the checkpoint amortised?)")
        if report.get("factors", factors) != factors:
            raise ConfigError(f"{path} learned i over {report['factors']}; the encoder's factors are {factors}")
        return [float(v) for v in learned[0]]
    raise ConfigError(f"{path} is neither an aivision linear nor an aivision fewshot results.json")


def _learned_per_task(paths: list[str], factors: list[str]) -> dict[str, list[float]]:
    per_task: dict[str, list[float]] = {}
    for text in paths:
        path = Path(text).expanduser()
        path = path / "results.json" if path.is_dir() else path
        base = path.parent.name or path.stem
        task, copy = base, 2
        while task in per_task:
            task, copy = f"{base} ({copy})", copy + 1
        per_task[task] = learned_invariance(path, factors)
    return per_task


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "descriptor"


def run_measure(config: MeasureConfig) -> dict[str, Any]:
    """Measure; write the table and figures to ``out_dir``; returns ``out_dir``, the files written and the rows.

    A plain (not amortised) encoder ignores its descriptor: it gets one row, ``all``, and no interpolation.
    """
    _require_inputs(config)
    device = resolve_device(config.device)
    encoder = load_encoder(Path(config.checkpoint).expanduser(), device)
    factors = list(encoder.space.names)
    labels = [text.strip() for text in config.descriptors] if encoder.amortised else ["all"]
    descriptors = torch.stack([encoder.descriptor(text) for text in labels])  # a bad descriptor stops before reading
    per_task = _learned_per_task(config.learned_results, factors)
    images = read_images(config, encoder).to(device)
    views = probe_images(images, config.probe, config.batch_size)
    names = list(views)

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return encoder(encoder.inputs(x), i)

    table = probe_table(encode, images, views, descriptors, labels, config.batch_size, config.metric, device)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [table.write_markdown(out / "invariance.md"), table.write_csv(out / "invariance.csv"),
               table.write_json(out / "invariance.json")]
    if len(names) >= 3:  # a radar needs three spokes
        for label, values in zip(labels, table.values):
            written.append(radar_chart(values, names, out / f"radar_{_slug(label)}.png", title=f"invariance at i = {label}"))
    if config.interpolate and encoder.amortised:
        start, end = (encoder.descriptor(text.strip()) for text in config.interpolate)
        curve = probe_curve(encode, images, views, start, end, config.interpolation_steps, config.batch_size,
                            config.metric, device)
        written.append(interpolation_plot(curve, names, out / "interpolation.png", *config.interpolate,
                                          ylabel=f"invariance (mean {config.metric} similarity)"))
    if per_task:
        written.append(learned_invariance_bars(per_task, factors, out / "learned_invariance.png"))
    return {"out_dir": str(out), "files": [str(p) for p in written], "table": table.to_rows()}
