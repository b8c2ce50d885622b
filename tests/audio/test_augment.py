"""Batched CLAR augmentations against closed forms, torchaudio, numpy, librosa and audiomentations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.stats
import torch
import torchaudio
from audiomentations import PitchShift as ReferencePitchShift
from audiomentations import TimeStretch as ReferenceTimeStretch

from aiaudio.audio.augment import (
    FADE_SHAPES,
    AddNoise,
    ClarAugment,
    ClarConfig,
    FadeConfig,
    FadeIn,
    FadeOut,
    PitchShift,
    SpectralPitchShift,
    TimeMask,
    TimeShift,
    TimeStretch,
    active_ops,
    quantised_normal,
)
from aiaudio.audio.frontend import LogMel
from aiaudio.config import from_dict
from aiaudio.audio.reference import ReferenceClarChain
from aiaudio.audio.clar import CLAR_NAMES

SR = 16000


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _harmonic(f0: float, seconds: float, onset: float = 0.0) -> np.ndarray:
    """Partials 1, 2, 3 at amplitudes 1, 0.5, 0.25 (the fundamental dominates), starting at ``onset`` seconds."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(a * np.sin(2 * np.pi * f0 * h * t + h) for h, a in [(1, 1.0), (2, 0.5), (3, 0.25)])
    return (0.3 * x * (t >= onset)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    x = x[SR // 4 : -SR // 4]  # away from the edges
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spectrum) * SR / (8 * len(x)))


# ------------------------------------------------------------------------------------------------------------ pitch


SEMITONES = [-12.0, -5.0, 3.5, 7.0, 12.0]


def test_pitch_shift_moves_the_spectral_peak_by_the_requested_semitones() -> None:
    f0 = 220.0
    x = torch.from_numpy(_harmonic(f0, 2.0)).repeat(len(SEMITONES), 1)
    params = {"apply": torch.ones(len(SEMITONES), dtype=torch.bool), "semitones": torch.tensor(SEMITONES)}
    shifted = PitchShift().apply_transform(x, params).numpy()  # one batched call, per-example shifts
    for row, semitones in zip(shifted, SEMITONES):
        measured = 12.0 * np.log2(_peak_hz(row) / f0)
        assert measured == pytest.approx(semitones, abs=0.5), f"requested {semitones}, measured {measured:.2f}"
        # Level is kept (the op restores the clip's RMS).
        assert np.sqrt(np.mean(row**2)) == pytest.approx(float(x[0].pow(2).mean().sqrt()), rel=1e-3)


@pytest.mark.parametrize("method", ["librosa_phase_vocoder", "signalsmith_stretch"])
@pytest.mark.parametrize("semitones", [-5.0, 7.0])
def test_reference_pitch_shift_agrees_with_closed_form(method: str, semitones: float) -> None:
    f0 = 220.0
    reference = ReferencePitchShift(min_semitones=semitones, max_semitones=semitones, method=method, p=1.0)
    shifted = reference(_harmonic(f0, 2.0), SR)
    assert 12.0 * np.log2(_peak_hz(shifted) / f0) == pytest.approx(semitones, abs=0.5)


def test_pitch_shift_of_a_late_onset_and_zero_shift() -> None:
    x = torch.from_numpy(np.stack([_harmonic(330.0, 2.0, onset=0.8), _harmonic(330.0, 2.0)]))
    params = {"apply": torch.tensor([True, True]), "semitones": torch.tensor([-7.0, 0.0])}
    out = PitchShift().apply_transform(x, params)
    assert 12.0 * np.log2(_peak_hz(out[0].numpy()) / 330.0) == pytest.approx(-7.0, abs=0.5)
    assert float(out[0, : int(0.7 * SR)].abs().max()) < 0.05 * float(out[0].abs().max())  # silence stays silent
    torch.testing.assert_close(out[1], x[1], atol=1e-4, rtol=0)  # a zero shift reconstructs the input


def _interpolated_peak_bin(power: np.ndarray) -> float:
    """Sub-bin position of the largest bin of a power spectrum (parabola through the log powers around it)."""
    k = int(np.argmax(power[1:-1])) + 1
    a, b, c = np.log(power[k - 1 : k + 2] + 1e-30)
    return k + 0.5 * (a - c) / (a - 2 * b + c)


def test_spectral_pitch_shift_moves_the_peak_by_the_requested_semitones() -> None:
    f0 = 660.0
    frontend = LogMel()
    x = torch.from_numpy(_harmonic(f0, 2.0)).repeat(len(SEMITONES), 1)
    params = {"apply": torch.ones(len(SEMITONES), dtype=torch.bool), "semitones": torch.tensor(SEMITONES)}
    shifted = SpectralPitchShift().apply_transform(frontend.power_spectrogram(x), params)
    bin_hz = SR / frontend.config.n_fft
    for row, semitones in zip(shifted.mean(dim=2).numpy(), SEMITONES):
        measured = 12.0 * np.log2(_interpolated_peak_bin(row) * bin_hz / f0)
        assert measured == pytest.approx(semitones, abs=0.5), f"requested {semitones}, measured {measured:.2f}"


def test_spectral_pitch_shift_fused_with_the_mel_projection_equals_shift_then_projection() -> None:
    frontend = LogMel()
    power = frontend.power_spectrogram(torch.from_numpy(np.stack([_harmonic(f0, 1.0) for f0 in (150, 440, 900, 2000)])))
    op = SpectralPitchShift()
    params = {"apply": torch.tensor([True, False, True, True]), "semitones": torch.tensor([7.0, 5.0, -12.0, 14.5])}
    fused = op.shift_and_project(power, params, frontend.melspec.mel_scale.fb)
    separate = frontend.mel_from_power(op.apply_transform(power, params))
    # Linearity: the same numbers up to float32 rounding (relative to each clip's peak).
    peak = separate.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(fused / peak, separate / peak, rtol=0, atol=1e-5)
    assert torch.equal(fused[1], frontend.mel_from_power(power)[1])  # not selected: the plain projection, exactly
    assert torch.equal(fused, op.shift_and_project(power, params, frontend.melspec.mel_scale.fb))  # reproducible
    with pytest.raises(ValueError, match="projection"):
        op.shift_and_project(power, params, frontend.melspec.mel_scale.fb[:-1])


def test_spectrogram_domain_pitch_shift_in_the_chain_matches_a_tone_at_the_shifted_pitch() -> None:
    config = from_dict(ClarConfig, {"pitch_shift": {"domain": "spectrogram", "min_semitones": 7, "max_semitones": 7}})
    chain = ClarAugment(config, LogMel())
    only_pitch = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])
    view = chain(torch.from_numpy(_harmonic(440.0, 1.0))[None], only_pitch, _generator())
    expected = chain.frontend(torch.from_numpy(_harmonic(440.0 * 2 ** (7 / 12), 1.0))[None])
    peak = lambda v: int(v[0, 0].mean(dim=1).argmax())  # noqa: E731
    assert abs(peak(view) - peak(expected)) <= 1
    assert peak(view) != peak(chain.frontend(torch.from_numpy(_harmonic(440.0, 1.0))[None]))
    with pytest.raises(ValueError, match="domain"):
        from_dict(ClarConfig, {"pitch_shift": {"domain": "fourier"}})


# ------------------------------------------------------------------------------------------------------------ stretch


CLICK_TIMES = np.array([0.5, 1.25, 2.0, 2.75])


def _clicks(seconds: float = 5.0) -> np.ndarray:
    x = np.zeros(int(seconds * SR), dtype=np.float32)
    for t in CLICK_TIMES:
        start = int(t * SR)
        x[start : start + 32] = np.hanning(32)
    return x


def _onset_frames(mel_power: np.ndarray) -> list[int]:
    """Local maxima of frame energy above 10% of the maximum."""
    energy = mel_power.sum(axis=0)
    threshold = 0.1 * energy.max()
    last = len(energy) - 1
    return [
        j
        for j in range(len(energy))
        if energy[j] > threshold
        and (j == 0 or energy[j] > energy[j - 1])
        and (j == last or energy[j] >= energy[j + 1])
    ]


def _matches(found: list[int], expected: np.ndarray, tolerance: float) -> bool:
    return all(min(abs(f - e) for f in found) <= tolerance for e in expected)


@pytest.mark.parametrize("rate", [0.6, 0.8, 1.3, 1.5])
def test_time_stretch_moves_onsets_to_t_over_rate_like_librosa(rate: float) -> None:
    frontend = LogMel()
    x = _clicks()
    mel = frontend.mel_power(torch.from_numpy(x)[None])
    stretched = TimeStretch().apply_transform(mel, {"apply": torch.tensor([True]), "rate": torch.tensor([rate])})
    assert stretched.shape == mel.shape
    expected = CLICK_TIMES * SR / 512 / rate
    found = _onset_frames(stretched[0].numpy())
    assert len(found) == len(CLICK_TIMES)
    assert np.all(np.abs(np.array(found) - expected) <= 1.0), (found, expected)
    # The waveform-domain references (audiomentations' two phase vocoders) put the onsets at the same frames;
    # librosa's smears clicks over its 2048-sample window, hence the looser tolerance.
    for method, tolerance in [("signalsmith_stretch", 1.5), ("librosa_phase_vocoder", 2.5)]:
        reference = ReferenceTimeStretch(
            min_rate=rate, max_rate=rate, leave_length_unchanged=True, method=method, p=1.0
        )
        ref_found = _onset_frames(frontend.mel_power(torch.from_numpy(reference(x, SR))[None])[0].numpy())
        assert _matches(ref_found, expected, tolerance), (method, ref_found, expected)
        if method == "signalsmith_stretch":
            assert len(ref_found) == len(found) and np.all(np.abs(np.array(ref_found) - np.array(found)) <= 1.5)


def test_time_stretch_rate_one_is_identity_and_tail_is_silence() -> None:
    mel = torch.rand(2, 8, 20) + 0.1
    out = TimeStretch().apply_transform(mel, {"apply": torch.tensor([True, True]), "rate": torch.tensor([1.0, 1.5])})
    torch.testing.assert_close(out[0], mel[0])
    assert bool((out[1, :, 13:] == 0).all()) and bool((out[1, :, :13] > 0).all())  # 12 * 1.5 = 18 <= 19 < 13 * 1.5
    torch.testing.assert_close(out[1, :, 2], mel[1, :, 3])  # frame 2 reads source 3.0 exactly
    torch.testing.assert_close(out[1, :, 1], 0.5 * (mel[1, :, 1] + mel[1, :, 2]))  # frame 1 reads 1.5


# ------------------------------------------------------------------------------------------------ normal draws


def test_quantised_normal_matches_the_normal_distribution() -> None:
    draws = quantised_normal((1001, 999), _generator(3)).double().numpy()  # an odd count: the last pair is cut
    assert draws.shape == (1001, 999)
    values = draws.ravel()
    # Kolmogorov distance to scipy's normal CDF, and moments; n = 10**6, so sampling noise is about 1e-3.
    assert scipy.stats.kstest(values, "norm").statistic < 0.004
    assert abs(values.mean()) < 0.005 and abs(values.var() - 1.0) < 0.005
    assert abs(scipy.stats.kurtosis(values)) < 0.05
    levels = [0.01, 0.1, 0.5, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(values, levels), scipy.stats.norm.ppf(levels), atol=0.02)
    # Neighbours (the two values of a pair, and values from different pairs) are uncorrelated.
    assert abs(np.corrcoef(values[0:-1:2], values[1::2])[0, 1]) < 0.005
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 0.005


def test_quantised_normal_is_reproducible_and_scaled_by_std() -> None:
    a = quantised_normal((4, 6), _generator(1))
    assert torch.equal(a, quantised_normal((4, 6), _generator(1)))
    assert not torch.equal(a, quantised_normal((4, 6), _generator(2)))
    assert torch.allclose(quantised_normal((4, 6), _generator(1), std=0.5), 0.5 * a)
    assert a.dtype == torch.float32


# ------------------------------------------------------------------------------------------------------------ noise


def _signal_batch(batch_size: int, seconds: float = 2.0) -> torch.Tensor:
    rng = np.random.default_rng(5)
    clips = [_harmonic(float(rng.uniform(100, 900)), seconds) for _ in range(batch_size)]
    return torch.from_numpy(np.stack(clips))


@pytest.mark.parametrize("colour_index, alpha", [(0, 0.0), (1, 1.0), (2, 2.0)])
def test_noise_snr_is_exact_and_spectral_slope_matches_colour(colour_index: int, alpha: float) -> None:
    op = AddNoise()
    assert op.colours[colour_index] == ("white", "pink", "brown")[colour_index]
    x = _signal_batch(8)
    params = op.randomize_parameters(8, x.shape[1], _generator(colour_index))
    params["colour"] = torch.full((8,), colour_index)
    y = op.apply_transform(x, params)
    noise = (y.double() - x.double()).numpy()
    measured_snr = 10 * np.log10(x.double().pow(2).mean(1).numpy() / (noise**2).mean(1))
    np.testing.assert_allclose(measured_snr, params["snr_db"].numpy(), atol=1.0)
    assert float(params["snr_db"].min()) >= 3.0 and float(params["snr_db"].max()) <= 30.0
    # log-power vs log-frequency slope of the noise alone, Welch-averaged over the batch.
    freqs, psd = scipy.signal.welch(noise, fs=SR, nperseg=2048, axis=-1)
    band = (freqs >= 60) & (freqs <= 6000)
    slope = np.polyfit(np.log10(freqs[band]), np.log10(psd.mean(axis=0)[band]), 1)[0]
    assert slope == pytest.approx(-alpha, abs=0.15)


def test_noise_leaves_silent_clips_silent() -> None:
    x = torch.zeros(3, 4000)
    y = AddNoise()(x, _generator())
    assert bool(torch.isfinite(y).all()) and bool((y == 0).all())


# ------------------------------------------------------------------------------------------------------------ fades


FADE_CASES = [(shape, length) for shape in FADE_SHAPES for length in (0, 1, 2, 777, 4000)]


@pytest.mark.parametrize("op_cls, fade_in", [(FadeIn, True), (FadeOut, False)])
def test_fade_envelopes_equal_torchaudio_fade(op_cls: type, fade_in: bool) -> None:
    n = 8000
    op = op_cls(FadeConfig(shapes=FADE_SHAPES))
    params = {
        "apply": torch.ones(len(FADE_CASES), dtype=torch.bool),
        "shape": torch.tensor([op.shapes.index(shape) for shape, _ in FADE_CASES]),
        "length": torch.tensor([length for _, length in FADE_CASES]),
    }
    out = op.apply_transform(torch.ones(len(FADE_CASES), n), params)
    for row, (shape, length) in zip(out, FADE_CASES):
        fade = torchaudio.transforms.Fade(
            fade_in_len=length if fade_in else 0, fade_out_len=0 if fade_in else length, fade_shape=shape
        )
        torch.testing.assert_close(row, fade(torch.ones(n)), atol=1e-6, rtol=0, msg=f"{shape} {length}")


def test_fade_parameter_ranges() -> None:
    params = FadeIn().randomize_parameters(256, 1000, _generator(1))
    assert int(params["length"].min()) >= 0 and int(params["length"].max()) <= 500
    assert set(params["shape"].tolist()) == {0, 1, 2}
    assert params["length"].unique().numel() > 100


# ------------------------------------------------------------------------------------------------------- shift, mask


def test_time_shift_equals_numpy_roll_per_example() -> None:
    x = torch.randn(16, 1001, generator=_generator(2))
    op = TimeShift()
    params = op.randomize_parameters(16, 1001, _generator(3))
    out = op.apply_transform(x, params).numpy()
    shifts = params["shift"].tolist()
    assert all(abs(s) <= 500 for s in shifts) and len(set(shifts)) > 8
    for row_out, row_in, shift in zip(out, x.numpy(), shifts):
        np.testing.assert_array_equal(row_out, np.roll(row_in, shift))


def test_time_mask_touches_only_one_short_segment() -> None:
    n = 8000
    x = torch.randn(64, n, generator=_generator(4)) + 3.0  # no exact zeros in the input
    op = TimeMask()
    params = op.randomize_parameters(64, n, _generator(5))
    out = op.apply_transform(x, params)
    changed = out != x
    rms = x.pow(2).mean(1).sqrt()
    for b in range(64):
        start, length = int(params["start"][b]), int(params["length"][b])
        assert 0 <= length <= n // 8 and 0 <= start <= n - length
        where = torch.nonzero(changed[b]).flatten()
        if where.numel():
            assert int(where.min()) >= start and int(where.max()) < start + length
        segment = out[b, start : start + length]
        if bool(params["use_noise"][b]):
            if length > 200:
                assert float(segment.pow(2).mean().sqrt()) == pytest.approx(float(rms[b]), rel=0.25)
        else:
            assert bool((segment == 0).all())
    assert params["use_noise"].any() and not params["use_noise"].all()


# ------------------------------------------------------------------------------------------------------------ pipeline


def _clips(batch_size: int = 4, seconds: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(11)
    n = int(seconds * SR)
    clips = [
        _harmonic(float(rng.uniform(100, 900)), seconds) + 0.01 * rng.standard_normal(n).astype(np.float32)
        for _ in range(batch_size)
    ]
    return torch.from_numpy(np.stack(clips))


def test_descriptor_bits_off_give_the_plain_frontend_output_exactly() -> None:
    frontend = LogMel()
    frontend.set_stats(-20.0, 30.0)
    chain = ClarAugment(ClarConfig(), frontend)
    x = _clips()
    plain = frontend(x)
    torch.testing.assert_close(chain(x, torch.zeros(7), _generator()), plain, rtol=0, atol=0)
    assert active_ops(torch.tensor([0.4, 0.6, 0, 0, 0, 0, 1])) == ["fade_in", "time_stretch"]


def test_probability_zero_is_identity_for_every_op() -> None:
    zero = {name: {"p": 0.0} for name in CLAR_NAMES}
    chain = ClarAugment(from_dict(ClarConfig, zero, "augment"), LogMel())
    x = _clips()
    torch.testing.assert_close(chain(x, torch.ones(7), _generator()), chain.frontend(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", CLAR_NAMES)
def test_each_op_alone_changes_the_view_and_is_seeded(name: str) -> None:
    chain = ClarAugment(ClarConfig(), LogMel())
    x = _clips()
    descriptor = torch.tensor([float(n == name) for n in CLAR_NAMES])
    first = chain(x, descriptor, _generator(7))
    again = chain(x, descriptor, _generator(7))
    other = chain(x, descriptor, _generator(8))
    assert first.shape == (4, 1, 128, 32)
    assert bool(torch.isfinite(first).all())
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, chain.frontend(x))


def test_full_chain_reproducible_and_varies_across_the_batch() -> None:
    chain = ClarAugment(ClarConfig(), LogMel())
    same = _clips(1).repeat(6, 1)  # six copies of one clip
    out = chain(same, torch.ones(7), _generator(3))
    assert torch.equal(out, chain(same, torch.ones(7), _generator(3)))
    flat = out.flatten(1)
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(flat[i], flat[j])
    for op in chain.ops.values():  # per-example parameters differ too
        params = op.randomize_parameters(6, 16000, _generator(9))
        varied = [v for k, v in params.items() if k in ("semitones", "length", "snr_db", "shift", "rate")]
        assert all(v.unique().numel() == 6 for v in varied)


def test_pipeline_rejects_bad_input() -> None:
    chain = ClarAugment()
    with pytest.raises(ValueError, match="this space has 7"):
        chain(_clips(), torch.ones(6), _generator())
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        chain(torch.zeros(16000), torch.ones(7), _generator())


def test_config_from_plain_dict() -> None:
    config = from_dict(
        ClarConfig,
        {"noise": {"min_snr_db": 5, "max_snr_db": 20, "colours": ["pink"]}, "time_stretch": {"p": 0.5}, "fade_in": None},
        "augment",
    )
    assert config.noise.min_snr_db == 5.0 and config.noise.colours == ("pink",)
    assert config.time_stretch.p == 0.5 and config.pitch_shift.max_semitones == 15.0
    with pytest.raises(ValueError, match=r"augment\.pitch'"):
        from_dict(ClarConfig, {"pitch": {}}, "augment")
    with pytest.raises(ValueError, match=r"augment\.noise\.snr'"):
        from_dict(ClarConfig, {"noise": {"snr": 3}}, "augment")
    with pytest.raises(ValueError, match="min_rate"):
        from_dict(ClarConfig, {"time_stretch": {"min_rate": 2.0}}, "augment")
    with pytest.raises(ValueError, match=r"fade_out.*shapes"):
        from_dict(ClarConfig, {"fade_out": {"shapes": ["cubic"]}}, "augment")
    with pytest.raises(ValueError, match=r"time_mask.p"):
        from_dict(ClarConfig, {"time_mask": {"p": "often"}}, "augment")
    with pytest.raises(ValueError, match=r"time_shift: .*max_fraction"):
        from_dict(ClarConfig, {"time_shift": {"max_fraction": 1.5}}, "augment")


# ------------------------------------------------------------------------------------------------------------ reference


def test_reference_chain_gating_reproducibility_and_log_mel() -> None:
    chain = ReferenceClarChain(ClarConfig())
    x = _clips(1)[0].numpy()
    np.testing.assert_array_equal(chain(x, [0] * 7, seed=1), x)
    first = chain(x, [1] * 7, seed=4)
    assert first.dtype == np.float32 and first.shape == x.shape
    np.testing.assert_array_equal(first, chain(x, [1] * 7, seed=4))
    assert not np.array_equal(first, chain(x, [1] * 7, seed=5))
    frontend = LogMel()
    view = chain.view(x, [1] * 7, frontend, seed=4)
    assert view.shape == (1, 128, 32)
    torch.testing.assert_close(view, frontend(torch.from_numpy(first)[None])[0])
    with pytest.raises(ValueError, match="this space has 7"):
        chain(x, [1] * 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chain_on_cuda_matches_shapes_and_is_seeded() -> None:
    chain = ClarAugment(ClarConfig(), LogMel()).cuda()
    x = _clips(8).cuda()
    out = chain(x, torch.ones(7), torch.Generator(device="cuda").manual_seed(0))
    again = chain(x, torch.ones(7), torch.Generator(device="cuda").manual_seed(0))
    assert out.shape == (8, 1, 128, 32) and out.is_cuda and bool(torch.isfinite(out).all())
    assert torch.equal(out, again)


@pytest.mark.parametrize("use_cumsum", [False, True])
def test_phase_accumulation_matches_a_float64_running_sum(use_cumsum: bool) -> None:
    from aiaudio.audio.augment import _accumulate_phase_

    increments = torch.rand(3, 313, 40, generator=_generator(5), dtype=torch.float64) * 4 * np.pi - np.pi
    expected = torch.cumsum(increments, dim=1)
    phase = increments.float().clone()
    _accumulate_phase_(phase, use_cumsum=use_cumsum)
    # Compare on the unit circle: both are the same angle modulo 2 pi.
    torch.testing.assert_close(torch.cos(phase.double()), torch.cos(expected), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.sin(phase.double()), torch.sin(expected), atol=2e-3, rtol=0)
