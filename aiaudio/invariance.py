"""Invariance spaces: the set of invariance descriptors a model is amortised over.

An :class:`InvarianceSpace` names K factors (augmentations, or groups of them). A descriptor is a vector
``i in [0, 1]^K``; during pretraining only binary descriptors with at least ``min_active`` bits on are used.
This module knows nothing of ``torch.nn``, audio or vision.

Example:
    >>> space = InvarianceSpace(["crop", "flip", "jitter", "grayscale", "blur"], min_active=1)
    >>> len(space)
    31
    >>> space.to_vector({"crop": 1, "flip": 0, "jitter": 1, "grayscale": 0, "blur": 0}).tolist()
    [1.0, 0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from aiaudio.seeding import generator_for

_DESCRIPTOR_STREAM = 1  # stream id: keeps descriptor draws apart from other per-step streams

class InvarianceSpace:
    """Named invariance factors and the table of binary descriptors used for pretraining.

    Args:
        names: factor names, in descriptor order; unique.
        min_active: a pretraining descriptor has at least this many bits on (0 <= min_active <= K).
    """

    def __init__(self, names: Sequence[str], min_active: int = 1) -> None:
        names = tuple(names)
        if not names:
            raise ValueError("InvarianceSpace needs at least one factor name")
        if len(set(names)) != len(names):
            raise ValueError(f"InvarianceSpace factor names must be unique, got {names}")
        if not 0 <= min_active <= len(names):
            raise ValueError(f"min_active must be in [0, {len(names)}], got {min_active}")
        self.names: tuple[str, ...] = names
        self.min_active = min_active
        # Rows ordered by number of active bits, then lexicographically (so all-ones is last).
        rows = [bits for bits in itertools.product((0.0, 1.0), repeat=len(names)) if sum(bits) >= min_active]
        rows.sort(key=lambda bits: (sum(bits), tuple(-b for b in bits)))
        self.table: torch.Tensor = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(names))

    @property
    def dim(self) -> int:
        """Number of factors K."""
        return len(self.names)

    def __len__(self) -> int:
        return self.table.shape[0]

    def __repr__(self) -> str:
        return f"InvarianceSpace(names={list(self.names)}, min_active={self.min_active}, descriptors={len(self)})"

    def sample(self, generator: torch.Generator, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """Draw one descriptor from the table (float32, shape ``[K]``, on the CPU): uniformly, or with
        ``probabilities`` ``[len(self)]`` (see :meth:`sampling_probabilities`)."""
        if len(self) == 0:
            raise ValueError(f"{self!r} has no descriptors to sample")
        if probabilities is None:
            row = int(torch.randint(len(self), (1,), generator=generator).item())
        else:
            row = int(torch.multinomial(probabilities, 1, generator=generator).item())
        return self.table[row].clone()

    def sampling_probabilities(self, bits_power: float = 0.0, all_on: float = 0.0) -> torch.Tensor | None:
        """Probabilities ``[len(self)]`` of drawing each descriptor of the table: the all-on descriptor with
        probability ``all_on`` outright, otherwise a descriptor with weight ``(active bits) ** bits_power`` (0: uniform,
        1: in proportion to its active bits). None when both are 0 (uniform: :meth:`sample`'s own draw)."""
        if bits_power < 0 or not 0.0 <= all_on <= 1.0:
            raise ValueError(f"bits_power must be >= 0 and all_on in [0, 1], got {bits_power} and {all_on}")
        if bits_power == 0 and all_on == 0:
            return None
        bits = self.table.sum(1).double()
        weights = bits.clamp_min(1e-12) ** bits_power if bits_power > 0 else torch.ones_like(bits)
        probabilities = (1.0 - all_on) * weights / weights.sum()
        full = bits == self.dim
        if not bool(full.any()):
            raise ValueError(f"{self!r} has no all-on descriptor to favour")
        probabilities[full] += all_on
        return probabilities.float()

    def descriptor_for_step(self, seed: int, step: int, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """The descriptor of training step ``step``: a pure function of (seed, step) (and ``probabilities``).

        Every rank of a distributed run, and a resumed run, draws the same descriptor for the same step.
        """
        return self.sample(generator_for(seed, step, _DESCRIPTOR_STREAM), probabilities)

    def descriptors_for_step(self, seed: int, step: int, count: int,
                             probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """``count`` descriptors ``[count, K]`` of training step ``step``, a pure function of (seed, step, count): the
        first is :meth:`descriptor_for_step`, the others independent draws from the table."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        rows = [self.descriptor_for_step(seed, step, probabilities)]
        rows += [self.sample(generator_for(seed, step, _DESCRIPTOR_STREAM, group), probabilities)
                 for group in range(1, count)]
        return torch.stack(rows)

    def all_on(self) -> torch.Tensor:
        """The descriptor with every factor on (full invariance)."""
        return torch.ones(self.dim)

    def quantize(self, descriptor: torch.Tensor, bits: int) -> torch.Tensor:
        """Q(i; b): see :func:`quantize`."""
        return quantize(descriptor, bits)

    def to_vector(self, invariance: Mapping[str, float] | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """A descriptor vector from a mapping of every factor name to its strength, or from a sequence of K numbers.

        An unknown or missing name, a wrong length or a value outside [0, 1] is an error.
        """
        if isinstance(invariance, Mapping):
            unknown = sorted(set(invariance) - set(self.names))
            missing = [n for n in self.names if n not in invariance]
            if unknown or missing:
                raise KeyError(
                    f"invariance mapping does not match factors {list(self.names)}: "
                    f"unknown {unknown}, missing {missing}"
                )
            vector = torch.tensor([float(invariance[n]) for n in self.names], dtype=torch.float32)
        else:
            vector = torch.as_tensor(invariance, dtype=torch.float32).detach().flatten().cpu()
            if vector.numel() != self.dim:
                raise ValueError(f"invariance vector has {vector.numel()} entries; this space has {self.dim}: {self.names}")
        if not torch.all((vector >= 0) & (vector <= 1)):
            raise ValueError(f"invariance strengths must lie in [0, 1], got {vector.tolist()}")
        return vector

    def to_mapping(self, descriptor: torch.Tensor | Sequence[float]) -> dict[str, float]:
        """The mapping of factor names to strengths for a descriptor vector."""
        vector = self.to_vector(descriptor)
        return {name: float(v) for name, v in zip(self.names, vector.tolist())}

    def parse(self, text: str) -> torch.Tensor:
        """Parse ``"pitch_shift=0.2,fade_in=1,..."`` (every name) or ``"0.2,1,..."`` (K numbers) into a vector."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts and all("=" in p for p in parts):
            mapping = {}
            for part in parts:
                key, value = part.split("=", 1)
                mapping[key.strip()] = float(value)
            return self.to_vector(mapping)
        if any("=" in p for p in parts):
            raise ValueError(f"invariance {text!r} mixes name=value and bare numbers")
        return self.to_vector([float(p) for p in parts])

    def active_names(self, descriptor: torch.Tensor | Sequence[float]) -> list[str]:
        """The factors a descriptor switches on (entries >= 0.5), in space order; a wrong length is an error."""
        values = torch.as_tensor(descriptor).detach().float().flatten().cpu()
        if values.numel() != self.dim:
            raise ValueError(f"descriptor has {values.numel()} entries; this space has {self.dim}: {self.names}")
        return [name for name, value in zip(self.names, values.tolist()) if value >= 0.5]

    def name_of(self, descriptor: torch.Tensor) -> str:
        """A short readable name: the active factors joined by '+', or 'none'."""
        active = self.active_names(self.to_vector(descriptor))
        return "+".join(active) if active else "none"


def quantize(descriptor: torch.Tensor, bits: int) -> torch.Tensor:
    """Q(i; b): round each entry of ``descriptor`` (in [0, 1]) to the nearest of 2**b evenly spaced levels."""
    if bits < 1:
        raise ValueError(f"quantisation needs bits >= 1, got {bits}")
    levels = 2**bits - 1
    return torch.round(descriptor.clamp(0.0, 1.0) * levels) / levels
