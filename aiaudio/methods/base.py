"""What every contrastive method offers the pretraining step and the trainer."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ContrastiveMethod(nn.Module):
    """A method: ``forward(view1, view2, descriptor) -> {"loss": scalar, ...}`` and a hook after each optimiser step.

    Subclasses keep their query encoder as ``self.encoder`` (what a checkpoint's encoder record points at). State kept
    between steps (a momentum encoder, queues and their pointers) must be parameters or buffers, so that checkpoints
    save it and a resumed run continues exactly.
    """

    encoder: nn.Module

    def after_step(self, step: int, total_steps: int) -> None:
        """Called once after the optimiser step of training step ``step`` (0-based) of ``total_steps``."""

    def unused_parameters_possible(self) -> bool:
        """Whether a step may leave some parameters without gradients (DDP then looks for them each step)."""
        return False

    def encoder_loaded(self) -> None:
        """Called after weights were loaded into the query side from outside (an initial checkpoint): a method with a
        momentum copy makes it equal to the query side again."""


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """The spread of L2-normalised embeddings ``[B, D]`` across the batch (mean over dims of the std); near 0 when
    every example maps to the same embedding (a collapse). No gradient."""
    with torch.no_grad():
        return torch.nn.functional.normalize(z.detach().float(), dim=1).std(dim=0, correction=0).mean()


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to be updated as an exponential moving average of it."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * source`` for every parameter (buffers are left alone)."""
    target_params = list(target.parameters())
    source_params = [p.detach() for p in source.parameters()]
    if len(target_params) != len(source_params):
        raise ValueError("ema_update needs two modules with the same parameters")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, source_params, alpha=1.0 - momentum)
