"""Contrastive losses as pure functions of embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aiaudio.engine.distributed import gather_no_grad, gather_with_grad, rank_and_world


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


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al., 2020): each query's positive is its key, its negatives the queue.

    Args:
        q: ``[B, D]`` queries (need not be normalised).
        k: ``[B, D]`` keys of the same examples from the momentum encoder (need not be normalised; no gradient).
        queue: ``[N, D]`` L2-normalised keys of earlier batches.
        temperature: softmax temperature.

    Returns:
        ``mean_b -log(exp(q_b.k_b / t) / (exp(q_b.k_b / t) + sum_n exp(q_b.queue_n / t)))`` with q, k normalised.
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"moco_infonce needs q, k [B, D] and queue [N, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.float().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def moco_v3_contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, gather: bool = True) -> torch.Tensor:
    """MoCo-v3's contrastive term (Chen et al., 2021): query ``b`` against every key of the global batch.

    Both q and k are L2-normalised (the public amortised-invariance code forgets to). The positive of local query
    ``b`` on rank ``r`` is global key ``r * B + b``. Scaled by ``2 * temperature`` as in MoCo-v3.

    Args:
        q: ``[B, D]`` predictor outputs.
        k: ``[B, D]`` momentum-encoder projections of the other view (no gradient); gathered over ranks.
        temperature: softmax temperature.
        gather: use the keys of every rank.
    """
    if q.shape != k.shape or q.dim() != 2:
        raise ValueError(f"moco_v3_contrastive needs two [B, D] tensors of one shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    rank, _ = rank_and_world() if gather else (0, 1)
    keys = gather_no_grad(k) if gather else k
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)
