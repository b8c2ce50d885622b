"""Amortised invariance learning for contrastive self-supervision: the core and the audio side.

The core (``aiaudio.invariance``, ``seeding``, ``config``, ``nn``, ``methods``, ``engine``, ``eval``) knows no
modality; the audio side lives in ``aiaudio.audio`` and the command modules. ``CLAR_NAMES`` and ``clar_space`` (the
audio invariance space) are re-exported here, imported on first use so that importing the core loads no audio code.

Example:
    >>> import aiaudio
    >>> space = aiaudio.InvarianceSpace(aiaudio.CLAR_NAMES, min_active=2)
    >>> len(space)
    120
"""

from typing import Any

from aiaudio.invariance import InvarianceSpace

__all__ = ["CLAR_NAMES", "InvarianceSpace", "clar_space"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("CLAR_NAMES", "clar_space"):
        from aiaudio.audio import clar

        return getattr(clar, name)
    raise AttributeError(f"module 'aiaudio' has no attribute {name!r}")
