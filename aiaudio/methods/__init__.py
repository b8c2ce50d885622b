"""Contrastive methods (modality-agnostic): losses as pure functions, methods as small modules."""

from aiaudio.methods.losses import nt_xent
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aiaudio.methods.simclr import SimCLR

__all__ = ["ContrastivePretrainer", "SimCLR", "nt_xent"]
