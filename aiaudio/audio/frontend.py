"""Log-mel frontend: MetaAudio's spectrogram encoding with a global (scalar) normalisation.

The encoding is n_fft 1024 (periodic Hann, window 1024), hop 512, 128 mels on the Slaney scale with Slaney area
normalisation, f_min 0, f_max 8000, power 2, centred frames with reflect padding, then ``10 * log10(mel + 2.22e-16)``
with no reference and no clipping. A 5 s clip at 16 kHz gives 128 x 157 frames, a 4 s clip 128 x 126.

The computation is split so that a spectral augmentation can act between the mel projection and the log::

    mel = frontend.mel_power(wave)          # [B, n_mels, T], linear power
    mel = time_stretch(mel, generator)      # optional
    x = frontend.normalize(frontend.log(mel)).unsqueeze(1)   # what frontend(wave) returns

The scalar ``mean`` and ``std`` are buffers, so they travel with the model's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio
from torch import nn

from aiaudio.engine.pretrained import register_input_transform

#: Added to the mel power before the log (float64 machine epsilon, as in MetaAudio).
LOG_OFFSET = 2.22e-16


@dataclass
class LogMelConfig:
    """Parameters of the log-mel encoding (defaults: MetaAudio's)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"LogMelConfig: sample_rate, n_fft, hop_length and n_mels must be positive, got {self}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"LogMelConfig: win_length must be in (0, n_fft={self.n_fft}], got {self.win_length}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"LogMelConfig: need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={self.f_max}"
            )


class LogMel(nn.Module):
    """Waveform ``[B, N]`` -> normalised log-mel ``[B, 1, n_mels, T]``.

    Args:
        config: encoding parameters; ``LogMelConfig()`` (MetaAudio's) when omitted.
    """

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LogMelConfig()
        c = self.config
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            window_fn=torch.hann_window,
            power=c.power,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def num_frames(self, num_samples: int) -> int:
        """Number of frames T for a clip of ``num_samples`` samples."""
        return num_samples // self.config.hop_length + 1

    def mel_power(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram ``[B, n_mels, T]`` of waveforms ``[B, N]``."""
        if wave.dim() != 2:
            raise ValueError(f"LogMel.mel_power expects waveforms of shape [batch, samples], got {tuple(wave.shape)}")
        return self.mel_from_power(self.power_spectrogram(wave))

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Linear power STFT ``[B, n_fft // 2 + 1, T]`` (the first half of :meth:`mel_power`)."""
        if wave.dim() != 2:
            raise ValueError(f"LogMel.power_spectrogram expects [batch, samples], got {tuple(wave.shape)}")
        stft = self.melspec.spectrogram
        spec = torch.stft(
            wave, stft.n_fft, stft.hop_length, stft.win_length, window=stft.window, center=True, pad_mode="reflect",
            return_complex=True,
        )
        # |X|**2 as re**2 + im**2: several times faster on the CPU than the complex abs that torchaudio squares.
        return torch.addcmul(spec.real.square(), spec.imag, spec.imag)

    def mel_from_power(self, power: torch.Tensor) -> torch.Tensor:
        """Mel power ``[B, n_mels, T]`` from a power STFT (the second half of :meth:`mel_power`)."""
        return self.melspec.mel_scale(power)

    @staticmethod
    def log(mel_power: torch.Tensor) -> torch.Tensor:
        """``10 * log10(mel_power + 2.22e-16)`` (decibels, no reference, no clipping)."""
        return 10.0 * torch.log10(mel_power + LOG_OFFSET)

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Global normalisation ``(log_mel - mean) / std`` with the stored scalars."""
        return (log_mel - self.mean) / self.std

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``[B, 1, n_mels, T]`` of waveforms ``[B, N]``."""
        return self.normalize(self.log(self.mel_power(wave))).unsqueeze(1)

    def set_stats(self, mean: float, std: float) -> None:
        """Store the global normalisation statistics (``std`` must be positive)."""
        if not std > 0:
            raise ValueError(
                f"LogMel.set_stats: std must be positive, got {std} (mean {mean}): the log-mel values the statistics "
                "were computed from are constant or not finite, as when every clip used is silent (all samples "
                "zero); check the audio the waveform cache was built from (`aiaudio cache` lists silent and "
                "suspicious clips in warnings.tsv), replace the silent recordings and rebuild the cache"
            )
        self.mean.fill_(float(mean))
        self.std.fill_(float(std))


@torch.no_grad()
def compute_stats(frontend: LogMel, waves: Iterable[torch.Tensor]) -> tuple[float, float]:
    """One scalar mean and (population) std over every log-mel value of every clip.

    Args:
        frontend: the encoder; its current ``mean``/``std`` are not used.
        waves: waveforms, each ``[N]`` or ``[B, N]``, on the frontend's device.

    Returns:
        ``(mean, std)`` as Python floats, accumulated in float64.
    """
    total = 0.0
    total_sq = 0.0
    count = 0
    for wave in waves:
        wave = torch.as_tensor(wave)
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        values = frontend.log(frontend.mel_power(wave)).double()
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
    if count == 0:
        raise ValueError(
            "compute_stats: no waveforms given, so there is nothing to compute log-mel statistics from: the dataset "
            "or waveform cache used is empty (every file unreadable?); run `aiaudio cache`, read its failures.tsv "
            "for why each file could not be read, fix the data and build the cache again"
        )
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0)
    return mean, variance**0.5


class LogMelInput(LogMel):
    """The log-mel frontend as a loaded encoder's input transform: waveforms ``[N]`` or ``[B, N]`` become normalised
    log-mels ``[B, 1, M, T]``; log-mels ``[B, 1, M, T]`` pass through. Its state dict is :class:`LogMel`'s."""

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 4:
            return audio
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise ValueError(f"expected waveforms [B, N] or [N], or log-mels [B, 1, M, T]; got {list(audio.shape)}")
        return super().forward(audio.float())


@register_input_transform("logmel")
def logmel_input(config: Mapping[str, Any]) -> LogMelInput:
    """The ``logmel`` input transform of an encoder record: :class:`LogMelInput` with the recorded parameters."""
    return LogMelInput(LogMelConfig(**config))
