"""Contrastive methods (modality-agnostic): losses as pure functions, methods as small modules."""

from aiaudio.methods.base import ContrastiveMethod, ema_update, momentum_copy
from aiaudio.methods.losses import moco_infonce, moco_v3_contrastive, nt_xent
from aiaudio.methods.moco import MoCoV2, MoCoV3, cosine_momentum
from aiaudio.methods.pretrainer import ContrastivePretrainer
from aiaudio.methods.simclr import SimCLR

__all__ = [
    "ContrastiveMethod", "ContrastivePretrainer", "MoCoV2", "MoCoV3", "SimCLR", "cosine_momentum", "ema_update",
    "moco_infonce", "moco_v3_contrastive", "momentum_copy", "nt_xent",
]
