"""``aiaudio measure``: how invariant a pretrained encoder is to each CLAR augmentation, per descriptor.

For ``clips`` un-augmented crops of the configured audio and each augmentation at fixed parameters (the probes), the
mean similarity between the features of a crop and of its augmented copy (Ericsson et al.), for every descriptor
asked for. Writes ``invariance.{md,csv,json}``, a radar chart per descriptor, the interpolation curve between two
descriptors, and, given few-shot results, a bar chart of the learned invariance per task.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aiaudio.audio.cache import CropDataset, int16_to_float
from aiaudio.audio.probes import ProbeConfig, clean_inputs, probe_views
from aiaudio.config import ConfigError, from_dict
from aiaudio.encoder import load_encoder, logmel_of
from aiaudio.eval.measure import interpolation_curve, measure_invariance
from aiaudio.eval.plots import interpolation_plot, learned_invariance_bars, radar_chart
from aiaudio.engine.runtime import resolve_device
from aiaudio.audio.data import DataConfig, cache_data, open_cache

_CROP_SEED = 12345  # the measured crops are fixed: the same clips and windows for every checkpoint


@dataclass
class MeasureConfig:
    """``descriptors``: "all", "none", "pitch_shift=1,fade_in=0,..." or K numbers; ``interpolate``: two of them;
    ``fewshot_results``: ``results.json`` files of ``aiaudio fewshot`` whose learned i are plotted side by side."""

    checkpoint: str | None = None
    out_dir: str = "runs/measure"
    data: DataConfig = field(default_factory=DataConfig)
    clips: int = 128
    batch_size: int = 32
    metric: str = "cosine"
    descriptors: list[str] = field(default_factory=lambda: ["all"])
    interpolate: list[str] = field(default_factory=lambda: ["all", "none"])
    interpolation_steps: int = 9
    pitch_domain: str = "waveform"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    fewshot_results: list[str] = field(default_factory=list)
    device: str = "auto"

    def __post_init__(self) -> None:
        if len(self.interpolate) not in (0, 2):
            raise ValueError(f"interpolate takes two descriptors (or none), got {self.interpolate}")


def parse_measure_config(raw: dict[str, Any]) -> MeasureConfig:
    return from_dict(MeasureConfig, raw)


def _descriptor(model, text: str) -> torch.Tensor:
    return torch.zeros(model.space.dim) if text.strip() == "none" else model.descriptor(text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "descriptor"


def run_measure(config: MeasureConfig) -> dict[str, Any]:
    """Measure, write the table and plots under ``out_dir``; returns the paths and the table rows."""
    if not config.checkpoint:
        raise ConfigError("give checkpoint=RUN_DIR to measure")
    device = resolve_device(config.device)
    model = load_encoder(config.checkpoint, device)
    cache_data(config.data, progress=False)
    dataset = CropDataset(open_cache(config.data), int(round(config.data.crop_seconds * config.data.sample_rate)))
    count = min(config.clips, len(dataset))
    wave = int16_to_float(torch.stack([dataset[(index, _CROP_SEED)] for index in range(count)])).to(device)
    with torch.no_grad():
        frontend = logmel_of(model)
        inputs = clean_inputs(wave, frontend, config.batch_size)
        views = probe_views(wave, frontend, config.probe, config.pitch_domain, config.batch_size)
    names = list(views)
    descriptors = torch.stack([_descriptor(model, text) for text in config.descriptors])
    labels = [model.space.name_of(d) if text not in ("all", "none") else text for text, d in zip(config.descriptors, descriptors)]
    table = measure_invariance(
        model, inputs, views, descriptors, labels=labels, batch_size=config.batch_size, metric=config.metric, device=device
    )
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [table.write_markdown(out / "invariance.md"), table.write_csv(out / "invariance.csv"), table.write_json(out / "invariance.json")]
    for label, values in zip(labels, table.values):
        written.append(radar_chart(values, names, out / f"radar_{_slug(label)}.png", title=f"invariance at i = {label}"))
    if config.interpolate:
        start, end = (_descriptor(model, text) for text in config.interpolate)
        curve = interpolation_curve(
            model, inputs, views, start, end, config.interpolation_steps, config.batch_size, config.metric, device
        )
        written.append(interpolation_plot(curve, names, out / "interpolation.png", config.interpolate[0], config.interpolate[1]))
    if config.fewshot_results:
        per_task = {}
        for path in config.fewshot_results:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
            learned = [row for row in report["rows"] if row.get("learned_i")]
            if not learned:
                raise ConfigError(f"{path} holds no learned invariance (was the checkpoint amortised?)")
            data = report["config"]["data"]
            task = f"{data['name']}:{data['label']}" if data["name"] == "synthetic" else data["name"]
            per_task[task] = learned[0]["learned_i"]
        written.append(learned_invariance_bars(per_task, list(model.space.names), out / "learned_invariance.png"))
    return {"out_dir": str(out), "files": [str(p) for p in written], "table": table.to_rows()}
