"""The CLAR audio invariance space: the seven augmentations an audio descriptor switches on and off."""

from __future__ import annotations

from aiaudio.invariance import InvarianceSpace

#: The seven CLAR audio augmentations, in the order used by every audio descriptor.
CLAR_NAMES: tuple[str, ...] = (
    "pitch_shift",
    "fade_in",
    "fade_out",
    "noise",
    "time_mask",
    "time_shift",
    "time_stretch",
)


def clar_space(min_active: int = 2) -> InvarianceSpace:
    """The CLAR audio space: 7 augmentations, by default every descriptor with at least two bits on (120)."""
    return InvarianceSpace(CLAR_NAMES, min_active=min_active)
