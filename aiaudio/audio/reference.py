"""Reference CLAR chain: one clip at a time on the CPU with audiomentations and torchaudio's ``Fade``.

It draws from the same parameter ranges as :class:`aiaudio.audio.augment.ClarAugment` and is gated by the same
descriptor, but every op is the library's own waveform implementation (time stretch included, applied last on the
waveform and cropped or zero-padded back to the clip's length). It serves as the baseline of the throughput benchmark,
as an independent check in the tests, and as a per-example transform in ``DataLoader`` workers.

Randomness comes from Python's ``random`` and NumPy's global generator, as in audiomentations; pass ``seed`` to
reseed both for a reproducible call (``DataLoader`` seeds them per worker).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torchaudio
from audiomentations import AddColorNoise, PitchShift, Shift, TimeMask, TimeStretch

from aiaudio.audio.augment import NOISE_EXPONENTS, ClarConfig, active_ops
from aiaudio.audio.frontend import LogMel

#: Phase-vocoder methods of audiomentations' PitchShift and TimeStretch.
REFERENCE_METHODS: tuple[str, ...] = ("signalsmith_stretch", "librosa_phase_vocoder")


def colour_decay_db_per_octave(colour: str) -> float:
    """audiomentations' ``f_decay`` (dB per octave of power) for a noise colour with power ~ 1/f**alpha."""
    return -10.0 * float(np.log10(2.0)) * NOISE_EXPONENTS[colour]


class ReferenceClarChain:
    """The CLAR augmentations of one clip, op by op, on NumPy float32 waveforms.

    Args:
        config: parameter ranges and probabilities (the same object ``ClarAugment`` takes).
        sample_rate: sample rate of the clips.
        method: phase-vocoder implementation for pitch shift and time stretch, one of ``REFERENCE_METHODS``.
    """

    def __init__(
        self, config: ClarConfig | None = None, sample_rate: int = 16000, method: str = "signalsmith_stretch"
    ) -> None:
        if method not in REFERENCE_METHODS:
            raise ValueError(f"ReferenceClarChain: method must be one of {REFERENCE_METHODS}, got {method!r}")
        self.config = config if config is not None else ClarConfig()
        self.sample_rate = int(sample_rate)
        self.method = method
        c = self.config
        self.pitch_shift = PitchShift(
            min_semitones=c.pitch_shift.min_semitones,
            max_semitones=c.pitch_shift.max_semitones,
            method=method,
            p=c.pitch_shift.p,
        )
        self.noise = {
            colour: AddColorNoise(
                min_snr_db=c.noise.min_snr_db,
                max_snr_db=c.noise.max_snr_db,
                min_f_decay=colour_decay_db_per_octave(colour),
                max_f_decay=colour_decay_db_per_octave(colour),
                p=c.noise.p,
            )
            for colour in c.noise.colours
        }
        self.time_mask = TimeMask(
            min_band_part=0.0,
            max_band_part=c.time_mask.max_fraction,
            fade_duration=0.0,
            mask_location="random",
            p=c.time_mask.p,
        )
        self.time_shift = Shift(
            min_shift=-c.time_shift.max_fraction,
            max_shift=c.time_shift.max_fraction,
            shift_unit="fraction",
            rollover=True,
            fade_duration=0.0,
            p=c.time_shift.p,
        )
        self.time_stretch = TimeStretch(
            min_rate=c.time_stretch.min_rate,
            max_rate=c.time_stretch.max_rate,
            leave_length_unchanged=True,
            method=method,
            p=c.time_stretch.p,
        )

    def _fade(self, wave: np.ndarray, fade_in: bool) -> np.ndarray:
        cfg = self.config.fade_in if fade_in else self.config.fade_out
        if random.random() >= cfg.p:
            return wave
        shape = random.choice(cfg.shapes)
        length = random.randint(0, int(cfg.max_fraction * wave.shape[-1]))
        fade = torchaudio.transforms.Fade(
            fade_in_len=length if fade_in else 0, fade_out_len=0 if fade_in else length, fade_shape=shape
        )
        return fade(torch.from_numpy(wave)).numpy()

    def _time_mask(self, wave: np.ndarray) -> np.ndarray:
        masked = self.time_mask(wave, self.sample_rate)
        if self.time_mask.parameters["should_apply"] and random.random() < self.config.time_mask.noise_probability:
            start, length = self.time_mask.parameters["t0"], self.time_mask.parameters["t"]
            rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
            masked = masked.copy()
            masked[start : start + length] = (np.random.standard_normal(length) * rms).astype(np.float32)
        return masked

    def __call__(
        self, wave: np.ndarray, descriptor: Sequence[float] | torch.Tensor, seed: int | None = None
    ) -> np.ndarray:
        """Augment one clip.

        Args:
            wave: mono float waveform ``[N]``.
            descriptor: 7 invariance bits in ``CLAR_NAMES`` order; entries < 0.5 switch an op off.
            seed: when given, reseeds Python's ``random`` and NumPy's global generator first.

        Returns:
            the augmented waveform, float32 ``[N]``.
        """
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"ReferenceClarChain expects a mono waveform of shape [samples], got {wave.shape}")
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
        active = set(active_ops(descriptor))
        sr = self.sample_rate
        if "pitch_shift" in active:
            wave = self.pitch_shift(wave, sr)
        if "fade_in" in active:
            wave = self._fade(wave, fade_in=True)
        if "fade_out" in active:
            wave = self._fade(wave, fade_in=False)
        if "noise" in active:
            wave = self.noise[random.choice(self.config.noise.colours)](wave, sr)
        if "time_mask" in active:
            wave = self._time_mask(wave)
        if "time_shift" in active:
            wave = self.time_shift(wave, sr)
        if "time_stretch" in active:
            wave = self.time_stretch(wave, sr)
        return np.ascontiguousarray(wave, dtype=np.float32)

    @staticmethod
    @torch.no_grad()
    def log_mel(wave: np.ndarray, frontend: LogMel) -> torch.Tensor:
        """The normalised log-mel ``[1, n_mels, T]`` of one (augmented) clip, through ``frontend``."""
        return frontend(torch.from_numpy(np.asarray(wave, dtype=np.float32))[None])[0]

    def view(
        self, wave: np.ndarray, descriptor: Sequence[float] | torch.Tensor, frontend: LogMel, seed: int | None = None
    ) -> torch.Tensor:
        """One augmented view as a normalised log-mel ``[1, n_mels, T]``."""
        return self.log_mel(self(wave, descriptor, seed), frontend)
