"""Counter-based seeding: every random stream in training is a pure function of integers.

Deriving generators from (seed, step, rank, ...) instead of carrying global RNG state makes resumed runs
bit-identical to uninterrupted ones and keeps every rank of a distributed run in step.
"""

from __future__ import annotations

import torch

_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix_seed(*keys: int) -> int:
    """Hash integer keys into one 63-bit seed (splitmix64 chain): nearby keys give unrelated streams."""
    z = 0x243F6A8885A308D3
    for key in keys:
        z = (z ^ (int(key) & _MASK64)) & _MASK64
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z = z ^ (z >> 31)
    return z & 0x7FFFFFFFFFFFFFFF


def generator_for(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``mix_seed(*keys)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(mix_seed(*keys))
    return generator
