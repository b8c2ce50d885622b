"""Invariance measurement (aiaudio.eval.measure) and the audio probes (aiaudio.audio.probes)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import scipy.signal
import torch
import torchaudio

from aiaudio.audio.augment import ClarAugment
from aiaudio.audio.frontend import LogMel
from aiaudio.audio.probes import ProbeConfig, clean_inputs, probe_views, waveform_probes
from aiaudio.eval.measure import (
    InvarianceTable,
    interpolation_curve,
    interpolation_descriptors,
    invariance_table,
    measure_invariance,
)
from aiaudio.audio.clar import CLAR_NAMES
from aiaudio.nn.resnet import hyper_resnet

SAMPLE_RATE = 16000


def numpy_mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    dot = np.sum(a * b, axis=1)
    return float(np.mean(dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def time_mean_pool(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Mean over frames of a spectrogram [B, 1, M, T]: exactly invariant to a circular shift in time."""
    return x.mean(dim=-1).flatten(1)


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


def test_identity_encoder_with_unchanged_views_gives_one() -> None:
    inputs = torch.randn(9, 1, 6, 5)
    values = invariance_table(
        lambda x, i: x.flatten(1), inputs, {"same": inputs.clone()}, torch.zeros(2, 3), batch_size=4
    )
    assert values.shape == (2, 1)
    assert torch.allclose(values, torch.ones(2, 1), atol=1e-6)


def test_time_pooled_encoder_is_invariant_to_a_roll_and_not_to_a_sign_flip_of_half_the_bins() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(12, 1, 8, 10, generator=generator)
    flipped = inputs.clone()
    flipped[:, :, :4] *= -1
    views = {"roll": torch.roll(inputs, 3, dims=-1), "flip_half": flipped}
    values = invariance_table(time_mean_pool, inputs, views, torch.ones(1, 2), batch_size=5)
    assert values[0, 0] == pytest.approx(1.0, abs=1e-6)
    pooled = inputs.mean(dim=-1).flatten(1).numpy()
    pooled_flipped = flipped.mean(dim=-1).flatten(1).numpy()
    assert values[0, 1] == pytest.approx(numpy_mean_cosine(pooled, pooled_flipped), abs=1e-5)
    assert values[0, 1] < 0.5


def test_random_linear_encoder_with_descriptor_dependent_weights_matches_numpy() -> None:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(7, 2, 3, generator=generator)
    views = {"noise": inputs + 0.7 * torch.randn(7, 2, 3, generator=generator), "scale": 3.0 * inputs + 0.1}
    base = torch.randn(6, 5, generator=generator)
    per_factor = torch.randn(2, 6, 5, generator=generator)

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        weight = base + torch.einsum("k,kio->io", i, per_factor)
        return x.flatten(1) @ weight

    descriptors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, 0.9]])
    values = invariance_table(encode, inputs, views, descriptors, batch_size=3)

    x = inputs.flatten(1).numpy().astype(np.float64)
    for d, i in enumerate(descriptors.numpy().astype(np.float64)):
        weight = base.numpy() + np.tensordot(i, per_factor.numpy(), axes=1)
        for a, view in enumerate(views.values()):
            expected = numpy_mean_cosine(x @ weight, view.flatten(1).numpy().astype(np.float64) @ weight)
            assert values[d, a] == pytest.approx(expected, abs=1e-5)


def test_descriptor_reaches_the_encoder() -> None:
    # Features are |x| when bit 0 is on, x otherwise; the view is -x: similarity 1 or -1 by the descriptor.
    inputs = torch.randn(10, 4, generator=torch.Generator().manual_seed(2)) + 0.1

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        assert i.shape == (3,)
        return x.abs() if bool(i[0] >= 0.5) else x

    descriptors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    values = invariance_table(encode, inputs, {"negate": -inputs}, descriptors)
    assert values[:, 0].tolist() == pytest.approx([1.0, -1.0], abs=1e-6)


def test_result_does_not_depend_on_batch_size_and_needs_no_gradients() -> None:
    generator = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(12, 8)
    inputs = torch.randn(11, 12, generator=generator)
    views = {"a": inputs + torch.randn(11, 12, generator=generator), "b": inputs.flip(1)}

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        return layer(x) * (1.0 + i.sum())

    descriptors = torch.eye(3)
    one_batch = invariance_table(encode, inputs, views, descriptors, batch_size=64)
    small = invariance_table(encode, inputs, views, descriptors, batch_size=2)
    assert torch.allclose(one_batch, small, atol=1e-6)
    assert not one_batch.requires_grad


def test_mahalanobis_metric_matches_numpy_and_ignores_invertible_linear_maps_of_features() -> None:
    generator = torch.Generator().manual_seed(4)
    num, dim = 200, 6
    mixing = torch.randn(dim, dim, generator=generator)
    inputs = torch.randn(num, dim, generator=generator) @ mixing + 2.0
    views = {"noisy": inputs + 0.5 * torch.randn(num, dim, generator=generator)}
    ridge = 1e-6
    values = invariance_table(lambda x, i: x, inputs, views, torch.ones(1, 1), metric="mahalanobis", ridge=ridge)

    clean = inputs.numpy().astype(np.float64)
    noisy = views["noisy"].numpy().astype(np.float64)
    mean = clean.mean(axis=0)
    covariance = np.cov(clean, rowvar=False)
    precision = np.linalg.inv(covariance + ridge * np.trace(covariance) / dim * np.eye(dim))
    u, v = clean - mean, noisy - mean
    cross = np.einsum("nf,fg,ng->n", u, precision, v)
    norms = np.sqrt(np.einsum("nf,fg,ng->n", u, precision, u) * np.einsum("nf,fg,ng->n", v, precision, v))
    assert values[0, 0] == pytest.approx(float(np.mean(cross / norms)), abs=1e-4)

    # An invertible affine map of the features leaves the Mahalanobis similarity unchanged, not the cosine.
    transform = torch.randn(dim, dim, generator=generator) + 3.0 * torch.eye(dim)
    mapped = invariance_table(
        lambda x, i: x @ transform + 5.0, inputs, views, torch.ones(1, 1), metric="mahalanobis", ridge=ridge
    )
    assert mapped[0, 0] == pytest.approx(float(values[0, 0]), abs=1e-4)
    plain = invariance_table(lambda x, i: x, inputs, views, torch.ones(1, 1))
    plain_mapped = invariance_table(lambda x, i: x @ transform + 5.0, inputs, views, torch.ones(1, 1))
    assert abs(float(plain[0, 0]) - float(plain_mapped[0, 0])) > 1e-3


def test_centred_metric_matches_numpy_and_ignores_a_constant_offset_of_features() -> None:
    generator = torch.Generator().manual_seed(9)
    inputs = torch.randn(15, 4, generator=generator)
    views = {"noisy": inputs + 0.8 * torch.randn(15, 4, generator=generator)}
    values = invariance_table(lambda x, i: x, inputs, views, torch.ones(1, 1), metric="centred", batch_size=4)
    clean, noisy = inputs.double().numpy(), views["noisy"].double().numpy()
    mean = clean.mean(axis=0)
    assert values[0, 0] == pytest.approx(numpy_mean_cosine(clean - mean, noisy - mean), abs=1e-5)
    offset = invariance_table(lambda x, i: x + 10.0, inputs, views, torch.ones(1, 1), metric="centred")
    assert offset[0, 0] == pytest.approx(float(values[0, 0]), abs=1e-4)
    plain_offset = invariance_table(lambda x, i: x + 10.0, inputs, views, torch.ones(1, 1))
    assert float(plain_offset[0, 0]) > float(values[0, 0]) + 0.1


def test_interpolation_endpoints_equal_the_table_rows() -> None:
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(8, 5, generator=generator)
    views = {"shift": inputs + 1.0, "noise": inputs + torch.randn(8, 5, generator=generator)}
    weights = torch.randn(2, 5, 4, generator=generator)

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ (weights[0] * (1 - i[0]) + weights[1] * i[1]))

    start, end = torch.tensor([0.0, 0.2]), torch.tensor([1.0, 0.8])
    curve = interpolation_curve(encode, inputs, views, start, end, steps=5, batch_size=3)
    table = invariance_table(encode, inputs, views, torch.stack([start, (start + end) / 2, end]))
    assert curve.shape == (5, 2)
    assert torch.allclose(curve[0], table[0], atol=1e-6)
    assert torch.allclose(curve[2], table[1], atol=1e-6)
    assert torch.allclose(curve[-1], table[2], atol=1e-6)
    assert torch.allclose(interpolation_descriptors(start, end, 5)[1], torch.tensor([0.25, 0.35]))


def test_hyper_resnet_measurement_runs_and_is_bounded() -> None:
    torch.manual_seed(0)
    model = hyper_resnet("resnet18", inv_dim=7, width=0.125).eval()
    inputs = torch.randn(4, 1, 32, 24)
    views = {"roll": torch.roll(inputs, 4, dims=-1), "same": inputs.clone()}
    table = measure_invariance(model, inputs, views, torch.tensor([[1.0] * 7, [0.0] * 7]), batch_size=3)
    assert table.values.shape == (2, 2)
    assert torch.all(table.values <= 1.0 + 1e-5) and torch.all(table.values >= -1.0 - 1e-5)
    assert torch.allclose(table.values[:, 1], torch.ones(2), atol=1e-5)


def test_bad_input_raises_clear_errors() -> None:
    inputs = torch.randn(4, 3)
    identity = lambda x, i: x  # noqa: E731
    with pytest.raises(ValueError, match="view 'bad'"):
        invariance_table(identity, inputs, {"bad": torch.randn(4, 2)}, torch.ones(1, 2))
    with pytest.raises(ValueError, match="descriptors"):
        invariance_table(identity, inputs, {"ok": inputs}, torch.ones(2))
    with pytest.raises(ValueError, match="encode must return"):
        invariance_table(lambda x, i: x[:1], inputs, {"ok": inputs}, torch.ones(1, 2))
    with pytest.raises(ValueError, match="metric"):
        invariance_table(identity, inputs, {"ok": inputs}, torch.ones(1, 2), metric="euclid")
    with pytest.raises(ValueError, match="steps"):
        interpolation_curve(identity, inputs, {"ok": inputs}, torch.zeros(2), torch.ones(2), steps=1)
    with pytest.raises(ValueError, match="labels"):
        measure_invariance(identity, inputs, {"ok": inputs}, torch.ones(2, 2), labels=["only one"])


def test_table_rows_and_files(tmp_path) -> None:
    table = InvarianceTable(
        names=("pitch_shift", "noise"),
        labels=("all", "none"),
        descriptors=torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
        values=torch.tensor([[0.9, 0.5], [0.25, -0.125]]),
        num_inputs=8,
    )
    rows = table.to_rows()
    assert rows[1] == {"descriptor": "none", "i": "0,0", "pitch_shift": 0.25, "noise": -0.125, "mean": 0.0625}

    markdown = table.write_markdown(tmp_path / "t.md").read_text()
    assert "| descriptor | i | pitch_shift | noise | mean |" in markdown
    assert "| all | `1,1` | 0.900 | 0.500 | 0.700 |" in markdown

    parsed = list(csv.DictReader(io.StringIO(table.write_csv(tmp_path / "t.csv").read_text())))
    assert [row["descriptor"] for row in parsed] == ["all", "none"]
    assert float(parsed[0]["pitch_shift"]) == pytest.approx(0.9, abs=1e-6)
    assert float(parsed[1]["noise"]) == -0.125

    loaded = InvarianceTable.read_json(table.write_json(tmp_path / "t.json"))
    assert loaded.names == table.names and loaded.labels == table.labels and loaded.num_inputs == 8
    assert torch.equal(loaded.values, table.values) and torch.equal(loaded.descriptors, table.descriptors)
    assert json.loads((tmp_path / "t.json").read_text())["metric"] == "cosine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json", "t.md"]

    with pytest.raises(ValueError, match="values must be"):
        InvarianceTable(names=("a",), labels=("x",), descriptors=torch.ones(1, 2), values=torch.ones(1, 2))


# --------------------------------------------------------------------------------------------------------------
# Audio probes
# --------------------------------------------------------------------------------------------------------------


def harmonic_tone(f0: float, seconds: float, harmonics: int = 4) -> torch.Tensor:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, harmonics + 1))
    return torch.tensor(0.3 * wave, dtype=torch.float32)


def peak_frequency(wave: np.ndarray) -> float:
    """Strongest frequency of a clip (Welch spectrum, parabolic interpolation of the peak bin)."""
    freqs, power = scipy.signal.welch(wave, fs=SAMPLE_RATE, nperseg=8192)
    k = int(np.argmax(power))
    a, b, c = np.log(power[k - 1 : k + 2])
    return float(freqs[k] + 0.5 * (a - c) / (a - 2 * b + c) * (freqs[1] - freqs[0]))


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    generator = torch.Generator().manual_seed(6)
    noise = 0.1 * torch.randn(2, SAMPLE_RATE, generator=generator)
    return torch.cat([harmonic_tone(220.0, 1.0)[None], harmonic_tone(330.0, 1.0)[None], noise])


def test_probe_views_shapes_order_and_determinism(clips: torch.Tensor) -> None:
    frontend = LogMel()
    frontend.set_stats(-30.0, 20.0)
    views = probe_views(clips, frontend)
    clean = clean_inputs(clips, frontend)
    assert tuple(views) == CLAR_NAMES
    assert clean.shape == (4, 1, 128, 32)
    assert torch.equal(clean, frontend(clips))
    for name, view in views.items():
        assert view.shape == clean.shape, name
        assert (view - clean).abs().mean() > 1e-3, f"{name} left the clips unchanged"
    again = probe_views(clips, frontend)
    batched = probe_views(clips, frontend, batch_size=3)
    for name in CLAR_NAMES:
        assert torch.equal(views[name], again[name]), name
        assert torch.allclose(views[name], batched[name], atol=1e-4), name


@pytest.mark.parametrize("semitones", [4.0, -3.0])
def test_waveform_pitch_probe_moves_the_peak_by_the_configured_semitones(clips: torch.Tensor, semitones: float) -> None:
    shifted = waveform_probes(clips[:2], ProbeConfig(pitch_semitones=semitones))["pitch_shift"]
    for clip, f0 in zip(shifted.numpy(), (220.0, 330.0)):
        measured = 12.0 * math.log2(peak_frequency(clip) / f0)
        assert measured == pytest.approx(semitones, abs=0.1)


@pytest.mark.parametrize("pitch_domain", ["waveform", "spectrogram"])
def test_log_mel_pitch_probe_puts_the_peak_in_the_mel_band_of_the_shifted_tone(pitch_domain: str) -> None:
    import librosa

    frontend = LogMel()
    tone = harmonic_tone(1000.0, 1.0, harmonics=1)[None]
    view = probe_views(tone, frontend, ProbeConfig(pitch_semitones=4.0), pitch_domain=pitch_domain)["pitch_shift"]
    centres = librosa.mel_frequencies(n_mels=130, fmin=0.0, fmax=8000.0, htk=False)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - 1000.0 * 2 ** (4 / 12))))
    clean_band = int(frontend(tone)[0, 0].mean(dim=-1).argmax())
    assert clean_band == int(np.argmin(np.abs(centres - 1000.0)))
    assert int(view[0, 0].mean(dim=-1).argmax()) == expected_band
    assert expected_band - clean_band >= 3


def test_pitch_probe_is_the_training_op_at_fixed_semitones(clips: torch.Tensor) -> None:
    frontend = LogMel()
    config = ProbeConfig(pitch_semitones=4.0)
    augment = ClarAugment(config.clar_config("waveform"), frontend)
    descriptor = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])
    expected = augment(clips[:2], descriptor, torch.Generator().manual_seed(0))
    assert torch.allclose(probe_views(clips[:2], frontend, config)["pitch_shift"], expected, atol=1e-4)


@pytest.mark.parametrize("snr_db", [10.0, 0.0])
def test_noise_probe_has_the_configured_snr(clips: torch.Tensor, snr_db: float) -> None:
    noisy = waveform_probes(clips, ProbeConfig(noise_snr_db=snr_db))["noise"].double().numpy()
    clean = clips.double().numpy()
    noise = noisy - clean
    measured = 10 * np.log10(np.mean(clean**2, axis=1) / np.mean(noise**2, axis=1))
    assert np.all(np.abs(measured - snr_db) < 1.0)
    # White: the power in the lower and upper halves of the band agree within 1 dB.
    _, power = scipy.signal.welch(noise, fs=SAMPLE_RATE, nperseg=1024, axis=-1)
    half = power.shape[1] // 2
    ratio_db = 10 * np.log10(power[:, 1:half].mean(axis=1) / power[:, half:-1].mean(axis=1))
    assert np.all(np.abs(ratio_db) < 1.0)


def test_fade_probes_equal_torchaudio_linear_fades(clips: torch.Tensor) -> None:
    views = waveform_probes(clips, ProbeConfig(fade_in_fraction=0.25, fade_out_fraction=0.5))
    num = clips.shape[1]
    fade_in = torchaudio.transforms.Fade(fade_in_len=num // 4, fade_shape="linear")
    fade_out = torchaudio.transforms.Fade(fade_out_len=num // 2, fade_shape="linear")
    assert torch.allclose(views["fade_in"], fade_in(clips), atol=1e-6)
    assert torch.allclose(views["fade_out"], fade_out(clips), atol=1e-6)


def test_time_mask_probe_zeros_a_centred_segment(clips: torch.Tensor) -> None:
    masked = waveform_probes(clips, ProbeConfig(time_mask_fraction=0.125))["time_mask"].numpy()
    num = clips.shape[1]
    length = num // 8
    start = (num - length) // 2
    expected = clips.numpy().copy()
    expected[:, start : start + length] = 0.0
    np.testing.assert_array_equal(masked, expected)


def test_time_shift_probe_is_a_numpy_roll_and_rolls_the_log_mel_frames() -> None:
    frontend = LogMel()
    hop = frontend.config.hop_length
    num = 32 * hop
    generator = torch.Generator().manual_seed(7)
    # A periodic clip (period = clip length), so that the circular shift has no seam.
    t = torch.arange(num) / num
    wave = torch.stack([torch.sin(2 * math.pi * 37 * t) + 0.5 * torch.sin(2 * math.pi * 301 * t + 1.0)] * 2)
    wave = wave * (1.0 + 0.5 * torch.sin(2 * math.pi * 3 * t + torch.rand(2, 1, generator=generator)))
    config = ProbeConfig(time_shift_fraction=0.25)
    shift = num // 4
    rolled = waveform_probes(wave, config)["time_shift"]
    np.testing.assert_array_equal(rolled.numpy(), np.roll(wave.numpy(), shift, axis=1))
    view = probe_views(wave, frontend, config)["time_shift"]
    clean = frontend(wave)
    frames = shift // hop
    interior = slice(frames + 2, clean.shape[-1] - 2)  # frames whose source frames avoid the reflect-padded edges
    source = slice(2, clean.shape[-1] - 2 - frames)
    assert torch.allclose(view[..., interior], clean[..., source], atol=1e-3)


def test_time_stretch_probe_reads_mel_frame_j_times_rate() -> None:
    frontend = LogMel()
    wave = torch.randn(2, 16 * 512, generator=torch.Generator().manual_seed(8))
    view = probe_views(wave, frontend, ProbeConfig(time_stretch_rate=1.25))["time_stretch"]
    clean = frontend(wave)
    for frame in (0, 4, 8, 12):
        assert torch.allclose(view[..., frame], clean[..., frame * 5 // 4], atol=1e-4)
    silence = frontend.normalize(frontend.log(torch.zeros(())))
    assert torch.allclose(view[..., 13:], silence.expand_as(view[..., 13:]))  # past the clip's end


def test_probe_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="noise_colour"):
        ProbeConfig(noise_colour="blue")
    with pytest.raises(ValueError, match="time_mask_fill"):
        ProbeConfig(time_mask_fill="ones")
    with pytest.raises(ValueError, match="pitch_domain"):
        probe_views(torch.zeros(1, 4000), LogMel(), pitch_domain="cepstrum")
    with pytest.raises(ValueError, match="waveforms"):
        probe_views(torch.zeros(4000), LogMel())
