"""LogMel against librosa's MetaAudio encoding, and the global normalisation statistics."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from aiaudio.audio.frontend import LogMel, LogMelConfig, compute_stats

SR = 16000


def _clip(seconds: float, seed: int) -> np.ndarray:
    """Noise + a tone + a stretch of digital silence (float32)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440.0 * t)
    x[n // 3 : n // 2] = 0.0
    return x.astype(np.float32)


def _librosa_log_mel(x: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=1024, hop_length=512, win_length=1024, window="hann", center=True, pad_mode="reflect",
        power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=False, norm="slaney",
    )
    return 10.0 * np.log10(mel + 2.22e-16)


@pytest.mark.parametrize("seconds, frames", [(5.0, 157), (4.0, 126)])
def test_matches_librosa_metaaudio_encoding(seconds: float, frames: int) -> None:
    x = _clip(seconds, seed=int(seconds))
    expected = _librosa_log_mel(x)
    frontend = LogMel()
    out = frontend(torch.from_numpy(x)[None])
    assert out.shape == (1, 1, 128, frames)
    assert expected.shape == (128, frames)
    assert frontend.num_frames(len(x)) == frames
    got = out[0, 0].numpy()
    audible = expected > -100.0  # where the power is non-negligible
    assert audible.mean() > 0.5
    np.testing.assert_allclose(got[audible], expected[audible], atol=0.01)
    # Digital silence stays digital silence (about -156 dB), not clipped.
    assert got.min() < -150.0 and expected.min() < -150.0


def test_split_api_composes_to_forward() -> None:
    x = torch.from_numpy(np.stack([_clip(1.0, 0), _clip(1.0, 1)]))
    frontend = LogMel()
    frontend.set_stats(-20.0, 40.0)
    mel = frontend.mel_power(x)
    assert mel.shape == (2, 128, 32) and bool((mel >= 0).all())
    manual = ((10.0 * torch.log10(mel + 2.22e-16) + 20.0) / 40.0).unsqueeze(1)
    torch.testing.assert_close(frontend(x), manual, rtol=1e-5, atol=1e-5)


def test_stats_are_buffers_saved_with_state_dict() -> None:
    frontend = LogMel()
    assert float(frontend.mean) == 0.0 and float(frontend.std) == 1.0
    frontend.set_stats(-15.77, 45.0)
    state = frontend.state_dict()
    assert {"mean", "std"} <= set(state)
    restored = LogMel()
    restored.load_state_dict(state)
    assert float(restored.mean) == pytest.approx(-15.77) and float(restored.std) == pytest.approx(45.0)
    x = torch.from_numpy(_clip(1.0, 3))[None]
    torch.testing.assert_close(restored(x), frontend(x))
    with pytest.raises(ValueError, match="std must be positive"):
        frontend.set_stats(0.0, 0.0)


def test_compute_stats_matches_numpy_over_librosa_values() -> None:
    clips = [_clip(1.0, seed) for seed in range(3)] + [_clip(0.5, 7)]
    values = np.concatenate([_librosa_log_mel(c).ravel() for c in clips])
    waves = [torch.from_numpy(np.stack(clips[:3])), torch.from_numpy(clips[3])]  # a batch and a single clip
    mean, std = compute_stats(LogMel(), waves)
    assert mean == pytest.approx(float(values.mean()), abs=1e-3)
    assert std == pytest.approx(float(values.std()), rel=1e-4)
    with pytest.raises(ValueError, match="no waveforms"):
        compute_stats(LogMel(), [])


def test_bad_input_and_config() -> None:
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        LogMel().mel_power(torch.zeros(16000))
    with pytest.raises(ValueError, match="f_max"):
        LogMelConfig(f_max=9000.0)
    with pytest.raises(ValueError, match="win_length"):
        LogMelConfig(win_length=2048)
