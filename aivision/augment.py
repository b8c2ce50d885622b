"""Image augmentations on the device: one batched pass, per-example random parameters, only the ops switched on.

Views start from uint8 images ``[B, 3, S, S]`` (any fixed storage size) and end as normalised float images
``[B, 3, s, s]``. The geometric ops (random resized crop, horizontal flip) become one affine sampling grid per example
and a single ``grid_sample`` per batch; with the crop off the whole image is resized. The appearance ops follow
(colour jitter in a random order per example, grayscale, Gaussian blur, solarisation), then the normalisation.
Every parameter is drawn from the step's generator on the batch's device, so views are a pure function of
(seed, step, rank), as in the audio pipeline.

Two implementations share these semantics (``ImageAugmentConfig.backend``): the torch ops below, on any device and the
reference; and, for uint8 images on the CPU, a fused C kernel (:mod:`aivision.augment_native`) that does every op of
one image while it is in cache, several times faster there. ``auto`` takes the kernel where it applies and builds.

Which descriptor factor switches each op on is ``ImageAugmentConfig.gates``: the paper's two groups (Spatial = crop
+ flip, Appearance = jitter + grayscale + blur) or its five individual augmentations (crop, flip, jitter, grayscale,
blur). Probabilities and ranges follow MoCo-v2 / SimCLR and ``torchvision.transforms.v2``: crop scale 0.08-1 and
ratio 3/4-4/3 (ten tries, then a centre crop, as torchvision), flip p 0.5, jitter 0.4 / 0.4 / 0.2 / 0.1 with p 0.8,
grayscale p 0.2, blur sigma 0.1-2 with p 0.5, solarisation (MoCo-v3's second view) p 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aiaudio.engine.pretrained import register_input_transform
from aiaudio.invariance import InvarianceSpace
from aivision.augment_native import NativeKernel, native_kernel, native_unavailable_reason

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPS: tuple[str, ...] = ("crop", "flip", "jitter", "grayscale", "blur", "solarize")
GROUP_GATES: dict[str, str] = {
    "crop": "spatial", "flip": "spatial", "jitter": "appearance", "grayscale": "appearance", "blur": "appearance",
    "solarize": "appearance",
}
INDIVIDUAL_GATES: dict[str, str] = {
    "crop": "crop", "flip": "flip", "jitter": "jitter", "grayscale": "grayscale", "blur": "blur", "solarize": "jitter",
}
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision
BACKENDS = ("auto", "torch", "native")


def group_space() -> InvarianceSpace:
    """The paper's two groups: Spatial (crop, flip) and Appearance (jitter, grayscale, blur): 3 descriptors."""
    return InvarianceSpace(("spatial", "appearance"), min_active=1)


def individual_space() -> InvarianceSpace:
    """The paper's five augmentations, every descriptor with at least two on: 26 descriptors."""
    return InvarianceSpace(("crop", "flip", "jitter", "grayscale", "blur"), min_active=2)


@dataclass
class ImageAugmentConfig:
    """Op parameters and which factor gates each op (see the module docstring).

    ``space``: "groups" or "individual" (picks the default ``gates``). ``blur_p`` and ``solarize_p`` may be a pair, one
    per view (MoCo-v3: blur 1.0 / 0.1, solarise 0.0 / 0.2). ``backend``: "torch" (the torch ops, any device),
    "native" (the fused CPU kernel for uint8 images; an error where it cannot be built) or "auto" (the kernel for
    uint8 CPU batches where it builds, else the torch ops).
    """

    space: str = "groups"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: list[float] = field(default_factory=lambda: [0.5, 0.5])
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.0])
    gates: dict[str, str] | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"augment.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.space not in ("groups", "individual"):
            raise ValueError(f"augment.space must be groups or individual, got {self.space!r}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augment.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must lie in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"augment.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("blur_p", "solarize_p"):
            values = getattr(self, name)
            if len(values) != 2 or not all(0 <= v <= 1 for v in values):
                raise ValueError(f"augment.{name} must be two probabilities (view 1, view 2), got {values}")
        gates = self.gates if self.gates is not None else (GROUP_GATES if self.space == "groups" else INDIVIDUAL_GATES)
        unknown = sorted(set(gates) - set(OPS))
        if unknown or set(gates) != set(OPS):
            raise ValueError(f"augment.gates must name every op {list(OPS)} once, got {sorted(gates)}")
        self.gates = dict(gates)

    def build_space(self) -> InvarianceSpace:
        return group_space() if self.space == "groups" else individual_space()


class ImageInput(nn.Module):
    """Model inputs from images: uint8 (0-255) or float (0-1) ``[B, 3, H, W]`` -> resized to ``size`` (bilinear,
    antialiased, when it differs) and normalised with ``mean`` / ``std``. The input transform of image encoders."""

    def __init__(self, size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        if size < 1 or len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"ImageInput needs size >= 1 and positive stds, got {size}, {mean}, {std}")
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] at ``size``."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images [B, {self.mean.shape[1]}, H, W], got {list(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        return (unit - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))


@register_input_transform("image")
def image_input(config: dict[str, Any]) -> ImageInput:
    """The ``image`` input transform of an encoder record."""
    return ImageInput(int(config["size"]), tuple(config["mean"]), tuple(config["std"]))


def _uniform(low: float, high: float, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def crop_boxes(
    height: int, width: int, count: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, device: torch.device, tries: int = 10,
) -> torch.Tensor:
    """``[count, 4]`` crop boxes ``(top, left, h, w)`` in pixels, drawn as ``torchvision``'s RandomResizedCrop does:
    up to ``tries`` draws of area fraction and log aspect ratio, the first that fits wins, else a centre crop."""
    area = height * width
    target = area * _uniform(scale[0], scale[1], count * tries, generator, device).view(count, tries)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), count * tries, generator, device)).view(count, tries)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    top = torch.floor(torch.rand(count, generator=generator, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(count, generator=generator, device=device) * (width - w + 1))
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1)


def sample_boxes(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box ``(top, left, h, w)`` to ``size x size`` (bilinear), mirrored where ``flip``: one
    ``grid_sample`` for the batch. ``images`` float ``[B, C, H, W]``.

    The map is axis-aligned, so the sampling grid is an outer sum of per-example row and column coordinates
    (normalised, ``align_corners=False``), built without a matrix product.
    """
    batch, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size * 2 - 1  # output pixel centres
    sign = torch.where(flip, -1.0, 1.0).to(images.dtype)
    xs = ((left + w / 2) / width * 2 - 1).view(-1, 1) + (w / width * sign).view(-1, 1) * steps  # [B, size]
    ys = ((top + h / 2) / height * 2 - 1).view(-1, 1) + (h / height).view(-1, 1) * steps
    grid = torch.stack([xs.view(batch, 1, size).expand(batch, size, size),
                        ys.view(batch, size, 1).expand(batch, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (ITU-R 601-2, as torchvision)."""
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """HSV ``[B, 3, H, W]`` (each in [0, 1]) of RGB in [0, 1]."""
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    span = maxc - minc
    saturation = torch.where(maxc > 0, span / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    r, g, b = x.unbind(1)
    safe = span.clamp_min(1e-12)
    hue_r = ((g - b) / safe) % 6
    hue_g = (b - r) / safe + 2
    hue_b = (r - g) / safe + 4
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b)) / 6
    hue = torch.where(span > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] of HSV ``[B, 3, H, W]``."""
    hue, saturation, value = x.unbind(1)
    sector = hue * 6
    k = torch.stack([(5 + sector) % 6, (3 + sector) % 6, (1 + sector) % 6], dim=1)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value.unsqueeze(1) - (value * saturation).unsqueeze(1) * ramp


def _per_example(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def colour_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with per-example factors and order.

    At each of the four positions every active example takes its own adjustment; each adjustment runs once, on just
    the examples that take it there (so the work is four passes over the batch, not sixteen).

    Args:
        x: float RGB in [0, 1], ``[B, 3, H, W]``.
        factors: ``[B, 4]``: brightness, contrast, saturation multipliers and the hue shift.
        order: ``[B, 4]``: each example's permutation of the four adjustments.
        active: ``[B]`` bool: which examples are jittered at all.
    """
    x = x.clone()
    for position in range(4):
        step = order[:, position]
        for op in range(4):
            rows = torch.nonzero(active & (step == op)).flatten()
            if len(rows):
                x[rows] = _adjust(x[rows], op, factors[rows, op])
    return x


def _adjust(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    f = _per_example(factor)
    if op == 0:  # brightness: blend with black
        return (x * f).clamp(0, 1)
    if op == 1:  # contrast: blend with the image's mean luma
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return (f * x + (1 - f) * mean).clamp(0, 1)
    if op == 2:  # saturation: blend with the luma image
        return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)
    return shift_hue(x, factor)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``shift`` turns (``[B]``), as torchvision's HSV round trip does, without forming
    saturation and value: a pixel keeps its largest and smallest channel and moves along the hue hexagon."""
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    span = maxc - minc
    r, g, b = x.unbind(1)
    inverse = span.clamp_min(1e-12).reciprocal()
    hue6 = torch.where(argmax == 0, ((g - b) * inverse) % 6,
                       torch.where(argmax == 1, (b - r) * inverse + 2, (r - g) * inverse + 4))
    hue6 = torch.where(span > 0, hue6, torch.zeros_like(hue6)) + 6 * (shift.view(-1, 1, 1) % 1.0)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (hue6 + n) % 6
        channels.append(maxc - span * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, dim=1)


def blur_radius(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Each example's kernel radius: ``ceil(3 sigma)``, at least 1, at most ``(size - 1) // 2``."""
    return torch.ceil(3 * sigma).clamp(1, max(1, (size - 1) // 2)).to(torch.int64)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-example ``sigma`` (pixels) and radius (:func:`blur_radius`), reflect
    padding; ``active`` examples only (the others are not computed)."""
    rows = torch.nonzero(active).flatten()
    if len(rows) == 0:
        return x
    out = x.clone()
    out[rows] = _blur(x[rows], sigma[rows])
    return out


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    radii = blur_radius(sigma, min(height, width))
    radius = int(radii.max())
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = kernel * (offsets.abs().view(1, -1) <= radii.view(-1, 1))  # each example's own radius
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # [B*C, k]
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view_as(x)


class ImageAugment(nn.Module):
    """One augmented view per image for one descriptor (see the module docstring).

    Args:
        config: op parameters, gates and backend.
        space: the invariance space whose factor names the gates refer to.
        output: the model input transform (output size and normalisation).
        chunk_size: images per chunk of the torch path on the CPU (see :meth:`forward`).
    """

    def __init__(
        self, config: ImageAugmentConfig, space: InvarianceSpace, output: ImageInput, chunk_size: int = 16
    ) -> None:
        super().__init__()
        missing = sorted(set(config.gates.values()) - set(space.names))
        if missing:
            raise ValueError(f"augment.gates name factors {missing} that the space {list(space.names)} lacks")
        self.config, self.space, self.output = config, space, output
        self.chunk_size = chunk_size
        self.native: NativeKernel | None = None
        if config.backend != "torch":
            self.native = native_kernel()
            if self.native is None:
                reason = native_unavailable_reason()
                if config.backend == "native":
                    raise RuntimeError(f"augment.backend=native: the CPU kernel cannot be built ({reason}); "
                                       "set augment.backend=torch (or auto)")
                log.warning("the fused CPU augmentation kernel is unavailable (%s); CPU views take the slower torch "
                            "path", reason)

    def active_ops(self, descriptor: torch.Tensor) -> set[str]:
        factors = set(self.space.active_names(descriptor))
        return {op for op, factor in self.config.gates.items() if factor in factors}

    def forward(
        self, images: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator, view: int = 0
    ) -> torch.Tensor:
        """Normalised views ``[B, 3, s, s]`` of uint8 (or [0, 1] float) images ``[B, 3, S, S]``; ``view`` (0 or 1)
        selects the per-view blur and solarisation probabilities.

        Every random parameter of the batch is drawn first, so both backends make the same views from one generator.
        uint8 CPU batches go to the native kernel unless ``backend`` is torch; otherwise the torch ops run on chunks
        of ``chunk_size`` images (on the CPU, so that each chunk's temporaries stay in cache; 0: the whole batch at
        once, as on a GPU).
        """
        params = self.draw(images.shape[0], images.shape[-2], images.shape[-1], descriptor, generator, view, images.device)
        size = self.output.size
        if self.native is not None:
            if images.device.type == "cpu" and images.dtype == torch.uint8 and images.dim() == 4 \
                    and images.shape[1] == 3:
                return self.native.views(images, params, size, self.output.mean, self.output.std)
            if self.config.backend == "native":
                raise ValueError(f"augment.backend=native takes uint8 RGB images [B, 3, H, W] on the CPU, got "
                                 f"{images.dtype} {list(images.shape)} on {images.device}; set augment.backend=auto")
        out = torch.empty(images.shape[0], images.shape[1], size, size, device=images.device)
        chunk = self.chunk_size if self.chunk_size > 0 and images.device.type == "cpu" else images.shape[0]
        for start in range(0, images.shape[0], chunk):
            part = slice(start, start + chunk)
            out[part] = self.apply(images[part], {name: value[part] for name, value in params.items()})
        return out

    def draw(
        self, batch: int, height: int, width: int, descriptor: torch.Tensor, generator: torch.Generator, view: int,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Every per-example parameter of one view of a batch (absent ops get none)."""
        c, ops = self.config, self.active_ops(descriptor)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device) < p

        if "crop" in ops:
            boxes = crop_boxes(height, width, batch, c.crop_scale, c.crop_ratio, generator, device)
        else:
            boxes = torch.tensor([0.0, 0.0, height, width], device=device).expand(batch, 4)
        flip = coin(c.flip_p) if "flip" in ops else torch.zeros(batch, dtype=torch.bool, device=device)
        params = {"boxes": boxes, "flip": flip}
        if "jitter" in ops:
            params["jitter"] = coin(c.jitter_p)
            params["factors"] = torch.stack([
                _uniform(1 - c.brightness, 1 + c.brightness, batch, generator, device),
                _uniform(1 - c.contrast, 1 + c.contrast, batch, generator, device),
                _uniform(1 - c.saturation, 1 + c.saturation, batch, generator, device),
                _uniform(-c.hue, c.hue, batch, generator, device),
            ], dim=1)
            params["order"] = torch.argsort(torch.rand(batch, 4, generator=generator, device=device), dim=1)
        if "grayscale" in ops:
            params["grayscale"] = coin(c.grayscale_p)
        if "blur" in ops and c.blur_p[view] > 0:
            params["sigma"] = _uniform(c.blur_sigma[0], c.blur_sigma[1], batch, generator, device)
            params["blur"] = coin(c.blur_p[view])
        if "solarize" in ops and c.solarize_p[view] > 0:
            params["solarize"] = coin(c.solarize_p[view])
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The view of ``images`` under drawn ``params`` (see :meth:`draw`)."""
        x = images.float() * (1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
        x = sample_boxes(x, params["boxes"], params["flip"], self.output.size)
        if "jitter" in params:
            x = colour_jitter(x, params["factors"], params["order"], params["jitter"])
        if "grayscale" in params:
            x = torch.where(_per_example(params["grayscale"]), grayscale(x).expand_as(x), x)
        if "blur" in params:
            x = gaussian_blur(x, params["sigma"], params["blur"])
        if "solarize" in params:
            x = torch.where(_per_example(params["solarize"]) & (x >= 0.5), 1.0 - x, x)
        return self.output.normalize(x)


class ImageViews(nn.Module):
    """Two views of a uint8 image batch for the step's descriptor (the pretraining view maker)."""

    def __init__(self, augment: ImageAugment) -> None:
        super().__init__()
        self.augment = augment

    def forward(
        self, batch: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(batch, descriptor, generator, 0), self.augment(batch, descriptor, generator, 1)
