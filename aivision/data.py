"""Images from disk: the ImageFolder layout (ImageNet, ImageNet-100, any ``root/<class>/*.jpg``), a labelled CSV, and
a data set that decodes, resizes and centre-crops each image to a fixed storage size for batching.

Decoding uses ``torchvision.io`` (JPEG, PNG, GIF, WebP; RGB; EXIF orientation applied). A file that cannot be decoded
during training is named in a warning and replaced by the next readable image, so a long run goes on; a data set
whose listing is empty or malformed stops before any work with a message naming the folder or file.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from aiaudio.config import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


class ImageDataError(DataError):
    """An image data set's files or metadata are missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ImageEntry:
    """One image: its key (path relative to the data root), its path and its labels (class name, or targets)."""

    key: str
    path: Path
    labels: tuple[str, ...] = ()


def image_folder_entries(root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[ImageEntry]:
    """Every image under ``root/<class>/`` (any depth), labelled by its class folder, sorted by path.

    Raises:
        ImageDataError: ``root`` is not a folder, holds no class folder, or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageDataError(f"{root} is not a directory (expected the ImageFolder layout root/<class>/*.jpg)")
    entries = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in extensions or not path.is_file():
            continue
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            raise ImageDataError(f"{path} lies directly in {root}; put images in class folders (root/<class>/...)")
        entries.append(ImageEntry(relative.as_posix(), path, (relative.parts[0],)))
    if not entries:
        raise ImageDataError(f"{root} holds no images ({', '.join(extensions)}) in class folders")
    return entries


def csv_image_entries(csv_path: Path, root: Path | None, path_column: str, columns: Sequence[str]) -> list[ImageEntry]:
    """Images listed in a CSV (with a header row): the path column (relative to ``root``, default the CSV's folder)
    and the value of each of ``columns`` as the labels.

    Raises:
        ImageDataError: the CSV or a column is missing, a cell is empty, or a listed image does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ImageDataError(f"{csv_path} does not exist")
    base = Path(root) if root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (path_column, *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ImageDataError(f"{csv_path} lacks column(s) {missing}; it has {reader.fieldnames}")
        entries = []
        for line, row in enumerate(reader, start=2):
            values = tuple((row[c] or "").strip() for c in columns)
            if not row[path_column] or not all(values):
                raise ImageDataError(f"{csv_path}, line {line}: an empty cell in {[path_column, *columns]}")
            path = (base / row[path_column]).resolve()
            if not path.is_relative_to(base.resolve()):
                raise ImageDataError(f"{csv_path}, line {line}: {row[path_column]!r} points outside {base}")
            if not path.is_file():
                raise ImageDataError(f"{csv_path}, line {line}: no image at {path}")
            entries.append(ImageEntry(row[path_column], path, values))
    if not entries:
        raise ImageDataError(f"{csv_path} lists no images")
    return entries


def load_image(path: Path, size: int, resize: int | None = None) -> torch.Tensor:
    """uint8 ``[3, size, size]``: the image decoded as RGB, its shorter side resized to ``resize`` (default ``size``;
    bilinear, antialiased), then centre-cropped to ``size`` square (the evaluation protocol: resize 256, crop 224).
    Raises ImageDataError naming the file when it does not decode."""
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError) as error:
        raise ImageDataError(f"{path} is not a readable image ({error})") from None
    resized = resize_square(image, resize or size)
    offset = (resized.shape[-1] - size) // 2
    return resized[:, offset : offset + size, offset : offset + size].contiguous() if offset > 0 else resized


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of uint8 ``[3, H, W]`` to ``size`` and centre-crop to ``[3, size, size]``."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, math.ceil(height * scale - 1e-6)), max(size, math.ceil(width * scale - 1e-6))
    if (new_h, new_w) != (height, width):
        resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        image = resized.round().clamp(0, 255).to(torch.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


class ImageSet(Dataset):
    """Images at a fixed storage size, indexed by ``(index, item_seed)`` as the trainer asks.

    An image that does not decode is named in a warning (once per process) and replaced by the next one that does.

    Args:
        entries: the images.
        size: storage size S (each item is uint8 ``[3, S, S]``).
        resize: the shorter side before the centre crop to S (default S).
    """

    def __init__(self, entries: Sequence[ImageEntry], size: int, resize: int | None = None) -> None:
        if not entries:
            raise ImageDataError("an image set needs at least one image")
        if size < 8 or (resize is not None and resize < size):
            raise ImageDataError(f"image sizes need size >= 8 and resize >= size, got {size} and {resize}")
        self.entries, self.size, self.resize = list(entries), size, resize
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int] | int) -> torch.Tensor:
        index = key[0] if isinstance(key, tuple) else key
        for offset in range(min(len(self.entries), 100)):
            entry = self.entries[(index + offset) % len(self.entries)]
            try:
                return load_image(entry.path, self.size, self.resize)
            except ImageDataError as error:
                if entry.key not in self._warned:
                    self._warned.add(entry.key)
                    log.warning("skipping an unreadable image: %s", error)
        raise ImageDataError(f"100 images in a row from {self.entries[index].path} on are unreadable")

    def load_all(self) -> torch.Tensor:
        """uint8 ``[N, 3, S, S]`` of every image, in order; an unreadable one stops with an error naming it (an
        evaluation set must be whole)."""
        return torch.stack([load_image(entry.path, self.size, self.resize) for entry in self.entries])
