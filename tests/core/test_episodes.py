"""Episode sampling properties and the confidence-interval formula against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiaudio.eval.episodes import EpisodeSampler, SegmentPool
from aiaudio.eval.stats import mean_ci


def _pool(clips_per_class: list[int], segments_per_clip: int | None = None) -> SegmentPool:
    clip_class = torch.cat([torch.full((n,), c) for c, n in enumerate(clips_per_class)])
    segment_clip = None
    if segments_per_clip is not None:
        counts = 1 + torch.arange(len(clip_class)) % segments_per_clip
        segment_clip = torch.repeat_interleave(torch.arange(len(clip_class)), counts)
    return SegmentPool(clip_class, segment_clip)


def test_episodes_have_distinct_classes_and_disjoint_support_and_query():
    pool = _pool([6] * 12, segments_per_clip=3)
    test_classes = list(range(4, 12))
    episodes = EpisodeSampler(pool, test_classes, ways=5, shots=2, queries=3, seed=1).sample(300)
    assert episodes.classes.shape == (300, 5)
    assert episodes.support_clips.shape == (300, 5, 2) and episodes.query_clips.shape == (300, 5, 3)
    for e in range(300):
        classes = episodes.classes[e].tolist()
        assert len(set(classes)) == 5 and set(classes) <= set(test_classes)
        support, query = episodes.support_clips[e], episodes.query_clips[e]
        all_clips = torch.cat([support.flatten(), query.flatten()]).tolist()
        assert len(set(all_clips)) == len(all_clips)  # without replacement, support and query disjoint
        for way in range(5):
            assert torch.all(pool.clip_class[support[way]] == classes[way])
            assert torch.all(pool.clip_class[query[way]] == classes[way])
        # each support segment belongs to its clip
        assert torch.equal(pool.segment_clip[episodes.support_segments[e]], support)


def test_sampling_is_reproducible_and_independent_of_batching():
    pool = _pool([5] * 9)
    sampler = EpisodeSampler(pool, range(9), ways=3, shots=1, queries=2, seed=7)
    whole = sampler.sample(600)
    pieces = [sampler.sample(100, start) for start in range(0, 600, 100)]
    for name in ("classes", "support_clips", "support_segments", "query_clips"):
        joined = torch.cat([getattr(p, name) for p in pieces])
        assert torch.equal(getattr(whole, name), joined)
    again = EpisodeSampler(pool, range(9), ways=3, shots=1, queries=2, seed=7).sample(600)
    assert torch.equal(again.support_clips, whole.support_clips)
    other = EpisodeSampler(pool, range(9), ways=3, shots=1, queries=2, seed=8).sample(600)
    assert not torch.equal(other.support_clips, whole.support_clips)


def test_classes_are_drawn_uniformly():
    pool = _pool([4] * 10)
    episodes = EpisodeSampler(pool, range(10), ways=5, shots=1, queries=1, seed=0).sample(4000)
    counts = torch.bincount(episodes.classes.flatten(), minlength=10).double()
    expected = 4000 * 5 / 10
    assert torch.all((counts - expected).abs() < 5 * expected**0.5)


def test_small_classes_are_left_out_and_too_few_classes_is_an_error():
    pool = _pool([1, 3, 3, 3])
    sampler = EpisodeSampler(pool, range(4), ways=3, shots=1, queries=2, seed=0)
    assert 0 not in sampler.sample(50).classes.flatten().tolist()
    with pytest.raises(ValueError, match="need 4 classes"):
        EpisodeSampler(pool, range(4), ways=4, shots=1, queries=2)


def test_query_segments_cover_each_clip_exactly():
    pool = _pool([3, 3], segments_per_clip=3)
    clips = torch.tensor([[0, 2], [5, 1]])
    segments, valid = pool.query_segments(clips)
    for (r, c), clip in np.ndenumerate(clips.numpy()):
        own = torch.nonzero(pool.segment_clip == clip).flatten()
        assert torch.equal(segments[r, c][valid[r, c]], own)


def test_mean_ci_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2, size=1000).astype(float)
    result = mean_ci(torch.tensor(values))
    assert result.mean == pytest.approx(values.mean())
    assert result.ci95 == pytest.approx(1.96 * values.std() / np.sqrt(len(values)))
    assert mean_ci([0.5]).ci95 == 0.0
    with pytest.raises(ValueError):
        mean_ci([])


def test_clip_mask_restricts_the_clips_used():
    pool = _pool([6] * 5)
    allowed = torch.arange(30) % 2 == 0
    episodes = EpisodeSampler(pool, range(5), ways=5, shots=1, queries=2, seed=0, clips=allowed).sample(50)
    used = torch.cat([episodes.support_clips.flatten(), episodes.query_clips.flatten()])
    assert torch.all(allowed[used])
