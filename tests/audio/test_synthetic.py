"""Synthetic data: determinism, FSD50K layout, factor bookkeeping and the acoustics each factor promises."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from aiaudio.audio.cache import WaveformCache, build_cache
from aiaudio.audio.datasets import fsd50k_entries, fsd50k_vocabulary
from aiaudio.audio.synthetic import FAMILIES, ClipFactors, generate_synthetic, synthesize

RATE = 16000


def _generate(root: Path, seed: int = 3) -> Path:
    return generate_synthetic(root, num_clips=30, num_eval_clips=5, seed=seed)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synthetic"))


def _factors(root: Path) -> list[dict[str, str]]:
    with open(root / "factors.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _magnitude_near(wave: np.ndarray, frequency: float) -> float:
    """Largest windowed-spectrum magnitude within 3 Hz of ``frequency``."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.shape[0])))
    bins = np.fft.rfftfreq(wave.shape[0], 1 / RATE)
    return float(spectrum[np.abs(bins - frequency) <= 3.0].max())


def _midi_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def test_generation_is_deterministic_and_idempotent(synthetic, tmp_path):
    first = _tree(synthetic)
    assert len([name for name in first if name.endswith(".wav")]) == 35
    assert _tree(_generate(tmp_path / "again")) == first
    assert _tree(_generate(tmp_path / "other", seed=4))["FSD50K.dev_audio/0.wav"] != first["FSD50K.dev_audio/0.wav"]

    marker = synthetic / "FSD50K.dev_audio" / "0.wav"
    modified = marker.stat().st_mtime_ns
    _generate(synthetic)
    assert marker.stat().st_mtime_ns == modified, "a complete output with the same parameters must be left alone"
    assert json.loads((synthetic / "synthetic.json").read_text())["complete"] is True


def test_changed_parameters_regenerate_and_foreign_data_is_refused(tmp_path):
    root = tmp_path / "data"
    generate_synthetic(root, num_clips=6, num_eval_clips=2, seed=0, min_seconds=0.5, max_seconds=0.6)
    generate_synthetic(root, num_clips=4, num_eval_clips=1, seed=0, min_seconds=0.5, max_seconds=0.6)
    assert sorted(p.name for p in (root / "FSD50K.dev_audio").iterdir()) == ["0.wav", "1.wav", "2.wav", "3.wav"]
    assert len(fsd50k_entries(root, "dev")) == 4

    foreign = tmp_path / "real"
    (foreign / "FSD50K.ground_truth").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_synthetic(foreign, num_clips=4)
    with pytest.raises(ValueError, match="layout"):
        generate_synthetic(tmp_path / "x", layout="esc50")


def test_the_fsd50k_reader_and_cache_read_it(synthetic, tmp_path):
    assert fsd50k_vocabulary(synthetic) == list(FAMILIES)
    train, val, evaluation = (fsd50k_entries(synthetic, split) for split in ("train", "val", "eval"))
    assert (len(train), len(val), len(evaluation)) == (27, 3, 5)
    assert all(len(entry.labels) == 1 and entry.labels[0] in FAMILIES for entry in train + val + evaluation)
    vocabulary_rows = (synthetic / "FSD50K.ground_truth" / "vocabulary.csv").read_text().splitlines()
    assert vocabulary_rows[0] == "0,sine,/s/timbre_0"

    report = build_cache(train + val + evaluation, tmp_path / "cache", workers=0, progress=False)
    assert report.num_failed == 0 and len(WaveformCache(tmp_path / "cache")) == 35


def test_factors_csv_matches_the_files_and_labels(synthetic):
    rows = _factors(synthetic)
    labels = {entry.key: entry.labels[0] for split in ("dev", "eval") for entry in fsd50k_entries(synthetic, split)}
    splits = {entry.key: split for split in ("train", "val", "eval") for entry in fsd50k_entries(synthetic, split)}
    assert [row["fname"] for row in rows] == [str(i) for i in range(35)]
    lengths = []
    for row in rows:
        fname, note = row["fname"], int(row["midi_note"])
        assert labels[fname] == row["family"] and splits[fname] == row["split"]
        assert 48 <= note <= 72 and int(row["pitch_class"]) == note % 12
        assert row["envelope"] in ("percussive", "sustained", "swell")
        assert row["noise_texture"] in ("none", "breathy", "rumble")
        assert (float(row["noise_level_db"]) == -np.inf) == (row["noise_texture"] == "none")
        part = "eval" if row["split"] == "eval" else "dev"
        wave, rate = soundfile.read(synthetic / f"FSD50K.{part}_audio" / f"{fname}.wav", dtype="float64")
        assert rate == RATE and wave.shape[0] == int(row["num_samples"])
        assert 2.0 <= wave.shape[0] / RATE <= 4.0
        peak_db = 20 * np.log10(np.abs(wave).max() * 32768 / 32767)
        assert abs(peak_db - float(row["loudness_db"])) < 0.02, f"clip {fname}: peak is not the labelled loudness"
        lengths.append(wave.shape[0])
    assert len(set(lengths)) > 30
    assert {row["family"] for row in rows} == set(FAMILIES)


def test_sine_clips_sound_at_their_labelled_pitch(synthetic):
    sines = [row for row in _factors(synthetic) if row["family"] == "sine"]
    assert len(sines) >= 5
    for row in sines:
        part = "eval" if row["split"] == "eval" else "dev"
        wave, _ = soundfile.read(synthetic / f"FSD50K.{part}_audio" / f"{row['fname']}.wav", dtype="float64")
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.shape[0]), n=4 * wave.shape[0]))
        bins = np.fft.rfftfreq(4 * wave.shape[0], 1 / RATE)
        audible = bins > 60.0  # above the brown-noise rumble
        peak = bins[audible][np.argmax(spectrum[audible])]
        expected = _midi_hz(int(row["midi_note"]))
        assert abs(peak - expected) < 0.005 * expected, f"clip {row['fname']}: peak {peak:.1f} Hz, note {expected:.1f}"


def _clean(family: str, note: int = 57, envelope: str = "sustained", noise: str = "none") -> np.ndarray:
    factors = ClipFactors(family, note, -6.0, envelope, noise, -15.0 if noise != "none" else -np.inf, 2 * RATE)
    return synthesize(factors, RATE, np.random.default_rng(11)).astype(np.float64)


def test_families_have_their_promised_spectra():
    f0 = _midi_hz(57)  # 220 Hz
    harmonic = {family: [_magnitude_near(_clean(family), n * f0) for n in range(1, 7)] for family in FAMILIES}

    saw = harmonic["sawtooth"]
    for n in range(2, 7):  # every harmonic, amplitude 1/n
        assert abs(saw[n - 1] / saw[0] - 1 / n) < 0.02
    clarinet = harmonic["clarinet"]
    for n in (2, 4, 6):
        assert clarinet[n - 1] < 1e-3 * clarinet[0], "the clarinet family must have no even harmonics"
    assert abs(clarinet[2] / clarinet[0] - 1 / 3) < 0.02
    sine = harmonic["sine"]
    assert max(sine[1:]) < 1e-3 * sine[0]

    bell = _clean("bell")  # FM with modulator 1.414 f0: sidebands at f0 +- k * 1.414 f0, not at harmonics
    sideband = _magnitude_near(bell, f0 * 2.414)
    assert sideband > 0.1 * _magnitude_near(bell, f0)
    assert _magnitude_near(bell, 2 * f0) < 0.01 * sideband

    pluck = _clean("pluck")
    early, late = pluck[: RATE // 2], pluck[-RATE // 2 :]
    ratio_early = _magnitude_near(early, 5 * f0) / _magnitude_near(early, f0)
    ratio_late = _magnitude_near(late, 5 * f0) / _magnitude_near(late, f0)
    assert ratio_late < 0.1 * ratio_early, "higher pluck harmonics must die away faster"


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave**2)))


def test_envelopes_and_noise_textures():
    percussive, swell, sustained = (_clean("sine", envelope=kind) for kind in ("percussive", "swell", "sustained"))
    quarter = RATE // 4
    assert _rms(percussive[:quarter]) > 10 * _rms(percussive[-2 * quarter : -quarter])
    assert _rms(swell[-2 * quarter : -quarter]) > 5 * _rms(swell[:quarter])
    assert abs(_rms(sustained[quarter : 2 * quarter]) / _rms(sustained[-2 * quarter : -quarter]) - 1) < 0.01

    def band_energy(wave: np.ndarray, low: float, high: float) -> float:
        spectrum = np.abs(np.fft.rfft(wave)) ** 2
        bins = np.fft.rfftfreq(wave.shape[0], 1 / RATE)
        return float(spectrum[(bins >= low) & (bins < high)].sum())

    clean, breathy, rumble = (_clean("sine", noise=kind) for kind in ("none", "breathy", "rumble"))
    assert band_energy(breathy, 4000, 8000) > 1e3 * band_energy(clean, 4000, 8000)
    assert band_energy(rumble, 1, 40) > 1e3 * band_energy(clean, 1, 40)
    assert band_energy(rumble, 1, 40) > 10 * band_energy(rumble, 4000, 8000)
    # The noise sits at the labelled level, -15 dB below the tone's RMS: split each noisy clip into its tone part
    # (projection on the clean clip) and the rest.
    for noisy in (breathy, rumble):
        tone_scale = float(noisy @ clean / (clean @ clean))
        level_db = 20 * np.log10(_rms(noisy - tone_scale * clean) / _rms(tone_scale * clean))
        assert abs(level_db - (-15.0)) < 0.5
