"""Amortised invariance learning for contrastive self-supervision: the core and the audio side.

Example:
    >>> import aiaudio
    >>> space = aiaudio.InvarianceSpace(aiaudio.CLAR_NAMES, min_active=2)
    >>> len(space)
    120
"""

from aiaudio.invariance import CLAR_NAMES, InvarianceSpace, clar_space

__all__ = ["CLAR_NAMES", "InvarianceSpace", "clar_space"]
__version__ = "0.1.0"
