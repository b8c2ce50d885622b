"""Audio pretraining, wired on the core protocol: the config, CLAR views of cached waveforms, the log-mel input
transform and its normalisation statistics.

The run skeleton, the model, method and invariance configs and the resume check are the core's
(:mod:`aiaudio.engine.pretraining`); this module adds what only audio has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from aiaudio.audio.augment import ClarAugment, ClarConfig
from aiaudio.audio.cache import CropDataset, int16_to_float
from aiaudio.audio.clar import CLAR_NAMES
from aiaudio.audio.data import DataConfig, open_cache
from aiaudio.audio.frontend import LogMel, LogMelConfig, compute_stats
from aiaudio.config import from_dict, to_dict
from aiaudio.engine.distributed import DistInfo
from aiaudio.engine.pretraining import (
    RESUME_SAFE_KEYS as CORE_RESUME_SAFE_KEYS,
    InvarianceConfig,
    MethodConfig,
    ModelConfig,
    PretrainParts,
    build_pretrainer as build_core_pretrainer,
)
from aiaudio.engine.trainer import TrainerConfig
from aiaudio.invariance import InvarianceSpace
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aiaudio.seeding import generator_for

log = logging.getLogger(__name__)

_STATS_STREAM = 4  # stream id for the clips used to estimate the normalisation statistics
IN_CHANS = 1  # a log-mel spectrogram is one channel

#: Keys that may change when a run resumes: the core's, and the number of cache decoding workers.
RESUME_SAFE_KEYS: tuple[str, ...] = (*CORE_RESUME_SAFE_KEYS, "data.cache_workers", "data.file_timeout")


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
        if self.invariance.min_active is None:
            self.invariance.min_active = 2  # the 120 CLAR descriptors with at least two augmentations on
        if not 0 <= self.invariance.min_active <= len(CLAR_NAMES):
            raise ValueError(
                f"invariance.min_active must lie in [0, {len(CLAR_NAMES)}] (the CLAR space has {len(CLAR_NAMES)} "
                f"factors), got {self.invariance.min_active}"
            )
        crop = int(round(self.data.crop_seconds * self.data.sample_rate))
        if crop < self.frontend.n_fft:
            raise ValueError(
                f"data.crop_seconds={self.data.crop_seconds} gives {crop} samples, fewer than one FFT window "
                f"(frontend.n_fft={self.frontend.n_fft}); use at least {self.frontend.n_fft / self.data.sample_rate:.3f} s"
            )
        if self.frontend.sample_rate != self.data.sample_rate:
            raise ValueError(
                f"frontend.sample_rate ({self.frontend.sample_rate}) must equal data.sample_rate ({self.data.sample_rate})"
            )


def parse_config(raw: dict[str, Any]) -> PretrainConfig:
    """Validate a raw config mapping into a :class:`PretrainConfig`."""
    return from_dict(PretrainConfig, raw)


def normalize_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config as the current code resolves it (new keys at their defaults, old names mapped)."""
    return to_dict(parse_config(raw))


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


def build_pretrainer(config: PretrainConfig, channels_last: bool = False) -> tuple[ContrastivePretrainer, dict[str, Any]]:
    """The full pretraining module (views, encoder, heads, method), freshly initialised, and its encoder record."""
    frontend = LogMel(config.frontend)
    views = AudioViews(ClarAugment(config.augment, frontend))
    return build_core_pretrainer(
        views, build_space(config), IN_CHANS, config.model, config.method, config.invariance, config.trainer.seed,
        channels_last=channels_last, transform=frontend, transform_kind="logmel", transform_config=to_dict(config.frontend),
    )


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


def pretrain_parts(config: PretrainConfig, dist_info: DistInfo) -> PretrainParts:
    """The audio parts of a run: cached crops, CLAR views, and the log-mel statistics of a fresh run."""
    cache = open_cache(config.data)
    dataset = CropDataset(cache, int(round(config.data.crop_seconds * config.data.sample_rate)))
    model, record = build_pretrainer(config, channels_last=config.trainer.use_channels_last(dist_info.device))

    def prepare(info: DistInfo) -> None:
        mean, std = estimate_normalization(model, dataset, config.normalization.clips, config.trainer.seed)
        model.views.augment.frontend.set_stats(mean, std)
        if info.is_main:
            log.info("log-mel normalisation from %d clips: mean %.3f dB, std %.3f dB", config.normalization.clips, mean, std)

    return PretrainParts(model, dataset, record, prepare, {"clips": len(cache)})
