"""The no-learning floor: MFCC statistics (checked against librosa) read out by the nearest class centroid."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from aiaudio.audio.mfcc import dct_matrix, mfcc_statistics
from aiaudio.eval.episodes import SegmentPool
from aiaudio.eval.fewshot import EpisodeConfig, EpisodeData, FewshotEvaluator, floor_row
from aiaudio.eval.learner import LearnerConfig
from aiaudio.eval.sweep import FewshotSweepConfig


def test_mfcc_statistics_match_librosa():
    rng = np.random.default_rng(0)
    logmels = rng.normal(size=(3, 64, 50)).astype(np.float32) * 10 - 40
    expected = librosa.feature.mfcc(S=logmels, n_mfcc=20)  # [3, 20, 50], orthonormal DCT-II over the mel axis
    stats = mfcc_statistics(torch.from_numpy(logmels)[:, None])
    np.testing.assert_allclose(stats[:, :20].numpy(), expected.mean(-1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats[:, 20:].numpy(), expected.std(-1), rtol=1e-4, atol=1e-3)
    basis = dct_matrix(8, 8)
    torch.testing.assert_close(basis @ basis.T, torch.eye(8), rtol=0, atol=1e-6)  # orthonormal
    with pytest.raises(ValueError, match="n_mfcc"):
        dct_matrix(8, 9)


def test_the_floor_is_the_nearest_class_centroid_of_standardised_features():
    """Classes whose means lie far apart (against unit noise, far from the origin): the floor reads them out almost
    perfectly; features with no class information give chance."""
    torch.manual_seed(0)
    labels = torch.arange(120) % 12
    informative = 100.0 + torch.randn(12, 6)[labels] * 6.0 + torch.randn(120, 6)
    data = EpisodeData(SegmentPool(labels), lambda rows: rows, 120, list(range(6)), list(range(6, 12)))
    evaluator = FewshotEvaluator(EpisodeConfig(ways=3, shots=2, queries=2, test_episodes=60, val_episodes=4),
                                 LearnerConfig(steps=20), FewshotSweepConfig(lrs=[0.1]), data, torch.device("cpu"))
    row = floor_row(evaluator, informative, "nearest centroid")
    assert row["model"] == "floor" and row["episodes"] == 60 and row["accuracy"] > 0.95
    noise = floor_row(evaluator, torch.randn(120, 6), "nearest centroid")
    assert abs(noise["accuracy"] - 1 / 3) < 0.15  # 3-way chance; 240 queries give a std of 0.03
