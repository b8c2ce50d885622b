"""``aiaudio cache`` and ``aiaudio pretrain``: the commands of audio pretraining.

``aiaudio cache CONFIG`` builds the waveform cache named by the config; ``aiaudio pretrain CONFIG`` trains (or resumes)
in ``run_dir``. Both read the same config, so they agree on where the cache lives. The wiring is
:mod:`aiaudio.audio.pretraining` on the core's run skeleton (:mod:`aiaudio.engine.pretraining`).
"""

from __future__ import annotations

from typing import Any

from aiaudio.audio.cache import CacheReport
from aiaudio.audio.data import DataConfig, cache_data
from aiaudio.audio.pretraining import (
    RESUME_SAFE_KEYS,
    PretrainConfig,
    build_pretrainer,
    build_space,
    normalize_config,
    parse_config,
    pretrain_parts,
)
from aiaudio.engine.pretraining import run_pretraining

__all__ = [
    "RESUME_SAFE_KEYS", "DataConfig", "PretrainConfig", "build_pretrainer", "build_space", "parse_config",
    "run_cache", "run_pretrain",
]


def run_cache(config: PretrainConfig, progress: bool = True, overwrite: bool = False) -> CacheReport:
    """Build (or confirm) the waveform cache of the configured data; ``overwrite`` rebuilds a different one."""
    return cache_data(config.data, progress, overwrite)


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) the configured run; returns the trainer's summary."""
    return run_pretraining(
        config.run_dir, config, config.trainer, lambda info: pretrain_parts(config, info), normalize_config,
        RESUME_SAFE_KEYS,
    )
