"""Contrastive losses as pure functions of embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aiaudio.engine.distributed import gather_with_grad, rank_and_world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (NT-Xent) between two batches of paired embeddings.

    For each of the 2B local anchors the positive is its pair and the negatives are every other embedding of both
    views, gathered from all ranks (with gradients) when ``gather`` and a process group is active.

    Args:
        z1, z2: ``[B, D]`` embeddings of the two views (need not be normalised).
        temperature: softmax temperature tau.
        gather: use the negatives of every rank.

    Returns:
        The mean loss over this rank's 2B anchors (a scalar).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two [B, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    batch = z1.shape[0]
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    rank, _ = rank_and_world() if gather else (0, 1)
    all1 = gather_with_grad(z1) if gather else z1
    all2 = gather_with_grad(z2) if gather else z2
    candidates = torch.cat([all1, all2], dim=0)  # [2N, D]: view-1 block, then view-2 block
    total = all1.shape[0]
    anchors = torch.cat([z1, z2], dim=0)  # [2B, D]
    logits = anchors @ candidates.T / temperature  # [2B, 2N]
    local = torch.arange(batch, device=z1.device) + rank * batch
    self_index = torch.cat([local, local + total])
    positive_index = torch.cat([local + total, local])
    rows = torch.arange(2 * batch, device=z1.device)
    logits[rows, self_index] = float("-inf")  # an anchor is never its own negative
    return F.cross_entropy(logits, positive_index)
