"""Confidence intervals over episodes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MeanCI:
    """A mean with the half-width of its 95% confidence interval (``1.96 * std / sqrt(n)``, population std)."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


def mean_ci(values: torch.Tensor | list[float]) -> MeanCI:
    """Mean and 95% CI half-width of per-episode scores, as MetaAudio reports them (population std, ddof 0)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("mean_ci needs at least one value")
    std = values.std(correction=0) if values.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    return MeanCI(float(values.mean()), float(1.96 * std / values.numel() ** 0.5), int(values.numel()))
