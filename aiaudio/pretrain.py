"""Audio pretraining: wires the config, the waveform cache, CLAR views, the encoder, SimCLR and the trainer.

``aiaudio cache CONFIG`` builds the waveform cache named by the config; ``aiaudio pretrain CONFIG`` trains (or resumes)
in ``run_dir``. Both read the same config, so they agree on where the cache lives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from aiaudio.audio.augment import ClarAugment, ClarConfig
from aiaudio.audio.cache import CacheReport, CropDataset, WaveformCache, build_cache, int16_to_float
from aiaudio.audio.datasets import folder_entries, fsd50k_entries
from aiaudio.audio.frontend import LogMel, LogMelConfig, compute_stats
from aiaudio.config import ConfigError, from_dict, to_dict
from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.files import atomic_write_text
from aiaudio.engine.distributed import DistInfo, cleanup, init_distributed
from aiaudio.engine.trainer import Trainer, TrainerConfig
from aiaudio.invariance import CLAR_NAMES, InvarianceSpace
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aiaudio.methods.simclr import SimCLR
from aiaudio.nn import ProjectionHead, build_encoder
from aiaudio.seeding import generator_for

log = logging.getLogger(__name__)

_STATS_STREAM = 4  # stream id for the clips used to estimate the normalisation statistics

#: Config keys whose change between an interrupted run and its resumption does not change what is computed.
RESUME_SAFE_KEYS = (
    "trainer.steps", "trainer.log_every", "trainer.ckpt_every", "trainer.keep_checkpoints", "trainer.num_workers",
    "trainer.progress", "trainer.tensorboard", "trainer.compile", "data.root", "data.cache_dir", "data.cache_workers",
    "run_dir",
)


@dataclass
class DataConfig:
    """Where the pretraining audio comes from.

    ``format``: "fsd50k" (the official layout under ``root``) or "folder" (every audio file under ``root``).
    ``cache_dir``: the waveform cache; by default ``$AIAUDIO_CACHE`` (or ``~/.cache/aiaudio``) plus a name derived
    from the format, split, rate and the absolute root.
    """

    root: str | None = None
    format: str = "fsd50k"
    split: str = "train"
    cache_dir: str | None = None
    sample_rate: int = 16000
    crop_seconds: float = 5.0
    cache_workers: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ("fsd50k", "folder"):
            raise ValueError(f"data.format must be fsd50k or folder, got {self.format!r}")
        if self.crop_seconds <= 0:
            raise ValueError(f"data.crop_seconds must be positive, got {self.crop_seconds}")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        if not self.root:
            raise ConfigError("data.root is not set: give data.root=/path/to/dataset (or data.cache_dir=...)")
        base = Path(os.environ.get("AIAUDIO_CACHE", Path.home() / ".cache" / "aiaudio")).expanduser()
        digest = hashlib.sha1(str(Path(self.root).expanduser().resolve()).encode()).hexdigest()[:10]
        return base / f"{self.format}-{self.split}-{self.sample_rate // 1000}k-{digest}"


@dataclass
class InvarianceConfig:
    """``mode``: "amortised" (a descriptor drawn per step from the space) or "fixed" (``fixed``, default all on)."""

    mode: str = "amortised"
    min_active: int = 2
    fixed: list[float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("amortised", "fixed"):
            raise ValueError(f"invariance.mode must be amortised or fixed, got {self.mode!r}")
        if self.mode == "amortised" and self.fixed is not None:
            raise ValueError("invariance.fixed is only used with invariance.mode=fixed; remove it or set the mode")


@dataclass
class ModelConfig:
    """The encoder (a Hyper-ResNet or a plain ResNet baseline) and the projection head."""

    encoder: str = "hyper_resnet18"
    width: float = 1.0
    hyper_hidden: int = 32
    embed_dim: int = 16
    dependence: float = 0.5
    zero_init_last: bool = False  # True zeroes each block's residual branch at init: i would act only via downsamples
    projector_hidden: int = 512
    projector_dim: int = 128


@dataclass
class MethodConfig:
    name: str = "simclr"
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.name != "simclr":
            raise ValueError(f"method.name: only simclr is implemented for audio, got {self.name!r}")


@dataclass
class NormalizationConfig:
    """Global log-mel statistics are estimated from ``clips`` un-augmented training crops before step 0."""

    clips: int = 512


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    invariance: InvarianceConfig = field(default_factory=InvarianceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    frontend: LogMelConfig = field(default_factory=LogMelConfig)
    augment: ClarConfig = field(default_factory=ClarConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.frontend.sample_rate != self.data.sample_rate:
            raise ValueError(
                f"frontend.sample_rate ({self.frontend.sample_rate}) must equal data.sample_rate ({self.data.sample_rate})"
            )


def parse_config(raw: dict[str, Any]) -> PretrainConfig:
    """Validate a raw config mapping into a :class:`PretrainConfig`."""
    return from_dict(PretrainConfig, raw)


class AudioViews(nn.Module):
    """Two CLAR views of an int16 waveform batch, made in one batched pass of the augmentation pipeline."""

    def __init__(self, augment: ClarAugment) -> None:
        super().__init__()
        self.augment = augment

    def forward(
        self, batch: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        wave = int16_to_float(batch)
        both = self.augment(torch.cat([wave, wave], dim=0), descriptor, generator)
        return both.chunk(2, dim=0)


def build_space(config: PretrainConfig) -> InvarianceSpace:
    return InvarianceSpace(CLAR_NAMES, min_active=config.invariance.min_active)


def build_encoder_from_config(config: PretrainConfig) -> nn.Module:
    m = config.model
    return build_encoder(
        m.encoder, in_chans=1, inv_dim=len(CLAR_NAMES), width=m.width, hyper_hidden=m.hyper_hidden,
        embed_dim=m.embed_dim, dependence=m.dependence, zero_init_last=m.zero_init_last,
    )


def build_pretrainer(config: PretrainConfig, channels_last: bool = False) -> ContrastivePretrainer:
    """The full pretraining module (views, encoder, projector, method) from a config, freshly initialised."""
    torch.manual_seed(config.trainer.seed)  # identical initial weights on every rank
    space = build_space(config)
    frontend = LogMel(config.frontend)
    views = AudioViews(ClarAugment(config.augment, frontend))
    encoder = build_encoder_from_config(config)
    projector = ProjectionHead(encoder.num_features, config.model.projector_hidden, config.model.projector_dim)
    method = SimCLR(encoder, projector, temperature=config.method.temperature)
    fixed = None
    if config.invariance.mode == "fixed":
        fixed = torch.tensor(config.invariance.fixed) if config.invariance.fixed is not None else space.all_on()
    return ContrastivePretrainer(views, method, space, config.trainer.seed, fixed, channels_last=channels_last)


def cache_entries(config: DataConfig) -> list:
    """The clips of the configured dataset split."""
    if not config.root:
        raise ConfigError("data.root is not set: give data.root=/path/to/dataset")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root {root} is not a directory")
    if config.format == "fsd50k":
        return fsd50k_entries(root, config.split)
    return folder_entries(root)


def run_cache(config: PretrainConfig, progress: bool = True, overwrite: bool = False) -> CacheReport:
    """Build (or confirm) the waveform cache of the configured data; ``overwrite`` rebuilds a different one."""
    return cache_data(config.data, progress, overwrite)


def cache_data(data: DataConfig, progress: bool = True, overwrite: bool = False) -> CacheReport:
    """Build (or confirm) the waveform cache of ``data``."""
    return build_cache(
        cache_entries(data), data.resolved_cache_dir(), sample_rate=data.sample_rate, workers=data.cache_workers,
        progress=progress, overwrite=overwrite, source=f"{data.format}:{data.root}:{data.split}",
    )


def open_cache(config: DataConfig) -> WaveformCache:
    """The configured waveform cache (a missing or broken one raises CacheError, which says to run `aiaudio cache`)."""
    cache = WaveformCache(config.resolved_cache_dir())
    if cache.sample_rate != config.sample_rate:
        raise ConfigError(
            f"the cache at {cache.directory} is at {cache.sample_rate} Hz; data.sample_rate is {config.sample_rate}"
        )
    return cache


@torch.no_grad()
def estimate_normalization(model: ContrastivePretrainer, dataset: CropDataset, clips: int, seed: int) -> tuple[float, float]:
    """Scalar mean/std of un-augmented log-mels over ``clips`` seeded training crops."""
    count = min(clips, len(dataset))
    generator = generator_for(seed, _STATS_STREAM)
    order = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    frontend: LogMel = model.views.augment.frontend
    batches = (
        int16_to_float(torch.stack([dataset[(index, seed)] for index in order[start : start + 64]]))
        for start in range(0, count, 64)
    )
    return compute_stats(frontend, batches)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_resume_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume a run whose saved config differs in anything that changes the computation."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or latest_checkpoint(run_dir) is None:
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    now = _flatten(resolved)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUME_SAFE_KEYS)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({details}); resume with the same config, "
            "or choose a new run_dir=..."
        )


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) the configured run; returns the trainer's summary."""
    dist_info: DistInfo = init_distributed(config.trainer.device)
    try:
        run_dir = Path(config.run_dir)
        resolved = to_dict(config)
        check_resume_config(run_dir, resolved)
        cache = open_cache(config.data)
        crop = int(round(config.data.crop_seconds * config.data.sample_rate))
        dataset = CropDataset(cache, crop)
        model = build_pretrainer(config, channels_last=config.trainer.use_channels_last(dist_info.device))
        if latest_checkpoint(run_dir) is None:
            mean, std = estimate_normalization(model, dataset, config.normalization.clips, config.trainer.seed)
            model.views.augment.frontend.set_stats(mean, std)
            if dist_info.is_main:
                log.info("log-mel normalisation from %d clips: mean %.3f dB, std %.3f dB", config.normalization.clips, mean, std)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        trainer = Trainer(model, dataset, config.trainer, run_dir, resolved, dist_info)
        summary = trainer.fit()
        summary["run_dir"] = str(run_dir)
        summary["clips"] = len(cache)
        return summary
    finally:
        cleanup()

