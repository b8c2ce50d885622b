"""The modality-agnostic pretraining step: one descriptor per step, two views made with it, one method."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from aiaudio.engine.distributed import rank_and_world
from aiaudio.engine.trainer import TrainingModule
from aiaudio.invariance import InvarianceSpace
from aiaudio.methods.base import ContrastiveMethod
from aiaudio.seeding import generator_for

_VIEW_STREAM = 2  # stream id for the per-step augmentation generator


class ViewMaker(Protocol):
    """Makes two augmented views of a batch with only the augmentations a descriptor switches on.

    The descriptor arrives on the CPU; the generator lives on the batch's device.
    """

    def __call__(
        self, batch: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class ContrastivePretrainer(TrainingModule):
    """Wires a descriptor policy, a view maker and a contrastive method into ``forward(batch, step) -> metrics``.

    The descriptor of step ``s`` is ``space.descriptor_for_step(seed, s)`` (amortised) or a fixed vector (baseline):
    identical on every rank and after a resume. Augmentation randomness comes from a generator seeded by
    (seed, step, rank), so a resumed run replays exactly the views an uninterrupted run would have made.
    Views are made in float32 outside autocast; the method runs under whatever autocast the trainer set.

    Args:
        views: the modality's view maker (an ``nn.Module``; its buffers, e.g. normalisation stats, are saved).
        method: a :class:`~aiaudio.methods.base.ContrastiveMethod` (SimCLR, MoCoV2, MoCoV3), called as
            ``method(view1, view2, descriptor)``.
        space: the invariance space.
        seed: the run's seed.
        fixed_descriptor: when given, every step uses it (the non-amortised baseline).
        channels_last: hand the views to the method in channels_last memory format.
        descriptors_per_step: G; above 1 the batch is split into G equal groups of consecutive examples, each with its
            own descriptor (:meth:`~aiaudio.invariance.InvarianceSpace.descriptors_for_step`), its own views and its
            own contrastive loss, and the method gets the descriptors ``[G, K]`` (amortised runs only).
        probabilities: how often each descriptor of the table is drawn (None: uniformly; see
            :meth:`~aiaudio.invariance.InvarianceSpace.sampling_probabilities`).
    """

    def __init__(
        self,
        views: nn.Module,
        method: ContrastiveMethod,
        space: InvarianceSpace,
        seed: int,
        fixed_descriptor: torch.Tensor | None = None,
        channels_last: bool = False,
        descriptors_per_step: int = 1,
        probabilities: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if descriptors_per_step < 1:
            raise ValueError(f"descriptors_per_step must be >= 1, got {descriptors_per_step}")
        if descriptors_per_step > 1 and fixed_descriptor is not None:
            raise ValueError("several descriptors per step need an amortised run (a fixed run has one descriptor)")
        self.descriptors_per_step = descriptors_per_step
        self.probabilities = probabilities
        self.views = views
        self.method = method
        self.space = space
        self.seed = seed
        self.fixed_descriptor = None if fixed_descriptor is None else space.to_vector(fixed_descriptor)
        self.channels_last = channels_last

    def after_step(self, step: int, total_steps: int) -> None:
        self.method.after_step(step, total_steps)

    def step_label(self, step: int) -> str:
        return " | ".join(self.space.name_of(d) for d in self.descriptors(step))

    def compile_target(self) -> nn.Module:
        return self.method

    def batch_groups(self) -> int:
        return self.descriptors_per_step

    def unused_parameters_possible(self) -> bool:
        return self.method.unused_parameters_possible()

    def descriptor(self, step: int) -> torch.Tensor:
        """The descriptor used at ``step`` (CPU, float32, shape ``[K]``)."""
        if self.fixed_descriptor is not None:
            return self.fixed_descriptor.clone()
        return self.space.descriptor_for_step(self.seed, step, self.probabilities)

    def descriptors(self, step: int) -> torch.Tensor:
        """The descriptors of ``step``, ``[G, K]`` (CPU, float32; G = ``descriptors_per_step``)."""
        if self.descriptors_per_step == 1:
            return self.descriptor(step).unsqueeze(0)
        return self.space.descriptors_for_step(self.seed, step, self.descriptors_per_step, self.probabilities)

    def forward(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        device = batch.device
        rank, _ = rank_and_world()
        generator = generator_for(self.seed, step, rank, _VIEW_STREAM, device=device)
        groups = self.descriptors_per_step
        if groups == 1:
            descriptor = self.descriptor(step)  # stays on the CPU for the view maker: reading its bits costs no sync
            with torch.autocast(device_type=device.type, enabled=False), torch.no_grad():
                view1, view2 = self.views(batch, descriptor, generator)
        else:
            if batch.shape[0] % groups or batch.shape[0] // groups < 2:
                raise ValueError(f"a batch of {batch.shape[0]} cannot be split into {groups} groups of at least 2 "
                                 "examples: make the per-rank batch size a multiple of descriptors_per_step")
            descriptor = self.descriptors(step)
            with torch.autocast(device_type=device.type, enabled=False), torch.no_grad():
                pairs = [self.views(part, d, generator) for part, d in zip(batch.chunk(groups), descriptor)]
            view1, view2 = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        descriptor = descriptor.to(device, non_blocking=True)
        if self.channels_last and view1.dim() == 4:
            view1 = view1.contiguous(memory_format=torch.channels_last)
            view2 = view2.contiguous(memory_format=torch.channels_last)
        return self.method(view1, view2, descriptor)
