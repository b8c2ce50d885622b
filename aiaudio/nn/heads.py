"""MLP heads for contrastive methods: SimCLR projection heads and MoCo-v3 style predictors."""

from __future__ import annotations

from torch import nn


def mlp_layers(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, batch_norm: bool, last_batch_norm: bool
) -> list[nn.Module]:
    """Layers of ``Linear-[BN]-ReLU`` x (num_layers - 1) followed by ``Linear`` (and an affine-free BN if asked).

    Linear layers followed by a BatchNorm have no bias (the BN shift replaces it).

    Args:
        in_dim: input features.
        hidden_dim: width of the hidden layers.
        out_dim: output features.
        num_layers: number of Linear layers (>= 1).
        batch_norm: BatchNorm after each hidden Linear.
        last_batch_norm: BatchNorm without affine parameters after the last Linear (MoCo-v3 projector).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP head needs num_layers >= 1, got {num_layers}")
    if min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"MLP head sizes must be positive, got in={in_dim} hidden={hidden_dim} out={out_dim}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return layers


class ProjectionHead(nn.Sequential):
    """SimCLR projection head: ``Linear-BN-ReLU ... Linear``, input ``[B, in_dim]`` to ``[B, out_dim]``.

    Args:
        in_dim: encoder features.
        hidden_dim: hidden width.
        out_dim: projection size.
        num_layers: number of Linear layers.
        batch_norm: BatchNorm after each hidden Linear.
        last_batch_norm: affine-free BatchNorm on the output (MoCo-v3 projector style).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__(*mlp_layers(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm))


class PredictionHead(nn.Sequential):
    """MoCo-v3 / BYOL style predictor: ``Linear-BN-ReLU ... Linear`` on projections.

    Args:
        in_dim: projection size.
        hidden_dim: hidden width.
        out_dim: output size (normally ``in_dim``).
        num_layers: number of Linear layers.
        batch_norm: BatchNorm after each hidden Linear.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True
    ) -> None:
        super().__init__(*mlp_layers(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm=False))
