"""Pretraining audio: which clips a config names, and the waveform cache built from them.

``aiaudio cache CONFIG`` and ``aiaudio pretrain CONFIG`` read the same :class:`DataConfig`, so they agree on where
the cache lives.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from aiaudio.audio.cache import DEFAULT_FILE_TIMEOUT, CacheReport, ClipEntry, WaveformCache, build_cache
from aiaudio.audio.datasets import folder_entries, fsd50k_entries
from aiaudio.config import ConfigError, require_directory


def default_cache_root() -> Path:
    """``$AIAUDIO_CACHE``, or ``~/.cache/aiaudio``: the parent of every audio cache not given a folder."""
    return Path(os.environ.get("AIAUDIO_CACHE", Path.home() / ".cache" / "aiaudio")).expanduser()


@dataclass
class DataConfig:
    """Where the pretraining audio comes from.

    ``format``: "fsd50k" (the official layout under ``root``) or "folder" (every audio file under ``root``).
    ``cache_dir``: the waveform cache; by default ``$AIAUDIO_CACHE`` (or ``~/.cache/aiaudio``) plus a name derived
    from the format, split, rate and the absolute root.
    ``file_timeout``: seconds one file may take to decode in a worker before it is counted as unreadable (null: no
    limit).
    """

    root: str | None = None
    format: str = "fsd50k"
    split: str = "train"
    cache_dir: str | None = None
    sample_rate: int = 16000
    crop_seconds: float = 5.0
    cache_workers: int | None = None
    file_timeout: float | None = DEFAULT_FILE_TIMEOUT

    def __post_init__(self) -> None:
        if self.format not in ("fsd50k", "folder"):
            raise ValueError(f"data.format must be fsd50k or folder, got {self.format!r}")
        if self.crop_seconds <= 0:
            raise ValueError(f"data.crop_seconds must be positive, got {self.crop_seconds}")
        if self.file_timeout is not None and not self.file_timeout > 0:
            raise ValueError(f"data.file_timeout must be positive seconds (or null), got {self.file_timeout}")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        if not self.root:
            raise ConfigError("data.root is not set: give data.root=/path/to/dataset (or data.cache_dir=...)")
        digest = hashlib.sha1(str(Path(self.root).expanduser().resolve()).encode()).hexdigest()[:10]
        return default_cache_root() / f"{self.format}-{self.split}-{self.sample_rate // 1000}k-{digest}"


def cache_entries(config: DataConfig) -> list[ClipEntry]:
    """The clips of the configured dataset split."""
    root = require_directory(config.root, "data.root", "dataset")
    if config.format == "fsd50k":
        return fsd50k_entries(root, config.split)
    return folder_entries(root)


def cache_data(
    data: DataConfig, progress: bool = True, overwrite: bool = False, follow_entries: bool = False
) -> CacheReport:
    """Build (or confirm) the waveform cache of ``data``; ``overwrite`` rebuilds it anyway; ``follow_entries``
    rebuilds a cache whose files were added, removed or renamed instead of refusing it."""
    return build_cache(
        cache_entries(data), data.resolved_cache_dir(), sample_rate=data.sample_rate, workers=data.cache_workers,
        progress=progress, overwrite=overwrite, source=f"{data.format}:{data.root}:{data.split}",
        file_timeout=data.file_timeout, follow_entries=follow_entries,
    )


def open_cache(config: DataConfig) -> WaveformCache:
    """The configured waveform cache (a missing or broken one raises CacheError, which says to run `aiaudio cache`)."""
    cache = WaveformCache(config.resolved_cache_dir())
    if cache.sample_rate != config.sample_rate:
        raise ConfigError(
            f"the cache at {cache.directory} is at {cache.sample_rate} Hz; data.sample_rate is {config.sample_rate}"
        )
    return cache
