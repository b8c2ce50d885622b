"""``aiaudio embed``: features of every audio file under a folder, at a given invariance.

Each clip is decoded once into a waveform cache (16 kHz mono), cut into consecutive ``seconds`` segments (a short clip
or the last partial segment tiled to length), embedded in batches with the pretraining frontend, and its segment
features averaged. The output ``.npz`` holds ``keys`` (paths relative to the folder), ``features`` ``[C, F]``,
``invariance`` ``[K]`` and ``factors`` (the factor names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aiaudio.audio.cache import WaveformCache, int16_to_float
from aiaudio.encoder import load_encoder, logmel_of
from aiaudio.engine.files import atomic_output
from aiaudio.engine.runtime import resolve_device
from aiaudio.audio.data import DataConfig, cache_data


def clip_segments(samples: np.ndarray, length: int) -> np.ndarray:
    """``[n, length]`` consecutive segments of a clip; the clip is tiled up to a whole number of segments."""
    count = max(1, -(-len(samples) // length))
    return np.resize(samples, count * length).reshape(count, length)  # np.resize repeats the clip (tiling)


def run_embed(
    checkpoint: str, folder: str, out: str, invariance: str | None = None, seconds: float = 5.0,
    batch_size: int = 64, device: str = "auto", cache_dir: str | None = None,
) -> Path:
    """Embed every audio file under ``folder`` and write the ``.npz`` to ``out``; returns its path."""
    target = resolve_device(device)
    model = load_encoder(checkpoint, target)
    descriptor = model.descriptor(invariance)  # a bad invariance stops here, before any audio is decoded
    data = DataConfig(root=folder, format="folder", cache_dir=cache_dir, sample_rate=logmel_of(model).config.sample_rate)
    cache_data(data, progress=False, follow_entries=True)
    cache = WaveformCache(data.resolved_cache_dir())
    length = int(round(seconds * data.sample_rate))
    features = torch.zeros(len(cache), model.num_features)
    pending: list[np.ndarray] = []
    owners: list[int] = []

    def flush() -> None:
        batch = int16_to_float(torch.from_numpy(np.concatenate(pending)))
        embedded = model.embed(batch, descriptor, batch_size).cpu()
        owner = torch.tensor(owners)
        features.index_add_(0, owner, embedded)
        features[owner.unique()] /= torch.bincount(owner)[owner.unique()].unsqueeze(1).float()
        pending.clear()
        owners.clear()

    for index in range(len(cache)):  # assembling segments is I/O; the embedding itself runs in batches
        segments = clip_segments(np.asarray(cache.clip(index)), length)
        pending.append(segments)
        owners.extend([index] * len(segments))
        if len(owners) >= batch_size:
            flush()
    if owners:
        flush()
    out_path = Path(out)
    with atomic_output(out_path) as tmp:
        np.savez(
            tmp, keys=np.array(cache.keys), features=features.numpy(), invariance=descriptor.numpy(),
            factors=np.array(model.space.names),
        )
    return out_path
