"""Which readouts a frozen encoder gets: the learned descriptor, each fixed descriptor, or plain features.

Shared by the many-shot readout and the few-shot evaluation, so both read out the same things the same way:

* ``learned``: an amortised encoder whose descriptor ``i`` is learned (from ``init``) with the head;
* ``fixed``: an amortised encoder at a fixed descriptor, features computed once;
* ``plain``: an encoder without a descriptor (a baseline), features computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from aiaudio.config import ConfigError
from aiaudio.engine.pretrained import PretrainedEncoder
from aiaudio.eval.learner import AmortisedFeatures, EpisodeEncoder, FrozenFeatures, InputFn

@dataclass
class StatisticsConfig:
    """Which BatchNorm statistics an amortised encoder's features use at a descriptor chosen for the whole set.

    ``source``: ``running``, the checkpoint's running statistics (pretraining averaged them over every descriptor it
    drew, so they fit none exactly); ``reference``, statistics measured at each descriptor on ``size`` examples drawn
    (with ``seed``) from the training data, never from test data
    (:meth:`~aiaudio.engine.pretrained.PretrainedEncoder.measured_statistics`): a many-shot readout draws them from
    its training items; a few-shot run from the data the validation episodes may use. Few-shot readouts that learn
    ``i`` per episode keep the running statistics: measuring them at every step of every episode would cost a
    reference pass each. Encoders without BatchNorm statistics that depend on ``i`` ignore this.
    """

    source: str = "reference"
    size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in ("running", "reference"):
            raise ValueError(f"statistics.source must be running or reference, got {self.source!r}")
        if self.size < 2:
            raise ValueError(f"statistics.size must be >= 2 (examples in the reference batch), got {self.size}")


def reference_rows(candidates: torch.Tensor, statistics: StatisticsConfig, what: str) -> torch.Tensor:
    """The reference batch of ``statistics``: a seeded subset of ``candidates`` (row indices; ``what`` names them in
    the error when there are fewer than 2), sorted."""
    if len(candidates) < 2:
        raise ConfigError(f"statistics.source=reference needs at least 2 {what}, got {len(candidates)}")
    generator = torch.Generator().manual_seed(statistics.seed)
    chosen = torch.randperm(len(candidates), generator=generator)[: statistics.size]
    return candidates.cpu()[chosen].sort().values


#: ``features_at(descriptor or None) -> [S, F]`` features of every evaluation row at one descriptor.
FeatureTable = Callable[[torch.Tensor | None], torch.Tensor]


@dataclass
class ReadoutPlan:
    """One readout: its kind (``learned``, ``fixed``, ``plain``), the fixed descriptor's text as configured, the
    descriptor (fixed, or None), the learner's start for ``i`` and the encoder side."""

    kind: str
    text: str
    descriptor: torch.Tensor | None
    start: torch.Tensor | None
    encoder: EpisodeEncoder

    @property
    def name(self) -> str:
        """How reports name the readout: ``learned``, ``plain`` or ``fixed:<text>``."""
        return f"fixed:{self.text}" if self.kind == "fixed" else self.kind


def fixed_descriptor(model: PretrainedEncoder, text: str, position: int) -> torch.Tensor:
    """Descriptor ``fixed[position]`` (``"all"``, ``"none"``, K numbers or every factor named); an error names it."""
    try:
        return model.descriptor(text)
    except (ConfigError, KeyError, ValueError) as error:
        raise ConfigError(f"fixed[{position}]: {text!r} is not a descriptor of {list(model.space.names)} ({error})") from None


def readout_plans(
    model: PretrainedEncoder, fixed: Sequence[str], learn: bool, init: float, inputs: InputFn, features_at: FeatureTable,
    bf16: bool = False,
) -> list[ReadoutPlan]:
    """The readouts of ``model``: learned (when ``learn``; its encoder passes under bf16 autocast when ``bf16``) and
    one per ``fixed`` text for an amortised encoder; one plain readout for any other."""
    if not model.amortised:
        return [ReadoutPlan("plain", "", None, None, FrozenFeatures(features_at(None)))]
    plans = []
    if learn:
        start = torch.full((model.space.dim,), float(init))
        plans.append(ReadoutPlan("learned", "", None, start, AmortisedFeatures(model, inputs, bf16)))
    for position, text in enumerate(fixed):
        descriptor = fixed_descriptor(model, text, position)
        table = features_at(descriptor.to(model.device))
        plans.append(ReadoutPlan("fixed", text, descriptor, descriptor, FrozenFeatures(table)))
    if not plans:
        raise ConfigError("nothing to run: learn the invariance or give at least one fixed descriptor")
    return plans
