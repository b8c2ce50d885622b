"""Fixed-parameter probes of the seven CLAR augmentations, for invariance measurement.

Each probe is the training op of :mod:`aiaudio.audio.augment` called through ``apply_transform`` with explicit
parameters, the same for every clip, so a probe view is exactly what pretraining would produce at those parameters.
Every view holds one augmentation alone and is returned as model input: a normalised log-mel ``[N, 1, M, T]``.

The default strengths of :class:`ProbeConfig` are this toolkit's choice (CLAR gives ranges, not probe points): each
sits well inside CLAR's training range and changes a 1-5 s clip clearly.

Example:
    >>> frontend = LogMel(); frontend.set_stats(mean, std)
    >>> inputs = clean_inputs(wave, frontend)            # [N, 1, 128, T]
    >>> views = probe_views(wave, frontend, ProbeConfig())  # {"pitch_shift": [N, 1, 128, T], ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aiaudio.audio.augment import (
    FADE_SHAPES,
    NOISE_EXPONENTS,
    PITCH_DOMAINS,
    WAVEFORM_OPS,
    BatchedAugmentation,
    ClarConfig,
    FadeConfig,
    NoiseConfig,
    Params,
    PitchShiftConfig,
    TimeMaskConfig,
    TimeShiftConfig,
    TimeStretchConfig,
    build_ops,
)
from aiaudio.audio.frontend import LogMel
from aiaudio.audio.clar import CLAR_NAMES
from aiaudio.seeding import generator_for

TIME_MASK_FILLS: tuple[str, ...] = ("zeros", "noise")


@dataclass
class ProbeConfig:
    """Strength of each probe (our defaults, not CLAR's; fractions are of the clip length).

    Attributes:
        pitch_semitones: pitch shift in semitones (+4: a major third up).
        fade_shape: shape of both fades (one of ``FADE_SHAPES``).
        fade_in_fraction: fade in over this fraction of the clip from its start.
        fade_out_fraction: fade out over this fraction of the clip up to its end.
        noise_colour: ``"white"``, ``"pink"`` or ``"brown"``.
        noise_snr_db: signal-to-noise ratio of the added noise.
        time_mask_fraction: length of the masked segment, centred in the clip.
        time_mask_fill: ``"zeros"`` or ``"noise"`` (white noise at the clip's RMS).
        time_shift_fraction: circular shift to the right (a delay; negative: to the left).
        time_stretch_rate: stretch of the mel power spectrogram (> 1 speeds up).
        pitch_n_fft, pitch_hop_length: STFT of the waveform-domain pitch shift (the training defaults).
        seed: seed of the noise of ``noise`` and of a noise-filled mask.
    """

    pitch_semitones: float = 4.0
    fade_shape: str = "linear"
    fade_in_fraction: float = 0.25
    fade_out_fraction: float = 0.25
    noise_colour: str = "white"
    noise_snr_db: float = 10.0
    time_mask_fraction: float = 0.125
    time_mask_fill: str = "zeros"
    time_shift_fraction: float = 0.25
    time_stretch_rate: float = 1.25
    pitch_n_fft: int = 1024
    pitch_hop_length: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fade_shape not in FADE_SHAPES:
            raise ValueError(f"ProbeConfig.fade_shape must be one of {FADE_SHAPES}, got {self.fade_shape!r}")
        if self.noise_colour not in NOISE_EXPONENTS:
            raise ValueError(
                f"ProbeConfig.noise_colour must be one of {tuple(NOISE_EXPONENTS)}, got {self.noise_colour!r}"
            )
        if self.time_mask_fill not in TIME_MASK_FILLS:
            raise ValueError(
                f"ProbeConfig.time_mask_fill must be one of {TIME_MASK_FILLS}, got {self.time_mask_fill!r}"
            )
        for name in ("fade_in_fraction", "fade_out_fraction", "time_mask_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ProbeConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1.0 <= self.time_shift_fraction <= 1.0:
            raise ValueError(f"ProbeConfig.time_shift_fraction must be in [-1, 1], got {self.time_shift_fraction}")
        if not self.time_stretch_rate > 0:
            raise ValueError(f"ProbeConfig.time_stretch_rate must be positive, got {self.time_stretch_rate}")

    def clar_config(self, pitch_domain: str = "waveform") -> ClarConfig:
        """The training configuration whose ops, given this probe's parameters, produce the probe views."""
        semitones, rate = self.pitch_semitones, self.time_stretch_rate
        return ClarConfig(
            pitch_shift=PitchShiftConfig(
                p=1.0, min_semitones=semitones, max_semitones=semitones, n_fft=self.pitch_n_fft,
                hop_length=self.pitch_hop_length, domain=pitch_domain,
            ),
            fade_in=FadeConfig(p=1.0, shapes=(self.fade_shape,), max_fraction=self.fade_in_fraction),
            fade_out=FadeConfig(p=1.0, shapes=(self.fade_shape,), max_fraction=self.fade_out_fraction),
            noise=NoiseConfig(
                p=1.0, colours=(self.noise_colour,), min_snr_db=self.noise_snr_db, max_snr_db=self.noise_snr_db
            ),
            time_mask=TimeMaskConfig(
                p=1.0, max_fraction=self.time_mask_fraction,
                noise_probability=1.0 if self.time_mask_fill == "noise" else 0.0,
            ),
            time_shift=TimeShiftConfig(p=1.0, max_fraction=abs(self.time_shift_fraction)),
            time_stretch=TimeStretchConfig(p=1.0, min_rate=rate, max_rate=rate),
        )

    def params(self, num_clips: int, num_samples: int, device: torch.device | str = "cpu") -> dict[str, Params]:
        """The explicit parameters of every op for ``num_clips`` clips of ``num_samples`` samples.

        Random parts (the noise spectrum, the mask's noise) come from a generator seeded with ``seed``, drawn for
        all clips at once, so clip ``n`` gets the same noise however the clips are later split into batches.
        """
        if num_clips < 1 or num_samples < 2:
            raise ValueError(f"probes need at least 1 clip of 2 samples, got {num_clips} x {num_samples}")
        generator = generator_for(self.seed)
        every = torch.ones(num_clips, dtype=torch.bool)
        index_zero = torch.zeros(num_clips, dtype=torch.int64)

        def full(value: float | int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((num_clips,), value, dtype=dtype)

        mask_length = int(self.time_mask_fraction * num_samples)
        spectrum = torch.randn(num_clips, num_samples // 2 + 1, generator=generator, dtype=torch.complex64)
        mask_noise = torch.randn(num_clips, max(mask_length, 1), generator=generator)
        fade_in_length = int(self.fade_in_fraction * num_samples)
        fade_out_length = int(self.fade_out_fraction * num_samples)
        params = {
            "pitch_shift": {"apply": every, "semitones": full(self.pitch_semitones, torch.float32)},
            "fade_in": {"apply": every, "shape": index_zero, "length": full(fade_in_length, torch.int64)},
            "fade_out": {"apply": every, "shape": index_zero, "length": full(fade_out_length, torch.int64)},
            "noise": {
                "apply": every,
                "colour": index_zero,
                "snr_db": full(self.noise_snr_db, torch.float32),
                "spectrum": spectrum,
            },
            "time_mask": {
                "apply": every,
                "length": full(mask_length, torch.int64),
                "start": full((num_samples - mask_length) // 2, torch.int64),
                "use_noise": full(self.time_mask_fill == "noise", torch.bool),
                "noise": mask_noise,
            },
            "time_shift": {"apply": every, "shift": full(round(self.time_shift_fraction * num_samples), torch.int64)},
            "time_stretch": {"apply": every, "rate": full(self.time_stretch_rate, torch.float32)},
        }
        return {name: {key: value.to(device) for key, value in op.items()} for name, op in params.items()}


def probe_ops(config: ProbeConfig, pitch_domain: str = "waveform") -> dict[str, BatchedAugmentation]:
    """The seven training ops configured for ``config`` (keyed by CLAR name)."""
    if pitch_domain not in PITCH_DOMAINS:
        raise ValueError(f"pitch_domain must be one of {PITCH_DOMAINS}, got {pitch_domain!r}")
    return build_ops(config.clar_config(pitch_domain))


def _slice(params: Params, start: int, stop: int) -> Params:
    return {key: value[start:stop] for key, value in params.items()}


def _check_wave(wave: torch.Tensor) -> None:
    if not isinstance(wave, torch.Tensor) or wave.dim() != 2 or not wave.is_floating_point() or wave.shape[0] == 0:
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"probes expect float waveforms of shape [N, samples] with N >= 1, got {shape}")


def _batches(num_clips: int, batch_size: int | None) -> list[tuple[int, int]]:
    size = num_clips if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + size, num_clips)) for start in range(0, num_clips, size)]


@torch.no_grad()
def waveform_probes(
    wave: torch.Tensor, config: ProbeConfig | None = None, pitch_domain: str = "waveform"
) -> dict[str, torch.Tensor]:
    """The probes that act on waveforms, as waveforms ``[N, S]`` (``pitch_shift`` only in the waveform domain).

    Keys follow ``CLAR_NAMES`` order; ``time_stretch`` (and a spectrogram-domain pitch shift) has no waveform.
    """
    _check_wave(wave)
    config = config if config is not None else ProbeConfig()
    ops = probe_ops(config, pitch_domain)
    params = config.params(wave.shape[0], wave.shape[1], wave.device)
    return {
        name: ops[name].to(wave.device).apply_transform(wave, params[name])
        for name in WAVEFORM_OPS
        if not (name == "pitch_shift" and pitch_domain != "waveform")
    }


@torch.no_grad()
def clean_inputs(wave: torch.Tensor, frontend: LogMel, batch_size: int | None = None) -> torch.Tensor:
    """Normalised log-mels ``[N, 1, M, T]`` of the clean clips (``frontend(wave)``, optionally in batches)."""
    _check_wave(wave)
    return torch.cat([frontend(wave[start:stop]) for start, stop in _batches(wave.shape[0], batch_size)])


@torch.no_grad()
def probe_views(
    wave: torch.Tensor,
    frontend: LogMel,
    config: ProbeConfig | None = None,
    pitch_domain: str = "waveform",
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs of the seven probes: name -> normalised log-mel ``[N, 1, M, T]``, in ``CLAR_NAMES`` order.

    Args:
        wave: float waveforms ``[N, S]`` at the frontend's sample rate, on the frontend's device.
        frontend: the log-mel encoder (with the model's normalisation statistics).
        config: probe strengths; ``ProbeConfig()`` when omitted.
        pitch_domain: ``"waveform"`` (phase-vocoder warp of the waveform) or ``"spectrogram"`` (warp of the power
            spectrogram before the mel projection), as the model was trained.
        batch_size: clips per pass (None: all at once); the views do not depend on it.

    The same ``wave`` and ``config`` always give the same views. Time stretch acts on the mel power spectrogram,
    between ``frontend.mel_power`` and ``frontend.log``, as in :class:`~aiaudio.audio.augment.ClarAugment`.
    """
    _check_wave(wave)
    config = config if config is not None else ProbeConfig()
    ops = {name: op.to(wave.device) for name, op in probe_ops(config, pitch_domain).items()}
    params = config.params(wave.shape[0], wave.shape[1], wave.device)

    def to_input(mel_power: torch.Tensor) -> torch.Tensor:
        return frontend.normalize(frontend.log(mel_power)).unsqueeze(1)

    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in CLAR_NAMES}
    for start, stop in _batches(wave.shape[0], batch_size):
        clip = wave[start:stop]
        for name in WAVEFORM_OPS:
            if name == "pitch_shift" and pitch_domain != "waveform":
                continue
            augmented = ops[name].apply_transform(clip, _slice(params[name], start, stop))
            chunks[name].append(to_input(frontend.mel_power(augmented)))
        if pitch_domain != "waveform":
            power = ops["pitch_shift"].apply_transform(
                frontend.power_spectrogram(clip), _slice(params["pitch_shift"], start, stop)
            )
            chunks["pitch_shift"].append(to_input(frontend.mel_from_power(power)))
        stretched = ops["time_stretch"].apply_transform(
            frontend.mel_power(clip), _slice(params["time_stretch"], start, stop)
        )
        chunks["time_stretch"].append(to_input(stretched))
    return {name: torch.cat(parts) for name, parts in chunks.items()}
