"""Optimisers and learning-rate schedules chosen by name, and the parameter groups they share.

Optimisers: ``adamw`` (decoupled weight decay), ``sgd`` (momentum, optionally Nesterov; coupled L2 weight decay as
in ``torch.optim.SGD``) and ``lars`` (SGD with momentum and a layer-wise trust ratio, as in SimCLR, BYOL and MoCo-v3;
the no-decay group, normalisation parameters and plain biases, is neither decayed nor adapted). Schedules (a
multiplier of the base learning rate, a pure function of the step): ``warmup_cosine``, ``step`` and ``constant``,
each after an optional linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd", "lars")
SCHEDULES: tuple[str, ...] = ("warmup_cosine", "step", "constant")


def parameter_groups(
    model: nn.Module, weight_decay: float, hyper_lr_scale: float = 1.0, hyper_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and normalisation parameters with ordinary biases (not decayed, not adapted).

    A module may mark its bias as a weight (``bias_is_weight = True``), as the hypernetworks do: their output bias is
    the base convolution kernel, which is decayed (and LARS-adapted) like any kernel.

    A module may name its descriptor-dependent parameters (``descriptor_dependent = ("weight", ...)``): the invariance
    embeddings and hypernetwork layers through which the descriptor shapes the kernels or prompts, not the base
    kernels. With ``hyper_lr_scale != 1`` or a ``hyper_weight_decay``, they get groups of their own: learning rate
    ``hyper_lr_scale`` times the base (``lr_scale``, applied by :func:`build_optimizer`), weights decayed by
    ``hyper_weight_decay`` (default ``weight_decay``), plain biases not decayed.
    """
    if not hyper_lr_scale > 0 or (hyper_weight_decay is not None and not hyper_weight_decay >= 0):
        raise ValueError(f"hyper_lr_scale must be positive and hyper_weight_decay >= 0, got {hyper_lr_scale}, "
                         f"{hyper_weight_decay}")
    separate = hyper_lr_scale != 1.0 or hyper_weight_decay is not None
    decay, no_decay, hyper, hyper_bias = [], [], [], []
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        dependent = getattr(module, "descriptor_dependent", ())
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, norm_types)
            is_plain_bias = name == "bias" and not getattr(module, "bias_is_weight", False)
            if separate and name in dependent:
                (hyper_bias if is_plain_bias else hyper).append(param)
            else:
                (no_decay if is_norm or is_plain_bias else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adapt": False},
    ]
    if separate:
        hyper_decay = weight_decay if hyper_weight_decay is None else hyper_weight_decay
        groups += [group for group in (
            {"params": hyper, "weight_decay": hyper_decay, "lars_adapt": True, "lr_scale": hyper_lr_scale},
            {"params": hyper_bias, "weight_decay": 0.0, "lars_adapt": False, "lr_scale": hyper_lr_scale},
        ) if group["params"]]  # a plain encoder has none: the same groups as without the setting
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Per parameter of a group with ``lars_adapt``: ``g <- g + wd * p``, then ``g <- g * trust * |p| / |g|`` (when both
    norms are positive), then ``v <- momentum * v + g`` and ``p <- p - lr * v`` (or the Nesterov form).
    """

    def __init__(
        self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient,
                        nesterov=nesterov, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if group["weight_decay"]:
                    update = update.add(param, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    trust = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    update = update * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                buffer = state["momentum_buffer"]
                step = update.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                param.add_(step, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9, nesterov: bool = False, trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (one of :data:`OPTIMIZERS`) over parameter groups that carry their weight decay (and
    optionally an ``lr_scale``: that group's learning rate is ``lr_scale * lr``, and schedules scale it alike)."""
    groups = [{**group, "lr": lr * group["lr_scale"]} if "lr_scale" in group else group for group in groups]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up, then cosine decay.

    Warm-up rises linearly from 1/warmup to 1 over ``warmup_steps``; then the multiplier follows half a cosine from 1
    down to ``min_ratio`` at ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(
    name: str, step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0,
    milestones: Sequence[int] = (), gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at ``step`` under schedule ``name`` (one of :data:`SCHEDULES`).

    ``step``: after the warm-up, times ``gamma`` for each of ``milestones`` (steps) already reached.
    ``constant``: 1 after the warm-up.
    """
    if name == "warmup_cosine":
        return warmup_cosine(step, total_steps, warmup_steps, min_ratio)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {list(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "step":
        return gamma ** sum(1 for milestone in milestones if step >= milestone)
    return 1.0
