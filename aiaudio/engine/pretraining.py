"""The modality-agnostic pretraining protocol: configs of the model, method and invariance, the run skeleton and
the resume check.

A modality (audio, vision, a test's toy) supplies its data set, its view maker and its input transform; this module
builds the invariance space, the encoder (by name, through timm's registry), the projector and method, wires them into
a :class:`~aiaudio.methods.pretrainer.ContrastivePretrainer`, and runs the shared trainer. Every checkpoint gets the
encoder record (:mod:`aiaudio.engine.pretrained`), so evaluation never rebuilds this stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from aiaudio.config import ConfigError, to_dict
from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.distributed import DistInfo, cleanup, init_distributed
from aiaudio.engine.files import atomic_write_text, ensure_writable_folder, folder_lock
from aiaudio.engine.pretrained import ENCODER_RECORD, encoder_record
from aiaudio.engine.trainer import Trainer, TrainerConfig
from aiaudio.invariance import InvarianceSpace
from aiaudio.methods.base import ContrastiveMethod
from aiaudio.methods.moco import MoCoV2, MoCoV3
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aiaudio.methods.simclr import SimCLR
from aiaudio.nn.heads import PredictionHead, ProjectionHead
from aiaudio.nn.registry import canonical_encoder_name, create_encoder, encoder_kwargs

log = logging.getLogger(__name__)

#: Config keys whose change between an interrupted run and its resumption does not change what is computed.
RESUME_SAFE_KEYS: tuple[str, ...] = (
    "trainer.steps", "trainer.log_every", "trainer.ckpt_every", "trainer.keep_checkpoints", "trainer.num_workers",
    "trainer.progress", "trainer.tensorboard", "trainer.compile", "trainer.dist_timeout", "data.root", "data.cache_dir",
    "run_dir",
)
METHODS: tuple[str, ...] = ("simclr", "mocov2", "mocov3")
#: Keys that may change on resume but change what follows: each is warned about, with what it does.
NOTED_ON_RESUME: dict[str, str] = {
    "trainer.steps": "the learning-rate schedule is recomputed over the new total, so the rate at the resumed step "
                     "changes (with a longer run it rises again along the new cosine) and the data order continues",
    "data.root": "the run continues on the data found there; if that is another data set, this is not a resumption",
    "data.cache_dir": "the run continues on the cache found there; if that holds other data, this is not a resumption",
}


@dataclass
class InvarianceConfig:
    """``mode``: "amortised" (a descriptor drawn per step from the space) or "fixed" (``fixed``, default all on).

    ``min_active``: bits a pretraining descriptor has on at least; null: the modality's default (audio: 2 of the 7
    CLAR factors, 120 descriptors; images: 1 of the 2 groups, 3 descriptors, or 2 of the 5 augmentations, 26).

    ``descriptors_per_step``: G; above 1 each step splits its batch into G groups with a descriptor each, and each
    group is its own contrastive problem (SimCLR only): G times as many descriptors seen per step, with a G-th of
    the negatives each.

    ``bits_power``, ``all_on``: how often each descriptor is drawn: the all-on descriptor with probability ``all_on``
    outright, otherwise with weight ``(active bits) ** bits_power`` (both 0: uniformly over the table).
    """

    mode: str = "amortised"
    min_active: int | None = None
    fixed: list[float] | None = None
    descriptors_per_step: int = 1
    bits_power: float = 0.0
    all_on: float = 0.0

    def __post_init__(self) -> None:
        if self.bits_power < 0 or not 0.0 <= self.all_on <= 1.0:
            raise ValueError(f"invariance.bits_power must be >= 0 and invariance.all_on in [0, 1], got "
                             f"{self.bits_power} and {self.all_on}")
        if self.descriptors_per_step < 1:
            raise ValueError(f"invariance.descriptors_per_step must be >= 1, got {self.descriptors_per_step}")
        if self.descriptors_per_step > 1 and self.mode != "amortised":
            raise ValueError("invariance.descriptors_per_step > 1 needs invariance.mode=amortised")
        if self.mode not in ("amortised", "fixed"):
            raise ValueError(f"invariance.mode must be amortised or fixed, got {self.mode!r}")
        if self.mode == "amortised" and self.fixed is not None:
            raise ValueError("invariance.fixed is only used with invariance.mode=fixed; remove it or set the mode")
        if self.min_active is not None and self.min_active < 0:
            raise ValueError(f"invariance.min_active must be >= 0, got {self.min_active}")


@dataclass
class ModelConfig:
    """The encoder, named in timm's registry, and the heads.

    ``width``, ``hyper_hidden``, ``embed_dim``, ``dependence`` and ``zero_init_last`` are passed to the encoder's
    entry point where it names them (a plain ResNet takes no hypernetwork sizes); ``encoder_args`` are passed as they
    are (a Prompt-ViT's prompt count, say). ``projector_layers`` counts the projector's Linear layers;
    ``projector_last_bn`` ends it with an affine-free BatchNorm (MoCo-v3); ``predictor_hidden`` is MoCo-v3's.
    """

    encoder: str = "hyper_resnet18"
    width: float = 1.0
    hyper_hidden: int = 32
    embed_dim: int = 16
    dependence: float = 0.5
    zero_init_last: bool = False  # True zeroes each block's residual branch at init: i would act only via downsamples
    encoder_args: dict[str, Any] = field(default_factory=dict)
    projector_hidden: int = 512
    projector_dim: int = 128
    projector_layers: int = 2
    projector_last_bn: bool = False
    predictor_hidden: int = 512

    def __post_init__(self) -> None:
        self.encoder = canonical_encoder_name(self.encoder)
        if not self.width > 0:
            raise ValueError(f"model.width must be positive, got {self.width}")
        if min(self.hyper_hidden, self.embed_dim, self.projector_hidden, self.projector_dim, self.projector_layers,
               self.predictor_hidden) < 1:
            raise ValueError("model: hyper_hidden, embed_dim, projector_* and predictor_hidden must be >= 1")

    def options(self) -> dict[str, Any]:
        """The shared encoder options (see the class docstring)."""
        return {"width": self.width, "hyper_hidden": self.hyper_hidden, "embed_dim": self.embed_dim,
                "dependence": self.dependence, "zero_init_last": self.zero_init_last}


@dataclass
class MethodConfig:
    """``name``: simclr, mocov2 (one queue per descriptor, ``queue_size`` keys each) or mocov3.

    ``momentum``: the key encoder's EMA momentum (MoCo-v2: constant, default 0.999; MoCo-v3: the base of the cosine
    schedule, default 0.99). ``heads_per_descriptor`` (MoCo-v2): one projection head per descriptor, as the paper's
    code has.
    """

    name: str = "simclr"
    temperature: float = 0.1
    queue_size: int = 65536
    momentum: float | None = None
    heads_per_descriptor: bool = False

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method.name must be one of {list(METHODS)}, got {self.name!r}")
        if not self.temperature > 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        if self.queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {self.queue_size}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"method.momentum must lie in [0, 1), got {self.momentum}")
        if self.heads_per_descriptor and self.name != "mocov2":
            raise ValueError("method.heads_per_descriptor is an option of mocov2 (the paper's code); remove it")


def fixed_descriptor(space: InvarianceSpace, invariance: InvarianceConfig) -> torch.Tensor | None:
    """The fixed descriptor of a non-amortised run (all on unless given), or None for an amortised one."""
    if invariance.mode != "fixed":
        return None
    if invariance.fixed is None:
        return space.all_on()
    try:
        return space.to_vector(invariance.fixed)
    except ValueError as error:
        raise ConfigError(f"invariance.fixed: {error}") from None


def build_method(
    method: MethodConfig, model: ModelConfig, encoder: nn.Module, descriptors: torch.Tensor
) -> ContrastiveMethod:
    """The method of ``method.name`` around ``encoder``; ``descriptors`` ``[Q, K]`` are those the run can draw."""
    features = encoder.num_features
    if method.name == "simclr":
        projector = ProjectionHead(features, model.projector_hidden, model.projector_dim, model.projector_layers,
                                   last_batch_norm=model.projector_last_bn)
        return SimCLR(encoder, projector, temperature=method.temperature)
    if method.name == "mocov2":
        projector = ProjectionHead(features, model.projector_hidden, model.projector_dim, model.projector_layers,
                                   batch_norm=False, last_batch_norm=model.projector_last_bn)
        momentum = 0.999 if method.momentum is None else method.momentum
        return MoCoV2(encoder, projector, descriptors, method.queue_size, momentum, method.temperature,
                      method.heads_per_descriptor)
    projector = ProjectionHead(features, model.projector_hidden, model.projector_dim, model.projector_layers,
                               last_batch_norm=model.projector_last_bn)
    predictor = PredictionHead(model.projector_dim, model.predictor_hidden, model.projector_dim)
    momentum = 0.99 if method.momentum is None else method.momentum
    return MoCoV3(encoder, projector, predictor, momentum, method.temperature)


@dataclass
class PretrainParts:
    """What a modality hands the run skeleton.

    Attributes:
        model: the freshly initialised pretraining module.
        dataset: the training set, indexed by ``(index, item_seed)``.
        encoder_record: how to rebuild the encoder and its input transform (``encoder.json`` in every checkpoint).
        prepare: run once before step 0 of a fresh run (not on resume), e.g. to estimate normalisation statistics.
        summary: entries added to the run's summary (the number of clips, say).
    """

    model: ContrastivePretrainer
    dataset: Dataset
    encoder_record: dict[str, Any]
    prepare: Callable[[DistInfo], None] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def build_pretrainer(
    views: nn.Module, space: InvarianceSpace, in_chans: int, model: ModelConfig, method: MethodConfig,
    invariance: InvarianceConfig, seed: int, channels_last: bool = False, transform: nn.Module | None = None,
    transform_kind: str = "identity", transform_config: Mapping[str, Any] | None = None,
) -> tuple[ContrastivePretrainer, dict[str, Any]]:
    """The pretraining module, freshly initialised (identically on every rank), and its encoder record.

    Args:
        views: the modality's view maker.
        space: the invariance space.
        in_chans: channels of the model inputs.
        model, method, invariance: the configs.
        seed: the run's seed (initial weights, descriptors, views).
        channels_last: hand 4-D views to the method in channels_last.
        transform: the input transform the encoder was trained behind (a submodule of ``views``), if any.
        transform_kind, transform_config: how :func:`~aiaudio.engine.pretrained.load_encoder` rebuilds it.
    """
    torch.manual_seed(seed)
    kwargs = encoder_kwargs(model.encoder, space.dim, in_chans, model.options(), model.encoder_args)
    encoder = create_encoder(model.encoder, kwargs)
    fixed = fixed_descriptor(space, invariance)
    descriptors = space.table if fixed is None else fixed.unsqueeze(0)
    if invariance.descriptors_per_step > 1 and method.name != "simclr":
        raise ConfigError(f"invariance.descriptors_per_step > 1 is implemented for method.name=simclr, not "
                          f"{method.name!r}")
    pretrainer = ContrastivePretrainer(
        views, build_method(method, model, encoder, descriptors), space, seed, fixed, channels_last=channels_last,
        descriptors_per_step=invariance.descriptors_per_step,
        probabilities=None if fixed is not None else space.sampling_probabilities(invariance.bits_power,
                                                                                  invariance.all_on),
    )
    record = encoder_record(
        pretrainer, encoder, model.encoder, kwargs, space, transform, transform_kind, transform_config
    )
    return pretrainer, record


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_resume_config(
    run_dir: Path, resolved: dict[str, Any], normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    safe_keys: Sequence[str] = RESUME_SAFE_KEYS,
) -> None:
    """Refuse to resume a run whose saved config differs in anything that changes the computation.

    ``normalize`` resolves the saved config as the current one was (parse and dump it), so keys added to the config
    since the run started compare at their defaults instead of counting as changes.
    """
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file() or latest_checkpoint(Path(run_dir)) is None:
        return
    saved_raw = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    if normalize is not None:
        try:
            saved_raw = normalize(saved_raw)
        except ConfigError as error:
            raise ConfigError(f"{saved_path} no longer parses ({error}); choose a new run_dir=...") from None
    saved, now = flatten(saved_raw), flatten(resolved)
    for key in sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k in NOTED_ON_RESUME):
        log.warning("resuming %s with %s changed from %r to %r: %s", run_dir, key, saved.get(key), now.get(key),
                    NOTED_ON_RESUME[key])
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in safe_keys)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({details}); resume with the same config, "
            "or choose a new run_dir=..."
        )


def describe_run(name: str, model: ModelConfig, trainer: TrainerConfig, summary: dict[str, Any],
                 records: list[dict[str, Any]]) -> str:
    """One line on a finished pretraining run: encoder, width, budget and the logged loss from first to last."""
    return (f"  pretrain {name:<9} {model.encoder} width {model.width}, {summary['steps']} steps of "
            f"{trainer.batch_size}: loss {records[0]['loss']:.2f} -> {records[-1]['loss']:.2f}")


def run_pretraining(
    run_dir: Path | str,
    config: Any,
    trainer: TrainerConfig,
    build: Callable[[DistInfo], PretrainParts],
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    safe_keys: Sequence[str] = RESUME_SAFE_KEYS,
) -> dict[str, Any]:
    """Train (or resume) a run: join the process group, check the saved config, build the parts, prepare a fresh
    run, save the resolved config, train. Returns the trainer's summary.

    Args:
        run_dir: the run directory.
        config: the run's config dataclass (saved as ``config.yaml``, compared on resume).
        trainer: its trainer section.
        build: the modality's parts for this process.
        normalize: see :func:`check_resume_config`.
        safe_keys: keys that may change on resume.
    """
    dist_info = init_distributed(trainer.device, trainer.dist_timeout)
    try:
        run_dir = Path(run_dir)
        if dist_info.is_main:
            ensure_writable_folder(run_dir / "checkpoints", "checkpoints")
        with folder_lock(run_dir) if dist_info.is_main else contextlib.nullcontext():
            resolved = to_dict(config)
            check_resume_config(run_dir, resolved, normalize, safe_keys)
            parts = build(dist_info)
            if latest_checkpoint(run_dir) is None and parts.prepare is not None:
                parts.prepare(dist_info)
            if dist_info.is_main:
                atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
            extra = {ENCODER_RECORD: json.dumps(parts.encoder_record, indent=2) + "\n"}
            summary = Trainer(parts.model, parts.dataset, trainer, run_dir, resolved, dist_info, extra).fit()
        summary["run_dir"] = str(run_dir)
        summary.update(parts.summary)
        return summary
    finally:
        cleanup()
