"""MoCo-v2 with one queue per invariance descriptor, and MoCo-v3 with the cosine momentum schedule.

Both keep a momentum copy of the encoder and projector, conditioned on the same descriptor as the query side, and
update it after each optimiser step (:meth:`after_step`). Everything they keep between steps is a buffer or a
parameter, so checkpoints save it and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from aiaudio.engine.distributed import gather_no_grad
from aiaudio.methods.base import ContrastiveMethod, ema_update, embedding_spread, momentum_copy
from aiaudio.methods.losses import moco_infonce, moco_v3_contrastive


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """MoCo-v3's momentum after ``step`` of ``total_steps``: from ``base`` up to 1 along half a cosine."""
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _check_momentum(momentum: float, temperature: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"method.momentum must lie in [0, 1), got {momentum}")
    if temperature <= 0:
        raise ValueError(f"method.temperature must be positive, got {temperature}")


class MoCoV2(ContrastiveMethod):
    """MoCo-v2 (Chen et al., 2020) amortised over descriptors: one queue of keys per descriptor.

    A key made with descriptor ``d`` only ever enters ``d``'s queue (the paper's code mixes them), and a query made
    with ``d`` is contrasted with ``d``'s queue alone. Keys are gathered from every rank before they are queued; every
    rank uses the same descriptor at a step, so every rank's queues stay identical.

    Args:
        encoder: ``encoder(x, descriptor) -> [B, F]``.
        projector: ``[B, F] -> [B, D]``.
        descriptors: ``[Q, K]``: every descriptor the run can draw (the space's table, or the one fixed descriptor).
        queue_size: keys per queue.
        momentum: EMA momentum of the key encoder (constant, 0.999 in the paper).
        temperature: InfoNCE temperature (0.2 in MoCo-v2).
        heads_per_descriptor: one projection head (and momentum head) per descriptor, as the paper's code has; a
            step trains only its descriptor's head.
    """

    def __init__(
        self, encoder: nn.Module, projector: nn.Module, descriptors: torch.Tensor, queue_size: int = 65536,
        momentum: float = 0.999, temperature: float = 0.2, heads_per_descriptor: bool = False,
    ) -> None:
        super().__init__()
        _check_momentum(momentum, temperature)
        if queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {queue_size}")
        if descriptors.dim() != 2 or len(descriptors) < 1:
            raise ValueError(f"MoCoV2 needs descriptors [Q, K], got shape {tuple(descriptors.shape)}")
        dim = _output_dim(projector)
        if heads_per_descriptor:
            projector = nn.ModuleList([projector] + [copy.deepcopy(projector) for _ in range(len(descriptors) - 1)])
            for head in list(projector)[1:]:
                _reset(head)
        self.encoder, self.projector = encoder, projector
        self.momentum_encoder, self.momentum_projector = momentum_copy(encoder), momentum_copy(projector)
        self.momentum, self.temperature = momentum, temperature
        self.heads_per_descriptor = heads_per_descriptor
        self._rows = {tuple(row): index for index, row in enumerate(descriptors.detach().float().tolist())}
        self.register_buffer("descriptors", descriptors.detach().float().clone())
        self.register_buffer("queue", F.normalize(torch.randn(len(descriptors), queue_size, dim), dim=2))
        self.register_buffer("queue_ptr", torch.zeros(len(descriptors), dtype=torch.long))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def queue_index(self, descriptor: torch.Tensor) -> torch.Tensor:
        """The row of ``descriptor`` in ``descriptors`` (a 0-d tensor on the device: no host sync)."""
        matches = (self.descriptors == descriptor.to(self.descriptors)).all(dim=1)
        return matches.to(torch.uint8).argmax()

    def heads(self, descriptor: torch.Tensor) -> tuple[nn.Module, nn.Module]:
        """The projection head and momentum head of ``descriptor`` (the shared pair without per-descriptor heads)."""
        if not self.heads_per_descriptor:
            return self.projector, self.momentum_projector
        row = self._rows[tuple(descriptor.detach().float().cpu().tolist())]
        return self.projector[row], self.momentum_projector[row]

    def unused_parameters_possible(self) -> bool:
        """With a head per descriptor, a step leaves the other heads without gradients (DDP must be told)."""
        return self.heads_per_descriptor

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, descriptor: torch.Tensor) -> dict[str, torch.Tensor]:
        projector, momentum_projector = self.heads(descriptor)
        q = projector(self.encoder(view1, descriptor))
        with torch.no_grad():
            k = momentum_projector(self.momentum_encoder(view2, descriptor))
        index = self.queue_index(descriptor)
        loss = moco_infonce(q, k, self.queue[index], self.temperature)
        keys = F.normalize(k.detach().float(), dim=1)
        self._pending = (index, gather_no_grad(keys))
        with torch.no_grad():
            alignment = F.cosine_similarity(q.float(), k.float(), dim=1).mean()
        return {"loss": loss, "alignment": alignment, "embedding_std": embedding_spread(q)}

    def encoder_loaded(self) -> None:
        ema_update(self.momentum_encoder, self.encoder, 0.0)
        ema_update(self.momentum_projector, self.projector, 0.0)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Queue this step's keys in its descriptor's queue, then move the key encoder towards the query encoder."""
        if self._pending is not None:
            self.enqueue(*self._pending)
            self._pending = None
        ema_update(self.momentum_encoder, self.encoder, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)

    @torch.no_grad()
    def enqueue(self, index: torch.Tensor, keys: torch.Tensor) -> None:
        """Write ``keys`` ``[N, D]`` into queue ``index`` at its pointer (wrapping around), advance the pointer."""
        size = self.queue.shape[1]
        keys = keys[-size:]  # more keys than the queue holds: the newest win
        pointer = self.queue_ptr[index]
        positions = (pointer + torch.arange(len(keys), device=keys.device)) % size
        self.queue.view(-1, self.queue.shape[2]).index_copy_(0, index * size + positions, keys.to(self.queue.dtype))
        self.queue_ptr[index] = (pointer + len(keys)) % size


class MoCoV3(ContrastiveMethod):
    """MoCo-v3 (Chen et al., 2021): symmetric contrastive loss of predictor outputs against momentum keys.

    Args:
        encoder: ``encoder(x, descriptor) -> [B, F]``.
        projector: ``[B, F] -> [B, D]`` (MoCo-v3: 3 layers, affine-free BatchNorm last).
        predictor: ``[B, D] -> [B, D]``.
        momentum: base momentum, raised to 1 along a half cosine over the run (0.99 for ResNets, 0.99 / 0.996 ViTs).
        temperature: softmax temperature (0.2 for ViTs, 1.0 for ResNets in MoCo-v3).
        gather: use the keys of every rank as negatives.
    """

    def __init__(
        self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module, momentum: float = 0.99,
        temperature: float = 0.2, gather: bool = True,
    ) -> None:
        super().__init__()
        _check_momentum(momentum, temperature)
        self.encoder, self.projector, self.predictor = encoder, projector, predictor
        self.momentum_encoder, self.momentum_projector = momentum_copy(encoder), momentum_copy(projector)
        self.base_momentum, self.temperature, self.gather = momentum, temperature, gather

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, descriptor: torch.Tensor) -> dict[str, torch.Tensor]:
        q1 = self.predictor(self.projector(self.encoder(view1, descriptor)))
        q2 = self.predictor(self.projector(self.encoder(view2, descriptor)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(view1, descriptor))
            k2 = self.momentum_projector(self.momentum_encoder(view2, descriptor))
        loss = moco_v3_contrastive(q1, k2, self.temperature, self.gather) + moco_v3_contrastive(
            q2, k1, self.temperature, self.gather
        )
        with torch.no_grad():
            alignment = F.cosine_similarity(q1.float(), k2.float(), dim=1).mean()
        return {"loss": loss, "alignment": alignment, "embedding_std": embedding_spread(q1)}

    def encoder_loaded(self) -> None:
        ema_update(self.momentum_encoder, self.encoder, 0.0)
        ema_update(self.momentum_projector, self.projector, 0.0)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Move the momentum side towards the query side with the momentum of the next step's schedule."""
        momentum = cosine_momentum(self.base_momentum, step + 1, total_steps)
        ema_update(self.momentum_encoder, self.encoder, momentum)
        ema_update(self.momentum_projector, self.projector, momentum)


def _reset(module: nn.Module) -> None:
    """Fresh initial weights for every layer of a copied head."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters") and layer is not module:
            layer.reset_parameters()


def _output_dim(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the projection head has no Linear layer to read its output size from")
    return linears[-1].out_features
