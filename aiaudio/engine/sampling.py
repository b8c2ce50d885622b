"""A resumable batch sampler whose batches are pure functions of (seed, step, rank)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from aiaudio.seeding import generator_for, mix_seed

_ORDER_STREAM = 3  # stream id for the per-epoch data order


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step from ``start_step`` to ``total_steps``, this rank's share of the global batch.

    Each element is ``(index, item_seed)``: a dataset keyed this way makes its random choices (a crop, say) from
    ``item_seed``, so the stream of examples, and not just their order, is reproducible after a resume and does not
    depend on the number of loader workers. Epochs are permutations of the dataset; the last partial batch of an
    epoch is dropped.

    Args:
        dataset_size: number of examples.
        global_batch: examples per step over all ranks (a multiple of ``world_size``).
        total_steps: the run's length in steps.
        seed: the run's seed.
        rank, world_size: this process's place in the run.
        start_step: the first step to yield (for resume).
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        total_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} ranks")
        if dataset_size < global_batch:
            raise ValueError(
                f"the dataset has {dataset_size} examples, fewer than one batch of {global_batch}: "
                "lower trainer.batch_size or add data"
            )
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.total_steps = total_steps
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.steps_per_epoch = dataset_size // global_batch

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(index, item_seed)`` pairs at ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        first = position * self.global_batch + self.rank * self.local_batch
        indices = order[first : first + self.local_batch].tolist()
        return [(index, mix_seed(self.seed, epoch, first + j)) for j, index in enumerate(indices)]

    def _order(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_cached_epoch", None) != epoch:
            self._cached_order = torch.randperm(self.dataset_size, generator=generator_for(self.seed, epoch, _ORDER_STREAM))
            self._cached_epoch = epoch
        return self._cached_order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch_for_step(step)
