"""Built-in synthetic images with known factors, for the demo and the tests (synthetic, and said so).

Each image holds one shape (circle, square, triangle or cross) of one of six colours at a random position, size and
rotation, on a textured background (two random gratings with a random tint). Tasks with conflicting needs follow:
the shape wants invariance to appearance (colour is a nuisance), the colour wants sensitivity to it, and the
position wants sensitivity to spatial transforms (a crop or a flip moves the shape).

Images are rendered in batches on a coordinate grid (at twice the size, then averaged down, so edges are smooth)
and written as PNG in the ImageFolder layout ``<root>/train/<shape>/<index>.png`` with ``<root>/factors.csv``
(``path, shape, colour, x, y, size, rotation``; x and y are the shape centre as a fraction of the width and height).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import write_png

from aiaudio.engine.files import atomic_write_text

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.2, 0.8), "cyan": (0.1, 0.8, 0.85),
}
FACTOR_COLUMNS: tuple[str, ...] = ("shape", "colour", "x", "y", "size", "rotation")


def _shape_masks(px: torch.Tensor, py: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inside-masks ``[B, H, W]`` in the shape's own frame (unit size), shape index per image."""
    circle = px.square() + py.square() <= 1.0
    square = torch.maximum(px.abs(), py.abs()) <= 0.8
    triangle = (py >= -0.5) & (py <= 1.0 - math.sqrt(3.0) * px.abs())
    cross = ((px.abs() <= 0.3) & (py.abs() <= 0.9)) | ((py.abs() <= 0.3) & (px.abs() <= 0.9))
    masks = torch.stack([circle, square, triangle, cross], dim=1)  # [B, 4, H, W]
    return masks.gather(1, shape.view(-1, 1, 1, 1).expand(-1, 1, *px.shape[1:])).squeeze(1)


def render_shapes(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``count`` images uint8 ``[count, 3, size, size]`` and their factors (shape, colour indices; x, y, size,
    rotation)."""
    factors = {
        "shape": torch.randint(len(SHAPES), (count,), generator=generator),
        "colour": torch.randint(len(COLOURS), (count,), generator=generator),
        "x": 0.25 + 0.5 * torch.rand(count, generator=generator),
        "y": 0.25 + 0.5 * torch.rand(count, generator=generator),
        "size": 0.16 + 0.12 * torch.rand(count, generator=generator),
        "rotation": 2 * math.pi * torch.rand(count, generator=generator),
    }
    fine = 2 * size
    axis = (torch.arange(fine) + 0.5) / fine
    v, u = torch.meshgrid(axis, axis, indexing="ij")  # v: rows (y), u: columns (x)
    du = u[None] - factors["x"].view(-1, 1, 1)
    dv = v[None] - factors["y"].view(-1, 1, 1)
    cos, sin = factors["rotation"].cos().view(-1, 1, 1), factors["rotation"].sin().view(-1, 1, 1)
    scale = factors["size"].view(-1, 1, 1)
    px, py = (cos * du + sin * dv) / scale, (-sin * du + cos * dv) / scale
    inside = _shape_masks(px, -py, factors["shape"]).unsqueeze(1).float()  # image rows grow downwards
    angle = math.pi * torch.rand(count, 2, generator=generator)
    frequency = 4 + 12 * torch.rand(count, 2, generator=generator)
    phase = 2 * math.pi * torch.rand(count, 2, generator=generator)
    gratings = sum(
        torch.sin(frequency[:, k].view(-1, 1, 1) * 2 * math.pi * (angle[:, k].cos().view(-1, 1, 1) * u
                  + angle[:, k].sin().view(-1, 1, 1) * v) + phase[:, k].view(-1, 1, 1))
        for k in range(2)
    )
    tint = 0.35 + 0.3 * torch.rand(count, 3, 1, 1, generator=generator)
    background = (tint + 0.12 * gratings.unsqueeze(1)).clamp(0, 1)
    colour = torch.tensor(list(COLOURS.values()))[factors["colour"]].view(-1, 3, 1, 1)
    shading = 1.0 + 0.08 * torch.randn(count, 1, fine, fine, generator=generator)
    image = inside * (colour * shading).clamp(0, 1) + (1 - inside) * background
    image = F.avg_pool2d(image, 2)
    return (image * 255).round().clamp(0, 255).to(torch.uint8), factors


def generate_shapes(root: Path, num_images: int = 1000, size: int = 64, seed: int = 0, batch: int = 256) -> Path:
    """Write ``num_images`` synthetic images under ``root`` (see the module docstring) and return ``root``.

    An existing complete set with the same parameters is reused.
    """
    root = Path(root)
    stamp = f"shapes v2: {num_images} images, {size} px, seed {seed}\n"
    if (root / "DONE").is_file() and (root / "DONE").read_text(encoding="utf-8") == stamp:
        return root
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for start in range(0, num_images, batch):
        images, factors = render_shapes(min(batch, num_images - start), size, generator)
        for offset, image in enumerate(images):
            index = start + offset
            shape = SHAPES[int(factors["shape"][offset])]
            relative = f"train/{shape}/{index:06d}.png"
            (root / "train" / shape).mkdir(parents=True, exist_ok=True)
            write_png(image, str(root / relative))
            rows.append([relative, shape, list(COLOURS)[int(factors["colour"][offset])],
                         *(f"{float(factors[k][offset]):.6f}" for k in ("x", "y", "size", "rotation"))])
    lines = [",".join(("path", *FACTOR_COLUMNS))] + [",".join(row) for row in rows]
    atomic_write_text(root / "factors.csv", "\n".join(lines) + "\n")
    atomic_write_text(root / "DONE", stamp)
    return root


def read_factors(root: Path) -> list[dict[str, str]]:
    """The rows of ``factors.csv``."""
    with open(Path(root) / "factors.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
