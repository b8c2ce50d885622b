"""Fixed-parameter image probes for invariance measurement (Ericsson et al. 2022).

Each probe maps float images in [0, 1] ``[B, 3, H, W]`` to a transformed batch of the same size, with the same
parameters for every image and no loop over images:

* geometric: ``resized_crop`` (a centred crop keeping an area fraction, resized back), ``hflip``, ``vflip``,
  ``scale`` (zoom about the centre: < 1 zooms out, > 1 zooms in), ``rotation`` (degrees, counter-clockwise) and
  ``translation`` (``(dx, dy)`` as fractions of the width and height, right and down). The continuous ones are one
  bilinear ``affine_grid`` / ``grid_sample`` per batch; the area a warp uncovers is filled by ``padding``
  (``"border"`` repeats the edge pixels, ``"zeros"`` is black as torchvision's ``fill=0``, or ``"reflection"``).
* appearance: ``grayscale`` and the ``brightness``, ``contrast``, ``saturation`` (factors) and ``hue`` (shift in
  turns) adjustments, computed by the colour-jitter ops of pretraining (:mod:`aivision.augment`).

A probe has one or more magnitudes (flips and grayscale have one, ``None``); the measure averages over them.
:func:`probe_images` returns, per probe, the transformed copies at every magnitude stacked magnitude-major
(``[M * N, 3, H, W]``: rows ``m * N .. m * N + N - 1`` hold magnitude ``m``) as uint8, as an image file would hold
them: a quarter of the memory of floats, and the encoder's input transform turns them into model inputs batch by
batch.

Example:
    >>> views = probe_images(images, ImageProbeConfig())   # {"resized_crop": uint8 [4N, 3, H, W], "hflip": [N, ...]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from aivision.augment import _adjust, grayscale

PROBES: tuple[str, ...] = (
    "resized_crop", "hflip", "vflip", "scale", "rotation", "translation",
    "grayscale", "brightness", "contrast", "saturation", "hue",
)
SINGLE: tuple[str, ...] = ("hflip", "vflip", "grayscale")  # probes without a magnitude
PADDINGS: tuple[str, ...] = ("border", "zeros", "reflection")
_COLOUR_OPS = {"brightness": 0, "contrast": 1, "saturation": 2, "hue": 3}  # op indices of the colour jitter

Magnitude = float | tuple[float, float] | None


@dataclass
class ImageProbeConfig:
    """Which probes to measure (in table order) and the magnitudes of each.

    The defaults follow Ericsson et al.'s grid (rotation up to 180 degrees, colour factors 0.25-5, hue shifts within
    +-0.5), four magnitudes per probe so the clean features are shared by every multi-magnitude probe.

    Attributes:
        names: the probes, a subset of ``PROBES`` in the order of the table's columns.
        resized_crop: area fractions (0, 1] of the centred crop.
        scale: zoom factors (> 0; 0.5 shows the image at half size inside ``padding``).
        rotation: angles in degrees, counter-clockwise.
        translation: ``(dx, dy)`` shifts as fractions of the width and height (positive: right, down).
        brightness, contrast, saturation: multiplicative factors (>= 0; 1 leaves the image unchanged).
        hue: hue shifts in turns, within [-0.5, 0.5].
        padding: how a warp fills the area it uncovers (one of ``PADDINGS``).
    """

    names: list[str] = field(default_factory=lambda: list(PROBES))
    resized_crop: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    scale: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.25, 1.5])
    rotation: list[float] = field(default_factory=lambda: [45.0, 90.0, 135.0, 180.0])
    translation: list[tuple[float, float]] = field(
        default_factory=lambda: [(0.1, 0.0), (-0.1, 0.0), (0.0, 0.2), (0.0, -0.2)]
    )
    brightness: list[float] = field(default_factory=lambda: [0.25, 0.5, 2.0, 5.0])
    contrast: list[float] = field(default_factory=lambda: [0.25, 0.5, 2.0, 5.0])
    saturation: list[float] = field(default_factory=lambda: [0.25, 0.5, 2.0, 5.0])
    hue: list[float] = field(default_factory=lambda: [-0.4, -0.2, 0.2, 0.4])
    padding: str = "border"

    def __post_init__(self) -> None:
        unknown = [name for name in self.names if name not in PROBES]
        if unknown or not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"probe.names must list distinct probes of {list(PROBES)}, got {self.names}")
        if self.padding not in PADDINGS:
            raise ValueError(f"probe.padding must be one of {PADDINGS}, got {self.padding!r}")
        self.translation = [tuple(float(v) for v in shift) for shift in self.translation]  # type: ignore[misc]
        checks = {
            "resized_crop": (lambda v: 0 < v <= 1, "area fractions in (0, 1]"),
            "scale": (lambda v: v > 0, "positive factors"),
            "rotation": (math.isfinite, "finite angles"),
            "translation": (lambda v: len(v) == 2 and all(abs(x) <= 1 for x in v), "(dx, dy) pairs within [-1, 1]"),
            "brightness": (lambda v: v >= 0, "factors >= 0"),
            "contrast": (lambda v: v >= 0, "factors >= 0"),
            "saturation": (lambda v: v >= 0, "factors >= 0"),
            "hue": (lambda v: -0.5 <= v <= 0.5, "shifts within [-0.5, 0.5]"),
        }
        for name, (valid, what) in checks.items():
            values = getattr(self, name)
            if name in self.names and not values:
                raise ValueError(f"probe.{name} is measured but has no magnitudes")
            if not all(valid(v) for v in values):
                raise ValueError(f"probe.{name} must hold {what}, got {values}")

    def magnitudes(self) -> dict[str, list[Magnitude]]:
        """Probe name -> its magnitudes, for the probes in ``names`` (``[None]`` for flips and grayscale)."""
        return {name: [None] if name in SINGLE else list(getattr(self, name)) for name in self.names}


def _warp(images: torch.Tensor, matrix: torch.Tensor, shift: tuple[float, float], padding: str) -> torch.Tensor:
    """Bilinear resampling at ``matrix @ p + shift`` for every output point ``p`` in normalised coordinates."""
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, :, :2] = matrix.to(images)
    theta[:, 0, 2], theta[:, 1, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def zoom(images: torch.Tensor, factor: float, padding: str = "border") -> torch.Tensor:
    """Zoom about the centre by ``factor`` (> 1 magnifies; < 1 shrinks, the rim filled by ``padding``)."""
    return _warp(images, torch.eye(2) / factor, (0.0, 0.0), padding)


def resized_crop(images: torch.Tensor, area: float) -> torch.Tensor:
    """The centred crop keeping ``area`` of the image (same aspect), resized back to the full size."""
    return zoom(images, 1.0 / math.sqrt(area), "border")


def rotate(images: torch.Tensor, degrees: float, padding: str = "border") -> torch.Tensor:
    """Rotation by ``degrees`` counter-clockwise about the centre (pixel geometry, so any aspect ratio)."""
    height, width = images.shape[-2:]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    matrix = torch.tensor([[cos, -sin * height / width], [sin * width / height, cos]])
    return _warp(images, matrix, (0.0, 0.0), padding)


def translate(images: torch.Tensor, shift: tuple[float, float], padding: str = "border") -> torch.Tensor:
    """Shift by ``(dx, dy)`` fractions of the width and height (positive: right, down)."""
    dx, dy = shift
    return _warp(images, torch.eye(2), (-2.0 * dx, -2.0 * dy), padding)


def adjust_colour(images: torch.Tensor, name: str, factor: float) -> torch.Tensor:
    """``brightness``, ``contrast``, ``saturation`` (factor) or ``hue`` (shift), as the pretraining colour jitter."""
    factors = torch.full((images.shape[0],), float(factor), dtype=images.dtype, device=images.device)
    return _adjust(images, _COLOUR_OPS[name], factors)


def apply_probe(images: torch.Tensor, name: str, magnitude: Magnitude = None, padding: str = "border") -> torch.Tensor:
    """Probe ``name`` at ``magnitude`` on float images in [0, 1] ``[B, 3, H, W]``; the result has the same size."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"probes take float RGB images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if name == "hflip":
        return images.flip(-1)
    if name == "vflip":
        return images.flip(-2)
    if name == "grayscale":
        return grayscale(images).expand_as(images)
    if name == "resized_crop":
        return resized_crop(images, float(magnitude))
    if name == "scale":
        return zoom(images, float(magnitude), padding)
    if name == "rotation":
        return rotate(images, float(magnitude), padding)
    if name == "translation":
        return translate(images, magnitude, padding)
    if name in _COLOUR_OPS:
        return adjust_colour(images, name, float(magnitude))
    raise ValueError(f"unknown probe {name!r}; the probes are {list(PROBES)}")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (0-255, rounded) of float images in [0, 1]."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def probe_images(
    images: torch.Tensor, config: ImageProbeConfig | None = None, batch_size: int | None = None
) -> dict[str, torch.Tensor]:
    """Every probe at every magnitude: name -> uint8 ``[M * N, 3, H, W]``, magnitude-major, in ``config.names`` order.

    Args:
        images: uint8 (0-255) or float ([0, 1]) images ``[N, 3, H, W]``; the views are made on their device.
        config: the probes and magnitudes (``ImageProbeConfig()`` when omitted).
        batch_size: images per pass (None: all at once); the views do not depend on it.
    """
    config = config if config is not None else ImageProbeConfig()
    if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] != 3:
        raise ValueError(f"probe_images takes images [N >= 1, 3, H, W], got {tuple(images.shape)}")
    count = images.shape[0]
    size = count if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    views = {}
    for name, magnitudes in config.magnitudes().items():
        out = torch.empty((len(magnitudes) * count, *images.shape[1:]), dtype=torch.uint8, device=images.device)
        for start in range(0, count, size):
            batch = images[start : start + size]
            unit = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
            for m, magnitude in enumerate(magnitudes):
                row = m * count + start
                out[row : row + len(batch)] = to_uint8(apply_probe(unit, name, magnitude, config.padding))
        views[name] = out
    return views
