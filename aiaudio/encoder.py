"""A pretrained audio encoder, frozen, with its log-mel input transform and invariance space: what evaluation uses.

The loading itself is the core's (:func:`aiaudio.engine.pretrained.load_encoder`, from the checkpoint's
``encoder.json``); this module adds the log-mel transform's registration and, for checkpoints written before they
carried an encoder record, a record rebuilt from their ``config.yaml``.

Example:
    >>> encoder = load_encoder("runs/ai_simclr")                      # a run directory or a checkpoint directory
    >>> features = encoder.embed(waveforms, {"pitch_shift": 0.2, ...})  # every factor named, or a vector of K numbers
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from aiaudio.audio.frontend import LogMel  # also registers the "logmel" input transform
from aiaudio.audio.pretraining import build_pretrainer, parse_config
from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import resolve_checkpoint
from aiaudio.engine.pretrained import PretrainedEncoder, file_digest, read_record
from aiaudio.engine.pretrained import load_encoder as load_recorded_encoder

__all__ = ["PretrainedEncoder", "file_digest", "legacy_record", "load_encoder", "logmel_of"]

log = logging.getLogger(__name__)


def legacy_record(checkpoint: Path) -> dict[str, Any]:
    """The encoder record of an audio checkpoint that has none, rebuilt from its ``config.yaml``."""
    path = Path(checkpoint) / "config.yaml"
    try:
        config = parse_config(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except ConfigError as error:
        raise ConfigError(f"{checkpoint} has no encoder.json and its {path.name} does not parse: {error}") from None
    log.info("%s predates encoder records: rebuilding the record from its config.yaml", checkpoint)
    return build_pretrainer(config)[1]


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> PretrainedEncoder:
    """Load the encoder of an audio pretraining run directory (its latest checkpoint) or of a checkpoint directory."""
    checkpoint = resolve_checkpoint(Path(path))
    record = read_record(checkpoint)
    encoder = load_recorded_encoder(checkpoint, device, record if record is not None else legacy_record(checkpoint))
    logmel_of(encoder)
    return encoder


def logmel_of(encoder: PretrainedEncoder) -> LogMel:
    """The log-mel frontend of a loaded audio encoder; an error naming the checkpoint for any other input."""
    if not isinstance(encoder.transform, LogMel):
        raise ConfigError(
            f"{encoder.source} takes {type(encoder.transform).__name__} inputs, not log-mels: it is not an audio encoder"
        )
    return encoder.transform
