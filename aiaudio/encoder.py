"""A pretrained audio encoder, frozen, with its log-mel frontend and invariance space: what evaluation uses.

Example:
    >>> encoder = load_encoder("runs/ai_simclr")                      # a run directory or a checkpoint directory
    >>> features = encoder.embed(waveforms, {"pitch_shift": 0.2, ...})  # every factor named, or a vector of K numbers
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml
from torch import nn

from aiaudio.audio.frontend import LogMel
from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import load_weights, resolve_checkpoint
from aiaudio.invariance import InvarianceSpace

Invariance = Mapping[str, float] | Sequence[float] | torch.Tensor | str | None


class PretrainedEncoder(nn.Module):
    """A frozen encoder ``h(x; i)`` in eval mode, its log-mel frontend (with the pretraining statistics) and space.

    Args:
        encoder: a Hyper-ResNet or a plain encoder (``forward(x, i)``, ``forward_stem``, ``forward_after_stem``).
        frontend: the log-mel frontend the encoder was trained with.
        space: the invariance space of the descriptor.
        amortised: whether the encoder depends on the descriptor (a plain baseline ignores it).
        source: the checkpoint directory it came from.
    """

    def __init__(
        self, encoder: nn.Module, frontend: LogMel, space: InvarianceSpace, amortised: bool, source: Path | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.frontend = frontend.eval()
        self.space = space
        self.amortised = amortised
        self.source = source
        self.num_features: int = encoder.num_features

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Always eval: BatchNorm statistics and the weights stay frozen."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def descriptor(self, invariance: Invariance = None) -> torch.Tensor:
        """A descriptor ``[K]`` from a mapping naming every factor, K numbers, text (``"pitch_shift=0.2,..."`` or
        ``"all"``) or None (all on)."""
        if invariance is None or (isinstance(invariance, str) and invariance.strip() == "all"):
            return self.space.all_on()
        try:
            if isinstance(invariance, str):
                return self.space.parse(invariance)
            return self.space.to_vector(invariance)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"invariance {invariance!r}: {error.args[0] if error.args else error}") from error

    def inputs(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-mels ``[B, 1, M, T]`` from waveforms ``[B, N]`` or ``[N]`` (or pass log-mels through)."""
        if audio.dim() == 4:
            return audio
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise ValueError(f"embed expects waveforms [B, N] or [N], or log-mels [B, 1, M, T]; got {list(audio.shape)}")
        return self.frontend(audio.to(self.device, torch.float32))

    @torch.no_grad()
    def embed(self, inputs: torch.Tensor, invariance: Invariance = None, batch_size: int = 64) -> torch.Tensor:
        """Features ``[B, num_features]`` of waveforms (at the frontend's rate) or log-mels, at one invariance."""
        descriptor = self.descriptor(invariance).to(self.device)
        chunks = [
            self.encoder(self.inputs(inputs[start : start + batch_size]).to(self.device), descriptor)
            for start in range(0, max(len(inputs), 1), batch_size)
        ]
        return torch.cat(chunks).float()

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Features of log-mels ``x`` for descriptor(s) ``i`` (``[K]``, or ``[G, K]`` for G groups of examples)."""
        return self.encoder(x, i)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_stem(x)

    def forward_after_stem(self, stem: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_after_stem(stem, i)

    def fingerprint(self) -> str:
        """A short hash of the weights file: cached features are keyed by it."""
        if self.source is None:
            raise ValueError("this encoder was not loaded from a checkpoint, so it has no fingerprint")
        return file_digest(self.source / "model.safetensors")


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> PretrainedEncoder:
    """Load the encoder of a pretraining run directory (its latest checkpoint) or of a checkpoint directory."""
    from aiaudio.pretrain import build_pretrainer, build_space, parse_config

    checkpoint = resolve_checkpoint(Path(path))
    config = parse_config(yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8")))
    model = build_pretrainer(config)
    load_weights(model, checkpoint / "model.safetensors")
    frontend: LogMel = model.views.augment.frontend
    encoder = PretrainedEncoder(
        model.method.encoder, frontend, build_space(config), config.model.encoder.startswith("hyper_"), checkpoint
    )
    return encoder.to(device)
