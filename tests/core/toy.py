"""A toy modality built on the core alone: vectors, a noise and a scale "augmentation", a tiny hypernetwork MLP.

It shows what a second modality has to write: a data set indexed by ``(index, item_seed)``, a view maker that applies
only the augmentations the descriptor switches on, and an encoder registered with timm. Everything else (space,
methods, trainer, checkpoints with encoder records, loading, few-shot) is the core's.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from timm.models import register_model
from torch import nn
from torch.utils.data import Dataset

from aiaudio.engine.distributed import DistInfo
from aiaudio.engine.pretraining import InvarianceConfig, MethodConfig, ModelConfig, PretrainParts, build_pretrainer
from aiaudio.engine.trainer import TrainerConfig
from aiaudio.invariance import InvarianceSpace
from aiaudio.nn.hyper import check_descriptor

FACTORS = ("noise", "scale")
DIM = 8


class ToyVectors(Dataset):
    """``classes`` prototypes in R^DIM; item ``i`` is prototype ``i % classes`` plus a little fixed noise.

    ``crash_after``: raise after this many item reads (a simulated kill mid-run); None never.
    ``sigterm_after``: send this process SIGTERM (as a preempting scheduler does) at that read; None never.
    """

    def __init__(
        self, size: int = 64, classes: int = 4, seed: int = 0, crash_after: int | None = None,
        sigterm_after: int | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(classes, DIM, generator=generator) * 2
        self.labels = torch.arange(size) % classes
        self.items = self.prototypes[self.labels] + 0.1 * torch.randn(size, DIM, generator=generator)
        self.crash_after, self.sigterm_after, self.reads = crash_after, sigterm_after, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        self.reads += 1
        if self.crash_after is not None and self.reads > self.crash_after:
            raise RuntimeError("simulated kill")
        if self.sigterm_after is not None and self.reads == self.sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.items[key[0]]


class ToyViews(nn.Module):
    """Two views: Gaussian noise (std ``noise_std``) when bit 0 is on, a random gain in [0.5, 1.5] when bit 1 is."""

    def __init__(self, noise_std: float = 1.0) -> None:
        super().__init__()
        self.noise_std = noise_std

    def forward(self, batch: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator):
        views = []
        for _ in range(2):
            x = batch.float()
            if descriptor[0] >= 0.5:
                x = x + self.noise_std * torch.randn(x.shape, generator=generator, device=x.device)
            if descriptor[1] >= 0.5:
                x = x * (0.5 + torch.rand(x.shape[0], 1, generator=generator, device=x.device))
            views.append(x)
        return views[0], views[1]


class ToyHyperMLP(nn.Module):
    """``h(x; i) = relu((W0 + sum_k i_k W_k) x)``; ``i`` is ``[K]`` or ``[G, K]`` (groups of consecutive rows)."""

    amortised = True

    def __init__(self, inv_dim: int, in_chans: int, width: int = 16) -> None:
        super().__init__()
        self.inv_dim, self.num_features = inv_dim, width
        self.base = nn.Linear(in_chans, width)
        self.mixing = nn.Parameter(0.3 * torch.randn(inv_dim, width, in_chans) / in_chans**0.5)

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        check_descriptor(i, self.inv_dim, x.shape[0])
        groups = i.view(-1, self.inv_dim)
        weights = self.base.weight + torch.einsum("gk,kfd->gfd", groups.to(x.dtype), self.mixing)
        rows = x.view(len(groups), -1, x.shape[1])
        out = torch.einsum("gnd,gfd->gnf", rows, weights).reshape(x.shape[0], -1) + self.base.bias
        return torch.relu(out)


@register_model
def toy_hyper_mlp(pretrained: bool = False, *, inv_dim: int, in_chans: int, width: int = 16, **kwargs: Any) -> ToyHyperMLP:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return ToyHyperMLP(inv_dim, in_chans, width, **kwargs)


def toy_parts(
    method: str, trainer: TrainerConfig, dataset: ToyVectors, mode: str = "amortised", queue_size: int = 16,
    heads_per_descriptor: bool = False, **invariance_changes: Any,
) -> PretrainParts:
    """The toy's pretraining parts for ``method`` (simclr, mocov2, mocov3); ``invariance_changes`` go to its
    :class:`InvarianceConfig` (``descriptors_per_step``, ``all_on``, ...)."""
    space = InvarianceSpace(FACTORS, min_active=0)
    model = ModelConfig(encoder="toy_hyper_mlp", encoder_args={"width": 16}, projector_hidden=16, projector_dim=8,
                        predictor_hidden=16)
    method_config = MethodConfig(name=method, temperature=0.2, queue_size=queue_size,
                                 heads_per_descriptor=heads_per_descriptor)
    invariance = InvarianceConfig(mode=mode, min_active=0, **invariance_changes)
    pretrainer, record = build_pretrainer(ToyViews(), space, DIM, model, method_config, invariance, trainer.seed)
    return PretrainParts(pretrainer, dataset, record, summary={"items": len(dataset)})


def toy_trainer(**changes: Any) -> TrainerConfig:
    base = dict(steps=8, batch_size=8, lr=0.01, warmup_steps=2, log_every=2, ckpt_every=4, num_workers=0, seed=0,
                device="cpu", tensorboard=False, progress=False)
    return TrainerConfig(**{**base, **changes})


def toy_config(method: str, trainer: TrainerConfig) -> dict[str, Any]:
    """What the run saves as its config (the toy has no config file; the method and trainer are what vary)."""
    from aiaudio.config import to_dict

    return {"method": method, "trainer": to_dict(trainer)}


def parts_builder(method: str, trainer: TrainerConfig, dataset: ToyVectors, **kwargs: Any):
    def build(info: DistInfo) -> PretrainParts:
        return toy_parts(method, trainer, dataset, **kwargs)

    return build
