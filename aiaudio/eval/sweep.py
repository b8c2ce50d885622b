"""The hyper-parameter grid every readout (many-shot or few-shot) is chosen from, on validation data only.

One naming everywhere: ``lrs`` (the head's learning rates), ``weight_decays`` and ``invariance_lrs`` (the learning
rates of a learned descriptor; tried only by readouts that learn it). A null list means "the learner's own value".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class SweepConfig:
    """The grid of a many-shot readout; the best validation score wins.

    Attributes:
        lrs: head learning rates.
        weight_decays: head weight decays; None: the learner's.
        invariance_lrs: descriptor learning rates, tried too by a readout that learns its descriptor; None: only the
            learner's ``invariance_lr``. (A fixed-descriptor readout sweeps ``lrs`` x ``weight_decays`` alone.)
    """

    #: Keys of earlier versions, and the key that replaced each (an old key is an error naming the new one).
    RENAMED: ClassVar[dict[str, str]] = {"lr": "lrs", "weight_decay": "weight_decays", "invariance_lr": "invariance_lrs"}

    lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    weight_decays: list[float] | None = field(default_factory=lambda: [0.0, 1e-4, 1e-3])
    invariance_lrs: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"sweep.lrs must be a non-empty list of positive values, got {self.lrs}")
        for name in ("weight_decays", "invariance_lrs"):
            values = getattr(self, name)
            if values is not None and (not values or any(not v >= 0 for v in values)):
                raise ValueError(f"sweep.{name} must be null or a non-empty list of values >= 0, got {values}")

    def settings(self, learns_invariance: bool) -> list[dict[str, float]]:
        """Every grid point as learner overrides: ``lr``, plus ``weight_decay`` and ``invariance_lr`` where swept."""
        axes: list[tuple[str, list[float]]] = [("lr", list(self.lrs))]
        if self.weight_decays is not None:
            axes.append(("weight_decay", list(self.weight_decays)))
        if learns_invariance and self.invariance_lrs is not None:
            axes.append(("invariance_lr", list(self.invariance_lrs)))
        names = [name for name, _ in axes]
        return [dict(zip(names, point)) for point in itertools.product(*(values for _, values in axes))]


@dataclass
class FewshotSweepConfig(SweepConfig):
    """The grid of a few-shot evaluation: per-episode learners, so smaller rates and no weight-decay axis."""

    lrs: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03])
    weight_decays: list[float] | None = None
    invariance_lrs: list[float] | None = field(default_factory=lambda: [0.01, 0.03, 0.1])
