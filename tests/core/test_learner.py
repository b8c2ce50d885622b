"""The few-shot learner recovers known invariances, and batching episodes does not change results."""

from __future__ import annotations

import math

import pytest
import torch

from aiaudio.eval.episodes import EpisodeSampler, SegmentPool
from aiaudio.eval.learner import AmortisedFeatures, FrozenFeatures, LearnerConfig, feature_table, run_episodes
from aiaudio.nn import hyper_resnet
from known_answers import NuisanceEncoder


def _task(informative: str, classes: int = 10, per_class: int = 12, seed: int = 0) -> tuple[torch.Tensor, SegmentPool]:
    """Clips whose class is set by the signal (or the nuisance) dimensions; the other two dimensions are noise of a
    larger scale."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.arange(classes) * 2 * math.pi / classes
    centres = torch.stack([angles.cos(), angles.sin()], dim=1).repeat_interleave(per_class, 0)
    informative_part = centres + 0.05 * torch.randn(len(centres), 2, generator=generator)
    noise_part = 3.0 * torch.randn(len(centres), 2, generator=generator)
    data = torch.cat([informative_part, noise_part] if informative == "signal" else [noise_part, informative_part], 1)
    return data, SegmentPool(torch.arange(classes).repeat_interleave(per_class))


@pytest.mark.parametrize("informative,expect_high", [("signal", True), ("nuisance", False)])
def test_learner_recovers_the_invariance_a_task_needs(informative, expect_high):
    data, pool = _task(informative)
    episodes = EpisodeSampler(pool, range(10), ways=5, shots=5, queries=2, seed=3).sample(16)
    config = LearnerConfig(steps=120, lr=0.05, invariance_lr=0.05, patience=20, episodes_per_batch=16)
    results = run_episodes(AmortisedFeatures(NuisanceEncoder(), lambda s: data[s]), pool, episodes, config, torch.full((2,), 0.5))
    learned = results.descriptors[:, 0]
    if expect_high:
        assert learned.mean() > 0.9, learned
    else:
        assert learned.mean() < 0.1, learned
    # factor 1 has no effect on the features, so its gradient is zero and it stays at its start
    torch.testing.assert_close(results.descriptors[:, 1], torch.full((16,), 0.5))
    assert results.accuracy.mean() > 0.5  # chance is 0.2; the uninformative pair stays noisy features


def test_fixed_descriptor_readout_scores_the_features_it_is_given():
    """With the nuisance switched fully on or off, readout accuracy follows which features carry the class."""
    data, pool = _task("nuisance")
    encoder = NuisanceEncoder()
    episodes = EpisodeSampler(pool, range(10), ways=5, shots=5, queries=2, seed=4).sample(32)
    config = LearnerConfig(steps=100, lr=0.05, episodes_per_batch=32)
    accuracies = {}
    for value in (0.0, 1.0):
        descriptor = torch.tensor([value, 0.0])
        table = feature_table(lambda x, i: encoder.forward_after_stem(x, i), lambda s: data[s], len(data), descriptor)
        results = run_episodes(FrozenFeatures(table), pool, episodes, config, descriptor)
        accuracies[value] = results.accuracy.mean()
        assert torch.all(results.descriptors == descriptor)
    assert accuracies[0.0] > accuracies[1.0] + 0.25 and accuracies[1.0] < 0.4  # chance is 0.2


def test_batched_episodes_equal_one_at_a_time():
    torch.manual_seed(0)
    encoder = hyper_resnet("resnet18", 3, in_chans=1, width=0.125, zero_init_last=False).eval().requires_grad_(False)
    clip_class = torch.arange(6).repeat_interleave(4)
    segment_clip = torch.repeat_interleave(torch.arange(24), 1 + torch.arange(24) % 2)  # 1 or 2 segments per clip
    pool = SegmentPool(clip_class, segment_clip)
    inputs = torch.randn(len(segment_clip), 1, 16, 16)
    features = AmortisedFeatures(encoder, lambda s: inputs[s])
    episodes = EpisodeSampler(pool, range(6), ways=3, shots=2, queries=1, seed=0).sample(4)
    start = torch.full((3,), 0.5)
    batched = run_episodes(features, pool, episodes, LearnerConfig(steps=8, patience=3, episodes_per_batch=4), start)
    single = run_episodes(features, pool, episodes, LearnerConfig(steps=8, patience=3, episodes_per_batch=1), start)
    assert torch.equal(batched.accuracy, single.accuracy)
    assert torch.equal(batched.steps, single.steps)
    torch.testing.assert_close(batched.descriptors, single.descriptors, atol=1e-4, rtol=0)
    assert not torch.allclose(batched.descriptors, start.expand(4, -1))  # the descriptors did move


def test_early_stopping_ends_converged_episodes_before_the_budget():
    data, pool = _task("signal")
    episodes = EpisodeSampler(pool, range(10), ways=5, shots=2, queries=1, seed=5).sample(8)
    config = LearnerConfig(steps=500, lr=0.05, tolerance=1e-3, patience=5, episodes_per_batch=8)
    results = run_episodes(AmortisedFeatures(NuisanceEncoder(), lambda s: data[s]), pool, episodes, config, torch.full((2,), 0.5))
    assert torch.all(results.steps < 500) and torch.all(results.steps >= 5)


def test_bf16_learner_passes_give_the_fp32_features_and_descriptor_gradients():
    """Under bf16 the encoder runs in bf16, and what the learner uses, normalised features and the gradient of a
    loss on them with respect to each group's descriptor, agrees with fp32 up to bf16 rounding."""
    torch.manual_seed(1)
    encoder = hyper_resnet("resnet18", 3, in_chans=1, width=0.125, zero_init_last=False).eval().requires_grad_(False)
    inputs = torch.randn(24, 1, 32, 32)
    descriptors = torch.rand(4, 3)
    readout = torch.randn(encoder.num_features)
    results = {}
    for bf16 in (False, True):
        side = AmortisedFeatures(encoder, lambda s: inputs[s], bf16=bf16)
        leaf = descriptors.clone().requires_grad_()
        features = side.features(side.prepare(torch.arange(24)), leaf)
        assert features.dtype == (torch.bfloat16 if bf16 else torch.float32)
        normalised = torch.nn.functional.normalize(features.float(), dim=-1)
        (gradient,) = torch.autograd.grad((normalised @ readout).square().sum(), leaf)
        results[bf16] = normalised.detach(), gradient
    (exact, exact_gradient), (rounded, rounded_gradient) = results[False], results[True]
    assert (rounded - exact).norm(dim=-1).max() < 0.05  # unit vectors: bf16 keeps 8 bits of mantissa
    assert exact_gradient.abs().max() > 0
    cosine = torch.nn.functional.cosine_similarity(rounded_gradient.flatten(), exact_gradient.flatten(), dim=0)
    assert cosine > 0.95, cosine


def test_precision_choices():
    from aiaudio.eval.learner import native_bf16, uses_bf16

    cpu = torch.device("cpu")
    assert uses_bf16("bf16", cpu) and not uses_bf16("fp32", cpu)
    assert uses_bf16("auto", cpu) == native_bf16(cpu)
    with pytest.raises(ValueError, match="learner.precision"):
        LearnerConfig(precision="fp16")
