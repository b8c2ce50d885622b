"""The shared, modality-agnostic trainer: distributed set-up, schedules, checkpoints, metrics."""

from aiaudio.engine.checkpoint import latest_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from aiaudio.engine.distributed import DistInfo, init_distributed
from aiaudio.engine.trainer import NonFiniteLossError, Trainer, TrainerConfig

__all__ = [
    "DistInfo", "NonFiniteLossError", "Trainer", "TrainerConfig", "init_distributed", "latest_checkpoint",
    "load_weights", "resolve_checkpoint", "save_checkpoint",
]
