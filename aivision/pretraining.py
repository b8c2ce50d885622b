"""Image pretraining on the core protocol: the config, an ImageFolder of images at a storage size, views made on
the device (:mod:`aivision.augment`), the image input transform, and the MoCo-v3 initialisation of a Prompt-ViT.

The run skeleton, the model, method and invariance configs, the trainer and the resume check are the core's
(:mod:`aiaudio.engine.pretraining`); nothing here repeats them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiaudio.config import ConfigError, from_dict, require_directory, to_dict
from aiaudio.engine.distributed import DistInfo
from aiaudio.engine.pretraining import (
    RESUME_SAFE_KEYS,
    InvarianceConfig,
    MethodConfig,
    ModelConfig,
    PretrainParts,
    build_pretrainer as build_core_pretrainer,
    run_pretraining,
)
from aiaudio.engine.trainer import TrainerConfig
from aiaudio.invariance import InvarianceSpace
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aivision.augment import IMAGENET_MEAN, IMAGENET_STD, ImageAugment, ImageAugmentConfig, ImageInput, ImageViews
from aivision.data import ImageSet, image_folder_entries
from aivision.models import PlainViT, PromptViT, load_moco_v3_checkpoint

log = logging.getLogger(__name__)

IN_CHANS = 3


@dataclass
class ImageDataConfig:
    """The pretraining images: the ImageFolder layout under ``root`` (``root/<split>/<class>/*.jpg`` when that
    folder exists, as ImageNet's ``train/``, else ``root/<class>/*.jpg``), stored at ``image_size`` pixels square
    (shorter side resized, centre crop) before the views are cut on the device."""

    root: str | None = None
    split: str = "train"
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be at least 8 pixels, got {self.image_size}")

    def folder(self) -> Path:
        root = require_directory(self.root, "data.root", "image folder")
        return root / self.split if self.split and (root / self.split).is_dir() else root


@dataclass
class InputConfig:
    """What the encoder sees: ``size`` pixels square, normalised with ``mean`` and ``std`` (ImageNet's)."""

    size: int = 64
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self) -> None:
        if self.size < 8 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("input: size >= 8 and three means and three positive stds are needed")

    def build(self) -> ImageInput:
        return ImageInput(self.size, tuple(self.mean), tuple(self.std))


@dataclass
class VisionPretrainConfig:
    """An image pretraining run. ``init``: a MoCo-v3 checkpoint file to start a Prompt-ViT from (the paper's)."""

    run_dir: str = "runs/vision_pretrain"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    invariance: InvarianceConfig = field(default_factory=InvarianceConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(encoder="hyper_resnet50"))
    method: MethodConfig = field(default_factory=lambda: MethodConfig(name="mocov2", temperature=0.2))
    augment: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)
    input: InputConfig = field(default_factory=InputConfig)
    init: str | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.invariance.min_active is None:  # the groups space: all 3 descriptors; the individual one: the 26
            self.invariance.min_active = 1 if self.augment.space == "groups" else 2
        if len(self.space()) < 2 and self.invariance.mode == "amortised":
            raise ValueError(
                f"invariance.min_active={self.invariance.min_active} leaves {len(self.space())} descriptor(s) in the "
                f"{self.augment.space} space: nothing to amortise over"
            )
        if self.data.image_size < self.input.size:
            log.warning("data.image_size %d is below input.size %d: views are upsampled", self.data.image_size,
                        self.input.size)

    def space(self) -> InvarianceSpace:
        names = self.augment.build_space().names
        return InvarianceSpace(names, min_active=self.invariance.min_active)


def parse_config(raw: dict[str, Any]) -> VisionPretrainConfig:
    """Validate a raw config mapping into a :class:`VisionPretrainConfig`."""
    return from_dict(VisionPretrainConfig, raw)


def normalize_config(raw: dict[str, Any]) -> dict[str, Any]:
    return to_dict(parse_config(raw))


def build_pretrainer(
    config: VisionPretrainConfig, channels_last: bool = False
) -> tuple[ContrastivePretrainer, dict[str, Any]]:
    """The pretraining module (device views, encoder, heads, method), freshly initialised, and its encoder record."""
    space = config.space()
    output = config.input.build()
    views = ImageViews(ImageAugment(config.augment, space, output))
    return build_core_pretrainer(
        views, space, IN_CHANS, config.model, config.method, config.invariance, config.trainer.seed,
        channels_last=channels_last, transform=output, transform_kind="image",
        transform_config={"size": config.input.size, "mean": list(config.input.mean), "std": list(config.input.std)},
    )


def initialise_from(model: ContrastivePretrainer, path: str) -> None:
    """Start a Prompt-ViT from a MoCo-v3 checkpoint file (the query side, then its momentum copy)."""
    encoder = model.method.encoder
    if not isinstance(encoder, (PromptViT, PlainViT)):
        raise ConfigError(f"init={path} starts a ViT from MoCo-v3 weights; model.encoder is {type(encoder).__name__}")
    left = load_moco_v3_checkpoint(encoder, path)
    model.method.encoder_loaded()
    log.info("initialised the ViT from %s (%d prompt tensors start fresh)", path, len(left))


def pretrain_parts(config: VisionPretrainConfig, dist_info: DistInfo) -> PretrainParts:
    """The image parts of a run: the ImageFolder, device views, and the MoCo-v3 initialisation of a fresh run."""
    entries = image_folder_entries(config.data.folder())
    dataset = ImageSet(entries, config.data.image_size)
    model, record = build_pretrainer(config, channels_last=config.trainer.use_channels_last(dist_info.device))
    if config.init:
        init = config.init
        if not Path(init).is_file():
            raise ConfigError(f"init={init}: no such MoCo-v3 checkpoint file")
        return PretrainParts(model, dataset, record, lambda info: initialise_from(model, init), {"images": len(dataset)})
    return PretrainParts(model, dataset, record, None, {"images": len(dataset)})


def run_pretrain(config: VisionPretrainConfig) -> dict[str, Any]:
    """Train (or resume) the configured run; returns the trainer's summary."""
    return run_pretraining(
        config.run_dir, config, config.trainer, lambda info: pretrain_parts(config, info), normalize_config,
        (*RESUME_SAFE_KEYS, "init"),
    )
