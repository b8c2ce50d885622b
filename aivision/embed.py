"""``aivision embed``: features of every image under a folder at a given invariance, as ``.npz``.

The ``.npz`` holds ``keys`` (paths relative to the folder), ``features`` ``[N, F]``, ``invariance`` ``[K]`` and
``factors`` (the factor names). The invariance is checked before any image is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aiaudio.config import require_directory
from aiaudio.engine.files import atomic_output
from aiaudio.engine.pretrained import load_encoder
from aiaudio.engine.runtime import resolve_device
from aivision.data import IMAGE_EXTENSIONS, ImageDataError, ImageEntry
from aivision.linear import load_images


def folder_images(folder: Path) -> list[ImageEntry]:
    """Every image under ``folder`` (any depth), sorted by path."""
    entries = [
        ImageEntry(path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    if not entries:
        raise ImageDataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return entries


def run_embed(
    checkpoint: str, folder: str, out: str, invariance: str | None = None, batch_size: int = 64,
    device: str = "auto", resize: int | None = None,
) -> Path:
    """Embed every image under ``folder`` and write the ``.npz`` to ``out``; returns its path."""
    encoder = load_encoder(Path(checkpoint).expanduser(), resolve_device(device))
    descriptor = encoder.descriptor(invariance)  # a bad invariance stops here, before any image is read
    entries = folder_images(require_directory(folder, "IMAGES_DIR", "images"))
    images = load_images(entries, encoder, resize)
    features = torch.cat([
        encoder.embed(images[start : start + batch_size], descriptor, batch_size).cpu()
        for start in range(0, len(images), batch_size)
    ])
    out_path = Path(out)
    with atomic_output(out_path) as tmp:
        np.savez(tmp, keys=np.array([e.key for e in entries]), features=features.numpy(),
                 invariance=descriptor.numpy(), factors=np.array(encoder.space.names))
    return out_path
