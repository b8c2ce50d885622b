"""SimCLR (Chen et al., 2020) for an encoder conditioned on an invariance descriptor."""

from __future__ import annotations

import torch
from torch import nn

from aiaudio.methods.base import ContrastiveMethod, embedding_spread
from aiaudio.methods.losses import nt_xent


class SimCLR(ContrastiveMethod):
    """Encoder + projection head trained with NT-Xent; negatives gathered across ranks.

    Both views go through the encoder in one pass (BatchNorm sees both), conditioned on the step's descriptor.

    Args:
        encoder: a module called as ``encoder(x, descriptor)`` returning ``[B, F]`` features.
        projector: the projection head, ``[B, F] -> [B, D]``.
        temperature: NT-Xent temperature.
        gather: gather negatives from every rank (with gradients).

    Example:
        >>> out = simclr(view1, view2, descriptor)   # {"loss": ..., "alignment": ...}
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SimCLR temperature must be positive, got {temperature}")
        self.encoder = encoder
        self.projector = projector
        self.temperature = temperature
        self.gather = gather

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, descriptor: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(torch.cat([view1, view2], dim=0), descriptor)
        z1, z2 = self.projector(features).chunk(2, dim=0)
        loss = nt_xent(z1, z2, self.temperature, gather=self.gather)
        with torch.no_grad():
            alignment = nn.functional.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return {"loss": loss, "alignment": alignment, "embedding_std": embedding_spread(z1)}
