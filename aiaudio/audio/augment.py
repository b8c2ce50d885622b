"""The seven CLAR augmentations, batched on the device with per-example random parameters.

Every op is an ``nn.Module`` that draws the parameters of a whole batch in one pass
(``randomize_parameters(batch_size, num_samples, generator)``), applies them with tensor code and no Python loop
over examples (``apply_transform(x, params)``), and passes examples that were not selected (probability ``1 - p``)
through unchanged. All randomness comes from the ``torch.Generator`` given to ``forward``, so a view is a pure
function of the generator's seed.

:class:`ClarAugment` chains the ops for one invariance descriptor: pitch shift, fade in, fade out, noise, time mask
and time shift act on the waveform; then the frontend's mel power spectrogram; then time stretch; then log and
normalisation. An op whose descriptor bit is off is not run at all.

Two ops are reformulated so that they batch well; both keep the meaning of the CLAR operation:

* **Pitch shift as a phase-vocoder frequency warp.** Resampling-based pitch shift (time stretch by ``r`` then
  resample by ``1/r``) changes the intermediate length per example, which does not batch. Warping the STFT along
  frequency does the same job at a fixed length: output bin ``k`` reads the magnitude and the instantaneous
  frequency of source position ``k / r`` (linear interpolation), the frequency is multiplied by ``r``, and the
  output phase is the running sum of those frequencies over frames, as in a phase vocoder. A partial at ``f`` moves
  to ``r * f`` with its envelope in time unchanged; everything is a gather with a per-example index. With
  ``augment.pitch_shift.domain: spectrogram`` the same warp of magnitudes acts on the power spectrogram instead
  (:class:`SpectralPitchShift`), between the STFT and the mel projection (in the chain, folded into the projection
  as one per-example matrix): several times cheaper, but after the other waveform ops rather than before them
  (added noise is then warped too; white, pink and brown noise keep their colour under a frequency warp, only their
  level per bin changes).
* **Time stretch on the mel power spectrogram.** A phase-vocoder stretch keeps each frame's magnitude spectrum and
  resamples the frame sequence in time; the mel projection is linear and acts on each frame separately, so resampling
  frames of the mel power spectrogram is the same operation after the projection, at 1/4 of the size and without
  phase reconstruction. Output frame ``j`` reads source position ``j * rate``; positions past the last frame are
  silence, which crops or pads back to the input's number of frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from aiaudio.audio.frontend import LogMel
from aiaudio.audio.clar import clar_space
from aiaudio.invariance import InvarianceSpace

FADE_SHAPES: tuple[str, ...] = ("linear", "logarithmic", "exponential", "quarter_sine", "half_sine")
#: Noise colours and the exponent alpha of their power spectral density, proportional to 1 / f**alpha.
NOISE_EXPONENTS: dict[str, float] = {"white": 0.0, "pink": 1.0, "brown": 2.0}

Params = dict[str, torch.Tensor]
PITCH_DOMAINS: tuple[str, ...] = ("waveform", "spectrogram")


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


def _check_probability(owner: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}.p must be in [0, 1], got {p}")


def _check_range(owner: str, low_name: str, low: float, high_name: str, high: float) -> None:
    if low > high:
        raise ValueError(f"{owner}: {low_name}={low} must not exceed {high_name}={high}")


def _check_fraction(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1], got {value}")


@dataclass
class PitchShiftConfig:
    """Pitch shift by a uniform number of semitones.

    ``domain``: "waveform" (CLAR's order: first, on the waveform, by a phase-vocoder warp with STFT size ``n_fft``
    and hop ``hop_length``) or "spectrogram" (a warp of the power spectrogram before the mel projection, after the
    waveform ops; several times cheaper).
    """

    p: float = 1.0
    min_semitones: float = -15.0
    max_semitones: float = 15.0
    n_fft: int = 1024
    hop_length: int = 256
    domain: str = "waveform"

    def __post_init__(self) -> None:
        _check_probability("PitchShiftConfig", self.p)
        if self.domain not in PITCH_DOMAINS:
            raise ValueError(f"PitchShiftConfig.domain must be one of {PITCH_DOMAINS}, got {self.domain!r}")
        _check_range("PitchShiftConfig", "min_semitones", self.min_semitones, "max_semitones", self.max_semitones)
        if self.hop_length < 1 or self.n_fft % self.hop_length != 0 or self.n_fft // self.hop_length < 2:
            raise ValueError(
                "PitchShiftConfig: n_fft must be a multiple (>= 2) of hop_length, "
                f"got n_fft={self.n_fft}, hop_length={self.hop_length}"
            )


@dataclass
class FadeConfig:
    """Fade of a shape drawn uniformly from ``shapes`` over a length uniform in [0, max_fraction * N] samples."""

    p: float = 1.0
    shapes: tuple[str, ...] = ("linear", "logarithmic", "exponential")
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        self.shapes = tuple(self.shapes)
        _check_probability("FadeConfig", self.p)
        _check_fraction("FadeConfig", "max_fraction", self.max_fraction)
        unknown = [s for s in self.shapes if s not in FADE_SHAPES]
        if not self.shapes or unknown:
            raise ValueError(f"FadeConfig.shapes must be a non-empty subset of {FADE_SHAPES}, got {list(self.shapes)}")


@dataclass
class NoiseConfig:
    """Additive noise of a colour drawn uniformly from ``colours`` at an SNR uniform in [min_snr_db, max_snr_db]."""

    p: float = 1.0
    colours: tuple[str, ...] = ("white", "pink", "brown")
    min_snr_db: float = 3.0
    max_snr_db: float = 30.0

    def __post_init__(self) -> None:
        self.colours = tuple(self.colours)
        _check_probability("NoiseConfig", self.p)
        _check_range("NoiseConfig", "min_snr_db", self.min_snr_db, "max_snr_db", self.max_snr_db)
        unknown = [c for c in self.colours if c not in NOISE_EXPONENTS]
        if not self.colours or unknown:
            raise ValueError(
                f"NoiseConfig.colours must be a non-empty subset of {tuple(NOISE_EXPONENTS)}, got {list(self.colours)}"
            )


@dataclass
class TimeMaskConfig:
    """A segment of up to ``max_fraction * N`` samples replaced by noise (probability ``noise_probability``) or 0."""

    p: float = 1.0
    max_fraction: float = 0.125
    noise_probability: float = 0.5

    def __post_init__(self) -> None:
        _check_probability("TimeMaskConfig", self.p)
        _check_fraction("TimeMaskConfig", "max_fraction", self.max_fraction)
        _check_fraction("TimeMaskConfig", "noise_probability", self.noise_probability)


@dataclass
class TimeShiftConfig:
    """Circular roll by a uniform integer in [-max_fraction * N, max_fraction * N]."""

    p: float = 1.0
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        _check_probability("TimeShiftConfig", self.p)
        _check_fraction("TimeShiftConfig", "max_fraction", self.max_fraction)


@dataclass
class TimeStretchConfig:
    """Time stretch by a rate uniform in [min_rate, max_rate] (rate > 1 speeds up)."""

    p: float = 1.0
    min_rate: float = 0.5
    max_rate: float = 1.5

    def __post_init__(self) -> None:
        _check_probability("TimeStretchConfig", self.p)
        if self.min_rate <= 0:
            raise ValueError(f"TimeStretchConfig.min_rate must be positive, got {self.min_rate}")
        _check_range("TimeStretchConfig", "min_rate", self.min_rate, "max_rate", self.max_rate)


#: The config of any one op.
OpConfig = PitchShiftConfig | FadeConfig | NoiseConfig | TimeMaskConfig | TimeShiftConfig | TimeStretchConfig


@dataclass
class ClarConfig:
    """Parameters of the seven CLAR augmentations (defaults: CLAR's ranges, every op applied with p = 1)."""

    pitch_shift: PitchShiftConfig = field(default_factory=PitchShiftConfig)
    fade_in: FadeConfig = field(default_factory=FadeConfig)
    fade_out: FadeConfig = field(default_factory=FadeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    time_mask: TimeMaskConfig = field(default_factory=TimeMaskConfig)
    time_shift: TimeShiftConfig = field(default_factory=TimeShiftConfig)
    time_stretch: TimeStretchConfig = field(default_factory=TimeStretchConfig)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example floats uniform in [low, high) on the generator's device."""
    u = torch.rand(batch_size, generator=generator, device=generator.device)
    return low + (high - low) * u


def _uniform_int(
    low: int | torch.Tensor, high: int | torch.Tensor, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Per-example integers uniform in [low, high] (inclusive; bounds may be per-example tensors), int64."""
    u = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float64)
    low_t = torch.as_tensor(low, device=generator.device, dtype=torch.float64)
    high_t = torch.as_tensor(high, device=generator.device, dtype=torch.float64)
    value = torch.floor(low_t + u * (high_t - low_t + 1.0))
    return torch.minimum(value, high_t).to(torch.int64)


def _choice(count: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example indices uniform in {0, ..., count - 1}, int64."""
    return torch.randint(count, (batch_size,), generator=generator, device=generator.device)


#: Levels of the radius and of the angle in :func:`quantised_normal`'s polar table (16 random bits per pair of draws).
_POLAR_LEVELS = 256


@functools.lru_cache(maxsize=8)
def _normal_pair_table(device: torch.device, std: float) -> torch.Tensor:
    """``[65536, 2]``: a bivariate normal (independent coordinates, deviation ``std``) quantised in polar coordinates.

    Entry ``256 r + a`` is ``radius_r * (cos angle_a, sin angle_a)`` at the midpoint quantiles: ``radius_r``
    proportional to ``sqrt(-2 ln(1 - (r + 0.5) / 256))`` (the Rayleigh inverse CDF), rescaled
    so that each coordinate's variance is exactly ``std**2``, and ``angle_a = 2 pi (a + 0.5) / 256``.
    """
    levels = (torch.arange(_POLAR_LEVELS, dtype=torch.float64) + 0.5) / _POLAR_LEVELS
    radius = torch.sqrt(-2.0 * torch.log1p(-levels))
    radius = radius * (std * math.sqrt(2.0) / radius.square().mean().sqrt())  # E[r^2] = 2 std^2: variance exactly std^2
    angle = 2.0 * math.pi * levels
    pairs = torch.stack([radius[:, None] * torch.cos(angle)[None, :], radius[:, None] * torch.sin(angle)[None, :]], -1)
    return pairs.reshape(-1, 2).to(device=device, dtype=torch.float32)


def quantised_normal(size: tuple[int, ...], generator: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """Float32 draws from N(0, std**2), shape ``size``, on the generator's device: a fast stand-in for ``torch.randn``.

    Why: torch's CPU generator (a Mersenne twister, one thread whatever the thread count) spends about as long per
    32-bit word as ``randn`` spends per value, and the noise op needs millions of values per batch: as ``randn`` it
    was a fifth of the CPU time of the whole batched chain. Here each pair of values costs 16 random bits: an index
    into a 65,536-entry table of the bivariate normal quantised in polar coordinates (256 Rayleigh radii at their
    midpoint quantiles x 256 angles), so the two values of a pair are uncorrelated and each is normal up to the
    quantisation (the largest gap between its CDF and the normal CDF is below 0.0015; values stop at 3.53 std,
    where the normal has 0.04 % of its mass beyond). It draws a quarter as many 64-bit words as values are asked
    for, and about halves the time of ``randn`` on the CPU.
    """
    count = math.prod(size)
    num_pairs = (count + 1) // 2
    words = torch.empty((num_pairs + 3) // 4, dtype=torch.int64, device=generator.device)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits random: four 16-bit indices per word
    index = words.view(torch.int16).to(torch.int32).add_(32768)[:num_pairs]
    # The table's pairs of float32 read as one int64 each: a gather of 8-byte rows, several times faster than of
    # two-float rows.
    table = _normal_pair_table(generator.device, float(std)).view(torch.int64).view(-1)
    values = table.index_select(0, index).view(torch.float32)
    return values.view(-1)[:count].view(size)


def _keep_unselected(apply: torch.Tensor, augmented: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``augmented`` where ``apply`` (per example) is true, else ``original`` bit for bit."""
    if apply.device.type == "cpu" and bool(apply.all()):
        return augmented  # nothing to keep (checked only on the CPU, where it costs no device sync)
    mask = apply.to(original.device).view(-1, *([1] * (original.dim() - 1)))
    return torch.where(mask, augmented, original)


def _params_to(params: Params, device: torch.device) -> Params:
    return {name: value.to(device) for name, value in params.items()}


def _mean_square(x: torch.Tensor) -> torch.Tensor:
    """``x.pow(2).mean(-1)`` in one pass and without a temporary the size of ``x``."""
    return torch.linalg.vector_norm(x, dim=-1).square_() / x.shape[-1]


def _check_waveforms(x: torch.Tensor, owner: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{owner} expects waveforms of shape [batch, samples], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{owner} expects floating-point waveforms, got {x.dtype}")


class BatchedAugmentation(nn.Module):
    """Base of the batched ops: per-example application with probability ``config.p``.

    Each op is built from its config dataclass (validated there, and the one place of its defaults), kept as
    ``self.config``; without one, the defaults of the subclass's ``config_class``. Subclasses implement
    ``randomize_parameters`` (which must include the boolean ``"apply"`` of shape ``[B]``) and ``apply_transform``.
    """

    config_class: type[OpConfig]

    def __init__(self, config: OpConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.config_class()
        self.p = float(self.config.p)

    def _draw_apply(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch_size, generator=generator, device=generator.device) < self.p

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        raise NotImplementedError

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw parameters for the batch from ``generator`` and apply them."""
        params = self.randomize_parameters(x.shape[0], x.shape[-1], generator)
        return self.apply_transform(x, params)


# --------------------------------------------------------------------------------------------------------------
# Waveform ops
# --------------------------------------------------------------------------------------------------------------


class _SemitoneShift(BatchedAugmentation):
    """Shared by the two pitch shifts: per-example semitones uniform in [min_semitones, max_semitones]."""

    config_class = PitchShiftConfig

    def __init__(self, config: PitchShiftConfig | None = None) -> None:
        super().__init__(config)
        self.min_semitones = float(self.config.min_semitones)
        self.max_semitones = float(self.config.max_semitones)

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        return {
            "apply": self._draw_apply(batch_size, generator),
            "semitones": _uniform(self.min_semitones, self.max_semitones, batch_size, generator),
        }


class PitchShift(_SemitoneShift):
    """Pitch shift by a per-example number of semitones: a phase-vocoder warp of the STFT along frequency.

    Uses ``config``'s probability ``p``, semitone range, and STFT size ``n_fft`` (periodic Hann window) and hop
    ``hop_length`` (its ``domain`` is the caller's choice of this class or :class:`SpectralPitchShift`).
    """

    def __init__(self, config: PitchShiftConfig | None = None) -> None:
        super().__init__(config)
        self.n_fft = int(self.config.n_fft)
        self.hop_length = int(self.config.hop_length)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_waveforms(x, "PitchShift")
        params = _params_to(params, x.device)
        batch_size, num_samples = x.shape
        if num_samples <= self.n_fft // 2:
            raise ValueError(
                f"PitchShift needs clips longer than n_fft // 2 = {self.n_fft // 2} samples, got {num_samples}"
            )
        window = self.window.to(device=x.device, dtype=x.dtype)
        # Frames along dim 1, bins along dim 2 ([B, T, F], torch.stft's memory layout), real and imaginary parts as
        # separate contiguous planes: elementwise work on them is several times faster than on complex tensors.
        spec = torch.stft(
            x, self.n_fft, self.hop_length, window=window, center=True, pad_mode="reflect", return_complex=True
        ).transpose(1, 2)
        real, imag = torch.view_as_real(spec).permute(3, 0, 1, 2).contiguous()
        del spec
        num_frames, num_bins = real.shape[1], real.shape[2]
        bins = torch.arange(num_bins, device=x.device, dtype=x.dtype)
        # Phase advance of bin k's centre frequency over one hop, and the zero-phase factor (-1)^k of a frame whose
        # window is centred at n_fft / 2: with it, all bins of one partial share a phase, so the warp keeps them
        # coherent.
        bin_advance = 2.0 * math.pi * self.hop_length / self.n_fft * bins
        centre_shift = math.pi * bins

        magnitude = torch.hypot(real, imag)
        phase_in = imag.atan2_(real)
        # Deviation of each frame's phase advance from the bin's centre frequency, wrapped to [-pi, pi); frame 0 has
        # no predecessor and gets 0 (its output phase is set below).
        deviation = real
        deviation[:, 0] = 0.0
        torch.sub(phase_in[:, 1:], phase_in[:, :-1], out=deviation[:, 1:])
        _wrap_phase_(deviation.sub_(bin_advance))
        first_phase = phase_in[:, 0] + centre_shift  # [B, F]
        del phase_in, imag

        # Output bin k reads source position k / ratio (per example), linearly interpolated along the bins; bins
        # whose source lies above Nyquist are zero.
        ratio = torch.pow(2.0, params["semitones"].to(x.dtype) / 12.0)  # [B]
        source, lower, upper, weight, inside = _bin_warp(ratio, num_bins)
        weight, inside = weight[:, None, :], inside[:, None, :]
        index_shape = (batch_size, num_frames, num_bins)
        lower_index = lower[:, None, :].expand(index_shape)
        upper_index = upper[:, None, :].expand(index_shape)
        out_magnitude = magnitude.gather(2, lower_index)
        out_magnitude.lerp_(magnitude.gather(2, upper_index), weight).mul_(inside)
        del magnitude
        # Phase advance at the source times the ratio: ratio * (source centre + deviation) = this bin's centre
        # + ratio * deviation. The output phase is its running sum over frames, from the nearest source bin's phase.
        phase = deviation.gather(2, lower_index)
        phase.lerp_(deviation.gather(2, upper_index), weight)
        del deviation
        phase.mul_(ratio[:, None, None]).add_(torch.remainder(bin_advance, 2.0 * math.pi))
        nearest = torch.round(source).clamp(max=num_bins - 1).long()
        phase[:, 0] = first_phase.gather(1, nearest) - centre_shift
        _accumulate_phase_(phase)

        out_real = torch.cos(phase).mul_(out_magnitude)
        out_imag = phase.sin_().mul_(out_magnitude)
        shifted = _inverse_stft(torch.complex(out_real, out_imag), window, self.hop_length, num_samples)
        # The warp changes the level by a few dB (peaks get wider or narrower than the window's main lobe and their
        # bins lose phase coherence); restore the clip's RMS.
        output_power = _mean_square(shifted).clamp_min(torch.finfo(x.dtype).tiny)
        shifted.mul_(torch.sqrt(_mean_square(x) / output_power)[:, None])
        return _keep_unselected(params["apply"], shifted, x)


def _bin_warp(ratio: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, ...]:
    """Where output bin ``k`` reads from when frequencies are scaled by ``ratio`` (per example): position ``k / ratio``.

    Returns ``(source, lower, upper, weight, inside)``, each ``[B, F]``: the fractional source position, its two
    neighbouring bins, the linear-interpolation weight of ``upper``, and 1 where the source lies below Nyquist (0
    above, where the output is silent).
    """
    bins = torch.arange(num_bins, device=ratio.device, dtype=ratio.dtype)
    source = bins[None, :] / ratio[:, None]
    inside = (source <= num_bins - 1).to(ratio.dtype)
    lower = torch.floor(source).clamp(max=num_bins - 1)
    weight = source - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=num_bins - 1)
    return source, lower, upper, weight, inside


class SpectralPitchShift(_SemitoneShift):
    """Pitch shift on a power spectrogram ``[B, F, T]``: output bin ``k`` reads source position ``k / r``.

    The fast alternative to :class:`PitchShift` (``augment.pitch_shift.domain: spectrogram``): a gather along
    frequency, applied between the STFT and the mel projection, so it follows the waveform ops instead of preceding
    them. Partials move to ``r * f`` with their level kept; bins whose source lies above Nyquist are silent. Uses
    ``config``'s probability ``p`` and semitone range.
    """

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"SpectralPitchShift expects a power spectrogram [batch, bins, frames], got {tuple(x.shape)}")
        params = _params_to(params, x.device)
        ratio = torch.pow(2.0, params["semitones"].to(x.dtype) / 12.0)
        _, lower, upper, weight, inside = _bin_warp(ratio, x.shape[1])
        index_shape = x.shape
        shifted = x.gather(1, lower[:, :, None].expand(index_shape))
        shifted = shifted.lerp_(x.gather(1, upper[:, :, None].expand(index_shape)), weight[:, :, None])
        shifted = shifted.mul_(inside[:, :, None])
        return _keep_unselected(params["apply"], shifted, x)

    def shift_and_project(self, power: torch.Tensor, params: Params, projection: torch.Tensor) -> torch.Tensor:
        """``apply_transform(power, params)`` followed by a linear map of each frame (e.g. a mel filterbank).

        The shift is linear in the power spectrum, so on the CPU both are one per-example matrix ``[F, C]``: the
        projection with its rows moved to the source bins they read from (a scatter-add), and one batched matrix
        product replaces the two gathers over the whole spectrogram. On other devices, where a scatter-add is not
        bit-for-bit reproducible, it is the shift and then the projection.

        Args:
            power: power spectrogram ``[B, F, T]``.
            params: from ``randomize_parameters``.
            projection: ``[F, C]``, applied as ``power[b, :, t] @ projection``.

        Returns:
            ``[B, C, T]``.
        """
        if power.dim() != 3 or projection.dim() != 2 or projection.shape[0] != power.shape[1]:
            raise ValueError(
                "SpectralPitchShift.shift_and_project expects power [batch, bins, frames] and projection "
                f"[bins, outputs], got {tuple(power.shape)} and {tuple(projection.shape)}"
            )
        projection = projection.to(device=power.device, dtype=power.dtype)
        if power.device.type != "cpu":
            return torch.matmul(self.apply_transform(power, params).transpose(1, 2), projection).transpose(1, 2)
        params = _params_to(params, power.device)
        batch_size, num_bins, _ = power.shape
        apply = params["apply"]
        ratio = torch.where(apply, torch.pow(2.0, params["semitones"].to(power.dtype) / 12.0), 1.0)
        _, lower, upper, weight, inside = _bin_warp(ratio, num_bins)
        # Output bin k adds projection[k] * (1 - weight[k]) to source row lower[k] and * weight[k] to upper[k].
        row_offset = (torch.arange(batch_size, device=power.device) * num_bins)[:, None]
        warped = projection.new_zeros(batch_size * num_bins, projection.shape[1])
        for source, share in ((lower, (1.0 - weight) * inside), (upper, weight * inside)):
            rows = (projection[None] * share[:, :, None]).flatten(0, 1)
            warped.index_add_(0, (source + row_offset).flatten(), rows)
        warped = warped.view(batch_size, num_bins, -1)
        projected = torch.bmm(power.transpose(1, 2), warped).transpose(1, 2)
        if bool(apply.all()):
            return projected
        plain = torch.matmul(power.transpose(1, 2), projection).transpose(1, 2)
        return _keep_unselected(apply, projected, plain)


def _accumulate_phase_(phase: torch.Tensor, wrap_every: int = 16, use_cumsum: bool | None = None) -> None:
    """In-place running sum of phase increments along dim 1 of ``[B, T, F]``, wrapped to [0, 2*pi) regularly.

    Wrapping every few frames keeps float32 phases accurate over hundreds of frames. On the CPU a loop over frames
    (each step batched over [B, F]) is several times faster than ``torch.cumsum`` along a non-innermost dim; on an
    accelerator ``torch.cumsum`` is one kernel instead of hundreds.
    """
    if use_cumsum is None:
        use_cumsum = phase.device.type != "cpu"
    if use_cumsum:  # one kernel; the increments are bounded (< 4 pi), so float32 sums stay accurate
        phase.cumsum_(dim=1).remainder_(2.0 * math.pi)
        return
    two_pi = 2.0 * math.pi
    for frame in range(1, phase.shape[1]):
        phase[:, frame].add_(phase[:, frame - 1])
        if frame % wrap_every == 0:
            phase[:, frame].remainder_(two_pi)


def _wrap_phase_(phase: torch.Tensor) -> torch.Tensor:
    """Wrap angles to [-pi, pi] in place (``phase - 2 pi round(phase / 2 pi)``: cheaper than ``remainder``)."""
    turns = torch.mul(phase, 1.0 / (2.0 * math.pi)).round_()
    return phase.sub_(turns, alpha=2.0 * math.pi)


def _inverse_stft(spec: torch.Tensor, window: torch.Tensor, hop_length: int, length: int) -> torch.Tensor:
    """Weighted overlap-add inverse of a centred STFT given as ``[B, T, F]`` (``n_fft`` a multiple of the hop).

    Same result as ``torch.istft(spec.transpose(1, 2), ..., center=True, length=length)``, written as
    ``n_fft / hop`` shifted block sums, which is several times faster on the CPU than ``torch.istft``'s fold.
    """
    batch_size, num_frames, _ = spec.shape
    n_fft = window.shape[0]
    overlap = n_fft // hop_length
    frames = torch.fft.irfft(spec, n=n_fft, dim=-1)  # [B, T, n_fft]
    blocks = frames.view(batch_size, num_frames, overlap, hop_length)
    window_blocks = window.view(overlap, hop_length)
    # Block ``part`` of frame t, windowed, lands in output block t + part.
    summed = frames.new_empty(batch_size, num_frames + overlap - 1, hop_length)
    torch.mul(blocks[:, :, 0], window_blocks[0], out=summed[:, :num_frames])
    summed[:, num_frames:] = 0.0
    envelope = window.new_zeros(num_frames + overlap - 1, hop_length)
    envelope[:num_frames] = window_blocks[0].square()
    for part in range(1, overlap):
        summed[:, part : part + num_frames].addcmul_(blocks[:, :, part], window_blocks[part])
        envelope[part : part + num_frames] += window_blocks[part].square()
    start = n_fft // 2
    summed = summed.view(batch_size, -1)[:, start : start + length]
    return summed / envelope.view(-1)[start : start + length]


def fade_curve(ramp: torch.Tensor, shape: str, fade_in: bool) -> torch.Tensor:
    """Gain of ``torchaudio.transforms.Fade`` of ``shape`` at ramp values in [0, 1], clamped to [0, 1] as there."""
    if fade_in:
        curves = {
            "linear": lambda t: t,
            "exponential": lambda t: torch.exp2(t - 1.0) * t,  # exp2: a vector kernel, unlike pow with a scalar base
            "logarithmic": lambda t: torch.log10(0.1 + t) + 1.0,
            "quarter_sine": lambda t: torch.sin(t * math.pi / 2.0),
            "half_sine": lambda t: torch.sin(t * math.pi - math.pi / 2.0) / 2.0 + 0.5,
        }
    else:
        curves = {
            "linear": lambda t: -t + 1.0,
            "exponential": lambda t: torch.exp2(-t) * (1.0 - t),
            "logarithmic": lambda t: torch.log10(1.1 - t) + 1.0,
            "quarter_sine": lambda t: torch.sin(t * math.pi / 2.0 + math.pi / 2.0),
            "half_sine": lambda t: torch.sin(t * math.pi + math.pi / 2.0) / 2.0 + 0.5,
        }
    if shape not in curves:
        raise ValueError(f"unknown fade shape {shape!r}; known: {FADE_SHAPES}")
    return curves[shape](ramp).clamp(0.0, 1.0)


class _Fade(BatchedAugmentation):
    fade_in: bool = True

    config_class = FadeConfig

    def __init__(self, config: FadeConfig | None = None) -> None:
        super().__init__(config)
        self.shapes = tuple(self.config.shapes)
        self.max_fraction = float(self.config.max_fraction)

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        return {
            "apply": self._draw_apply(batch_size, generator),
            "shape": _choice(len(self.shapes), batch_size, generator),
            "length": _uniform_int(0, int(self.max_fraction * num_samples), batch_size, generator),
        }

    def ramp_span(self, num_samples: int) -> int:
        """Number of samples at the start (fade in) or end (fade out) that a ramp can cover."""
        return min(int(self.max_fraction * num_samples), num_samples)

    def gain(self, params: Params, num_samples: int, device: torch.device) -> torch.Tensor:
        """Per-example gains ``[B, S]`` over the first (fade in) or last (fade out) ``S = ramp_span(N)`` samples.

        Gains are 1 outside each example's ramp and for examples not selected; ramp lengths above ``S`` are clamped
        to ``S``.
        """
        params = _params_to(params, device)
        span = self.ramp_span(num_samples)
        # Lengths and positions as float32 (exact below 2**24 samples); length 0 for examples not selected.
        length = torch.where(params["apply"], params["length"].clamp(0, span), 0).to(torch.float32)
        # A fade out of ramp value t is the fade in of 1 - t for every shape, so both are the fade-in curve of
        # v = position * step (+ 1 where there is no ramp), clamped to 1: position counts from the first sample
        # (fade in) or back from the last (fade out), and v is torch.linspace(0, 1, L)'s value over the ramp (fade
        # in) or 1 minus it (fade out), and 1 after the ramp, where every curve is 1. A one-sample ramp is 0 (fade
        # in) or 1 (fade out).
        step = 1.0 / (length - 1.0).clamp(min=1.0)
        no_ramp = length == 0 if self.fade_in else length <= 1
        index = torch.arange(span, device=device, dtype=torch.float32)
        position = index if self.fade_in else index.flip(0)
        value = torch.addcmul(no_ramp.to(torch.float32)[:, None], position[None, :], step[:, None]).clamp_(max=1.0)
        gain = value  # the linear curve; each shape below reads and overwrites only its own rows
        # Other shapes: on the CPU, their curve on their own examples only (transcendental functions on as few rows
        # as possible); elsewhere on every example, selected by a mask (no device sync).
        shape = params["shape"]
        for shape_index, shape_name in enumerate(self.shapes):
            if shape_name == "linear":
                continue
            selected = (shape == shape_index) & ~no_ramp
            if device.type != "cpu":
                gain = torch.where(selected[:, None], fade_curve(value, shape_name, fade_in=True), gain)
                continue
            rows = torch.nonzero(selected).flatten()
            if rows.numel():
                gain.index_copy_(0, rows, fade_curve(value.index_select(0, rows), shape_name, fade_in=True))
        return gain

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_waveforms(x, type(self).__name__)
        num_samples = x.shape[-1]
        span = self.ramp_span(num_samples)
        gain = self.gain(params, num_samples, x.device).to(x.dtype)
        ramp_part = slice(0, span) if self.fade_in else slice(num_samples - span, num_samples)
        rest = slice(span, num_samples) if self.fade_in else slice(0, num_samples - span)
        faded = torch.empty_like(x)
        faded[:, rest] = x[:, rest]
        torch.mul(x[:, ramp_part], gain, out=faded[:, ramp_part])
        return faded


class FadeIn(_Fade):
    """Fade in: shape uniform among ``shapes``, ramp length uniform in [0, max_fraction * N]; torchaudio's curves."""

    fade_in = True


class FadeOut(_Fade):
    """Fade out: shape uniform among ``shapes``, ramp length uniform in [0, max_fraction * N]; torchaudio's curves."""

    fade_in = False


class AddNoise(BatchedAugmentation):
    """Add white, pink or brown noise at an exact per-example SNR.

    The noise is drawn in the frequency domain: a complex Gaussian spectrum (from :func:`quantised_normal`) shaped by
    ``f**(-alpha/2)`` (power ``1/f**alpha``, alpha 0, 1, 2), no DC, then an inverse real FFT. It is scaled so that
    ``10 log10(mean(x**2) / mean(noise**2))`` equals the drawn SNR; a silent clip gets no noise.
    """

    config_class = NoiseConfig

    def __init__(self, config: NoiseConfig | None = None) -> None:
        super().__init__(config)
        self.colours = tuple(self.config.colours)
        self.min_snr_db = float(self.config.min_snr_db)
        self.max_snr_db = float(self.config.max_snr_db)
        self.register_buffer(
            "exponents", torch.tensor([NOISE_EXPONENTS[c] for c in self.colours], dtype=torch.float32), persistent=False
        )

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        num_bins = num_samples // 2 + 1
        return {
            "apply": self._draw_apply(batch_size, generator),
            "colour": _choice(len(self.colours), batch_size, generator),
            "snr_db": _uniform(self.min_snr_db, self.max_snr_db, batch_size, generator),
            # Complex normal with E|z|^2 = 1, as torch.randn(..., dtype=torch.complex64) draws it.
            "spectrum": torch.view_as_complex(
                quantised_normal((batch_size, num_bins, 2), generator, std=math.sqrt(0.5))
            ),
        }

    def noise(self, params: Params, num_samples: int, device: torch.device) -> torch.Tensor:
        """The coloured noise ``[B, N]`` before scaling (arbitrary level)."""
        params = _params_to(params, device)
        num_bins = num_samples // 2 + 1
        # Amplitude f**(-alpha/2) of each colour ([C, F], no DC), repeated for the real and imaginary parts of each
        # bin, then each example's row: one contiguous real product shapes the whole batch (several times faster
        # than broadcasting a [B, F, 1] amplitude over the real/imaginary pairs).
        log_bin = torch.log(torch.arange(1, num_bins, device=device, dtype=torch.float32))
        table = torch.exp(-0.5 * self.exponents.to(device)[:, None] * log_bin[None, :])
        table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1).repeat_interleave(2, dim=1)
        spectrum = torch.view_as_real(params["spectrum"].to(torch.complex64)).reshape(-1, 2 * num_bins)
        shaped = spectrum * table.index_select(0, params["colour"])
        return torch.fft.irfft(torch.view_as_complex(shaped.view(-1, num_bins, 2)), n=num_samples, dim=-1)

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_waveforms(x, "AddNoise")
        noise = self.noise(params, x.shape[-1], x.device).to(x.dtype)
        params = _params_to(params, x.device)
        signal_power = _mean_square(x)
        noise_power = _mean_square(noise).clamp_min(torch.finfo(x.dtype).tiny)
        target_power = signal_power / torch.pow(10.0, params["snr_db"].to(x.dtype) / 10.0)
        scale = torch.sqrt(target_power / noise_power)
        noisy = torch.addcmul(x, noise, scale[:, None])
        return _keep_unselected(params["apply"], noisy, x)


class TimeMask(BatchedAugmentation):
    """Replace a segment (length uniform in [0, max_fraction * N], uniform position) by noise or zeros.

    The noise is white Gaussian (from :func:`quantised_normal`) at the clip's RMS; it is chosen with probability
    ``noise_probability``.
    """

    config_class = TimeMaskConfig

    def __init__(self, config: TimeMaskConfig | None = None) -> None:
        super().__init__(config)
        self.max_fraction = float(self.config.max_fraction)
        self.noise_probability = float(self.config.noise_probability)

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        max_length = int(self.max_fraction * num_samples)
        length = _uniform_int(0, max_length, batch_size, generator)
        return {
            "apply": self._draw_apply(batch_size, generator),
            "length": length,
            "start": _uniform_int(0, num_samples - length, batch_size, generator),
            "use_noise": torch.rand(batch_size, generator=generator, device=generator.device) < self.noise_probability,
            "noise": quantised_normal((batch_size, max(max_length, 1)), generator),
        }

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_waveforms(x, "TimeMask")
        params = _params_to(params, x.device)
        num_samples = x.shape[-1]
        noise = params["noise"].to(x.dtype)
        window_length = min(noise.shape[1], num_samples)
        start = params["start"].clamp(0, num_samples)[:, None]
        length = torch.minimum(params["length"].clamp(0, window_length)[:, None], num_samples - start)
        length = length * params["apply"][:, None]  # examples not selected: nothing masked
        # Row b's segment is samples start + j for j < length[b]; they take noise[b, j] (scaled to the clip's RMS) or
        # zeros. Only a window of samples start + j (j < window_length, wrapping past the end, where j >= length) is
        # read and written back: the positions are distinct, and unchanged outside the segment.
        offset = torch.arange(window_length, device=x.device)
        positions = start + offset
        positions = torch.where(positions < num_samples, positions, positions - num_samples)
        rms = _mean_square(x).sqrt_()[:, None]
        fill = noise[:, :window_length] * (rms * params["use_noise"][:, None].to(x.dtype))
        window = torch.where(offset < length, fill, x.gather(1, positions))
        return x.clone().scatter_(1, positions, window)


class TimeShift(BatchedAugmentation):
    """Circular roll by a per-example integer uniform in [-max_fraction * N, max_fraction * N] (numpy.roll sign)."""

    config_class = TimeShiftConfig

    def __init__(self, config: TimeShiftConfig | None = None) -> None:
        super().__init__(config)
        self.max_fraction = float(self.config.max_fraction)

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        max_shift = int(self.max_fraction * num_samples)
        return {
            "apply": self._draw_apply(batch_size, generator),
            "shift": _uniform_int(-max_shift, max_shift, batch_size, generator),
        }

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_waveforms(x, "TimeShift")
        params = _params_to(params, x.device)
        num_samples = x.shape[-1]
        # roll(x, s)[n] = x[(n - s) mod N]: the length-N window of [x, x] that starts at (-s) mod N.
        start = torch.remainder(-params["shift"], num_samples)
        windows = torch.cat([x, x], dim=1).unfold(1, num_samples, 1)  # [B, N + 1, N] view
        rolled = windows[torch.arange(x.shape[0], device=x.device), start]
        return _keep_unselected(params["apply"], rolled, x)


# --------------------------------------------------------------------------------------------------------------
# Spectrogram op
# --------------------------------------------------------------------------------------------------------------


class TimeStretch(BatchedAugmentation):
    """Time stretch of a (mel) power spectrogram ``[B, M, T]`` by a per-example rate, keeping T frames.

    Output frame j is source position ``j * rate`` (linear interpolation between frames); positions past the last
    frame are zero. ``num_samples`` in ``randomize_parameters`` is the number of frames (unused).
    """

    config_class = TimeStretchConfig

    def __init__(self, config: TimeStretchConfig | None = None) -> None:
        super().__init__(config)
        self.min_rate = float(self.config.min_rate)
        self.max_rate = float(self.config.max_rate)

    def randomize_parameters(self, batch_size: int, num_samples: int, generator: torch.Generator) -> Params:
        return {
            "apply": self._draw_apply(batch_size, generator),
            "rate": _uniform(self.min_rate, self.max_rate, batch_size, generator),
        }

    def apply_transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"TimeStretch expects spectrograms of shape [batch, bins, frames], got {tuple(x.shape)}")
        params = _params_to(params, x.device)
        num_frames = x.shape[-1]
        frames = torch.arange(num_frames, device=x.device, dtype=torch.float32)
        source = frames[None, :] * params["rate"][:, None].float()
        inside = source <= num_frames - 1
        lower = torch.floor(source).clamp(max=num_frames - 1)
        weight = (source - lower).clamp(0.0, 1.0).to(x.dtype)[:, None, :]
        lower = lower.long()
        upper = (lower + 1).clamp(max=num_frames - 1)
        index_shape = (x.shape[0], x.shape[1], num_frames)
        stretched = x.gather(2, lower[:, None, :].expand(index_shape)) * (1.0 - weight)
        stretched = stretched + x.gather(2, upper[:, None, :].expand(index_shape)) * weight
        stretched = stretched * inside[:, None, :].to(x.dtype)
        return _keep_unselected(params["apply"], stretched, x)


# --------------------------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------------------------

#: Ops applied to the waveform, in chain order (``time_stretch`` follows on the mel power spectrogram).
WAVEFORM_OPS: tuple[str, ...] = ("pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift")


#: Op types that act on waveforms ``[B, N]``.
_WAVEFORM_TYPES = (PitchShift, FadeIn, FadeOut, AddNoise, TimeMask, TimeShift)


def build_ops(config: ClarConfig) -> dict[str, BatchedAugmentation]:
    """The seven ops of ``config``, keyed by CLAR name."""
    pitch_shift = PitchShift if config.pitch_shift.domain == "waveform" else SpectralPitchShift
    return {
        "pitch_shift": pitch_shift(config.pitch_shift),
        "fade_in": FadeIn(config.fade_in),
        "fade_out": FadeOut(config.fade_out),
        "noise": AddNoise(config.noise),
        "time_mask": TimeMask(config.time_mask),
        "time_shift": TimeShift(config.time_shift),
        "time_stretch": TimeStretch(config.time_stretch),
    }


CLAR_SPACE: InvarianceSpace = clar_space()


def active_ops(
    descriptor: torch.Tensor | list[float] | tuple[float, ...], space: InvarianceSpace | None = None
) -> list[str]:
    """Names of the ops whose descriptor entry is >= 0.5, read from ``space`` (default: the CLAR space)."""
    return (space if space is not None else CLAR_SPACE).active_names(descriptor)


class ClarAugment(nn.Module):
    """The CLAR chain for one invariance descriptor: waveforms ``[B, N]`` -> normalised log-mel ``[B, 1, M, T]``.

    Args:
        config: op parameters; ``ClarConfig()`` when omitted.
        frontend: the log-mel encoder (its normalisation statistics are used); ``LogMel()`` when omitted.
    """

    def __init__(self, config: ClarConfig | None = None, frontend: LogMel | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ClarConfig()
        self.frontend = frontend if frontend is not None else LogMel()
        self.ops = nn.ModuleDict(build_ops(self.config))

    def augment_waveform(
        self, wave: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Apply the active waveform ops in chain order (not ``time_stretch``, nor a spectrogram-domain pitch shift)."""
        _check_waveforms(wave, "ClarAugment")
        active = set(active_ops(descriptor))
        for name in WAVEFORM_OPS:
            if name in active and isinstance(self.ops[name], _WAVEFORM_TYPES):
                wave = self.ops[name](wave, generator)
        return wave

    def forward(self, wave: torch.Tensor, descriptor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view of each clip.

        Args:
            wave: float waveforms ``[B, N]`` at the frontend's sample rate.
            descriptor: ``[7]`` invariance bits in ``CLAR_NAMES`` order; entries < 0.5 switch an op off.
            generator: the only source of randomness (parameters are drawn on its device).
        """
        active = active_ops(descriptor)
        wave = self.augment_waveform(wave, descriptor, generator)
        if "pitch_shift" in active and isinstance(self.ops["pitch_shift"], SpectralPitchShift):
            power = self.frontend.power_spectrogram(wave)
            pitch_shift = self.ops["pitch_shift"]
            params = pitch_shift.randomize_parameters(power.shape[0], power.shape[-1], generator)
            mel = pitch_shift.shift_and_project(power, params, self.frontend.melspec.mel_scale.fb)
        else:
            mel = self.frontend.mel_power(wave)
        if "time_stretch" in active:
            mel = self.ops["time_stretch"](mel, generator)
        return self.frontend.normalize(self.frontend.log(mel)).unsqueeze(1)
