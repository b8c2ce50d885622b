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
        """``descriptor`` ``[K]``; or ``[G, K]``: the views hold G equal groups of consecutive examples, group g made
        with ``descriptor[g]``, and each group is its own contrastive problem (its negatives are its own
        examples), the loss their mean."""
        groups = descriptor.shape[0] if descriptor.dim() == 2 else 1
        if groups == 1:
            features = self.encoder(torch.cat([view1, view2], dim=0), descriptor)
            z1, z2 = self.projector(features).chunk(2, dim=0)
            loss = nt_xent(z1, z2, self.temperature, gather=self.gather)
        else:  # the encoder takes group g's two views as its g-th group of consecutive examples
            per = view1.shape[0] // groups
            paired = torch.stack([view1.unflatten(0, (groups, per)), view2.unflatten(0, (groups, per))], dim=1)
            z = self.projector(self.encoder(paired.flatten(0, 2), descriptor)).unflatten(0, (groups, 2, per))
            loss = torch.stack([nt_xent(z[g, 0], z[g, 1], self.temperature, gather=self.gather)
                                for g in range(groups)]).mean()
            z1, z2 = z[:, 0].flatten(0, 1), z[:, 1].flatten(0, 1)
        with torch.no_grad():
            alignment = nn.functional.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return {"loss": loss, "alignment": alignment, "embedding_std": embedding_spread(z1)}
