"""Audio reading and writing against signals with known content."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from aiaudio.audio.io import AUDIO_EXTENSIONS, AudioReadError, read_audio, to_int16, try_read_int16, write_audio


def _sine(frequency: float, seconds: float, rate: int, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * rate)) / rate)


def _peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.shape[0]), n=8 * wave.shape[0]))
    return float(np.argmax(spectrum) * rate / (8 * wave.shape[0]))


def test_stereo_44k_pcm16_is_mixed_down_and_resampled(tmp_path):
    rate, seconds, frequency = 44100, 1.5, 1234.5
    left, right = _sine(frequency, seconds, rate, 0.5), _sine(frequency, seconds, rate, 0.3)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="PCM_16")

    wave = read_audio(path, 16000)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == round(seconds * 16000)
    assert abs(_peak_frequency(wave, 16000) - frequency) < 0.5
    middle = wave[2000:-2000]  # away from the resampler's edge transients
    expected_rms = 0.4 / np.sqrt(2)  # channel mean of 0.5 and 0.3 amplitude sines
    assert abs(np.sqrt(np.mean(middle.astype(np.float64) ** 2)) - expected_rms) < 0.005 * expected_rms
    assert abs(np.abs(middle).max() - 0.4) < 0.01


def test_same_rate_pcm16_reads_exact_sample_values(tmp_path):
    samples = np.random.default_rng(0).integers(-32768, 32768, size=3000).astype(np.int16)
    for name in ("exact.wav", "exact.flac"):
        soundfile.write(tmp_path / name, samples, 16000, subtype="PCM_16")
        wave = read_audio(tmp_path / name, 16000)
        np.testing.assert_array_equal(wave, samples.astype(np.float32) / 32768.0)


def test_other_rates_and_ogg_keep_the_frequency(tmp_path):
    soundfile.write(tmp_path / "low.wav", _sine(3000.0, 1.0, 22050, 0.5), 22050, subtype="PCM_16")
    soundfile.write(tmp_path / "up.flac", _sine(440.0, 1.0, 8000, 0.5), 8000, subtype="PCM_16")
    soundfile.write(tmp_path / "lossy.ogg", _sine(700.0, 1.0, 16000, 0.5), 16000, format="OGG", subtype="VORBIS")
    for name, frequency in (("low.wav", 3000.0), ("up.flac", 440.0), ("lossy.ogg", 700.0)):
        wave = read_audio(tmp_path / name, 16000)
        assert abs(wave.shape[0] - 16000) <= 1, name
        assert abs(_peak_frequency(wave, 16000) - frequency) < 1.0, name
    assert set(AUDIO_EXTENSIONS) >= {".wav", ".flac", ".ogg"}


@pytest.mark.parametrize("problem", ["corrupt", "empty", "missing", "nan", "directory"])
def test_unreadable_files_raise_an_error_naming_the_file(tmp_path, problem):
    path = tmp_path / f"bad_{problem}.wav"
    if problem == "corrupt":
        path.write_bytes(b"RIFF" + bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)))
    elif problem == "empty":
        path.write_bytes(b"")
    elif problem == "nan":
        soundfile.write(path, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    elif problem == "directory":
        path.mkdir()

    with pytest.raises(AudioReadError) as raised:
        read_audio(path)

    assert isinstance(raised.value, ValueError)
    assert str(path) in str(raised.value) and raised.value.path == path
    expected_words = {"corrupt": "decodable", "empty": "empty", "missing": "not found", "nan": "non-finite",
                      "directory": "directory"}[problem]
    assert expected_words in raised.value.reason
    assert try_read_int16(path) == (None, raised.value.reason)


def test_write_audio_is_pcm16_clipped_and_creates_folders(tmp_path):
    path = tmp_path / "deep" / "er" / "out.wav"
    wave = np.array([0.0, 0.25, -0.25, 1.5, -3.0, 0.1], dtype=np.float32)

    write_audio(path, wave, 16000)

    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    stored, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(stored, [0, 8192, -8192, 32767, -32767, 3277])  # round(x * 32767), clipped
    np.testing.assert_array_equal(to_int16(wave), stored)


def test_write_audio_rejects_bad_waveforms(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        write_audio(tmp_path / "stereo.wav", np.zeros((10, 2)), 16000)
    with pytest.raises(ValueError, match="non-finite"):
        write_audio(tmp_path / "nan.wav", np.array([0.0, np.inf]), 16000)
