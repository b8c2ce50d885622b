"""Encoders whose right answer is known, shared by the core and audio tests."""

from __future__ import annotations

import torch
from torch import nn


class NuisanceEncoder(nn.Module):
    """Features ``[signal, (1 - i_0) * nuisance]``: factor 0 alone sets the sensitivity to the nuisance dimensions,
    factor 1 does nothing. Inputs are ``[signal (2), nuisance (2)]`` rows."""

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_after_stem(self, stem: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        per_row = i.repeat_interleave(stem.shape[0] // i.shape[0], dim=0) if i.dim() == 2 else i.expand(len(stem), -1)
        return torch.cat([stem[:, :2], (1 - per_row[:, :1]) * stem[:, 2:]], dim=1)
