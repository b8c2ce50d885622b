"""Reference BatchNorm statistics: a Hyper-ResNet normalised, at any descriptor, with statistics measured on a reference
batch at that very descriptor; and training with several descriptors per step (one per group of the batch)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aiaudio.invariance import InvarianceSpace
from aiaudio.methods.losses import nt_xent
from aiaudio.methods.simclr import SimCLR
from aiaudio.nn.resnet import hyper_resnet


def _model(inv_dim: int = 2) -> nn.Module:
    torch.manual_seed(11)
    return hyper_resnet("resnet18", inv_dim, in_chans=1, width=0.125, zero_init_last=False)


def _train_mode_output(model: nn.Module, stem: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
    """The output of a training pass (every block BatchNorm uses the batch's own statistics), on a copy."""
    twin = copy.deepcopy(model).train()
    with torch.no_grad():
        return twin.forward_after_stem(stem, descriptor)


@pytest.mark.parametrize("descriptor", [[1.0, 0.0], [0.5, 0.5], [0.13, 0.91]])
def test_reference_statistics_reproduce_a_training_pass_at_any_descriptor(descriptor):
    """Eval mode with statistics measured on a batch at i equals torch's train-mode BatchNorm on that batch at i,
    continuous i too; the checkpoint's running statistics do not."""
    model = _model().eval()
    i = torch.tensor(descriptor)
    stem = torch.randn(12, model.layer1[0].conv1.in_channels, 10, 12) * 2 + 0.5
    with torch.no_grad():
        statistics = model.reference_statistics(stem, i)
        with model.using_statistics(statistics):
            measured = model.forward_after_stem(stem, i)
        running = model.forward_after_stem(stem, i)
    expected = _train_mode_output(model, stem, i)
    torch.testing.assert_close(measured, expected, rtol=1e-4, atol=1e-4)
    assert (running - expected).abs().max() > 1e-2
    assert len(statistics.means) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - 1  # all but the stem's


def test_reference_statistics_per_group_and_their_gradient_reaches_the_descriptor():
    model = _model(inv_dim=3).eval()
    reference = torch.randn(8, model.layer1[0].conv1.in_channels, 10, 12)
    x = torch.randn(4, model.layer1[0].conv1.in_channels, 10, 12)
    descriptors = torch.tensor([[1.0, 0.0, 1.0], [0.2, 0.7, 0.4]])
    with torch.no_grad():
        statistics = model.reference_statistics(reference, descriptors)
        with model.using_statistics(statistics):
            grouped = model.forward_after_stem(torch.cat([x, x]), descriptors)
        separate = []
        for d in descriptors:
            with model.using_statistics(model.reference_statistics(reference, d)):
                separate.append(model.forward_after_stem(x, d))
        with model.using_statistics(model.reference_statistics(reference, descriptors[1])):  # one set, two groups
            shared = model.forward_after_stem(torch.cat([x, x]), descriptors[[1, 1]])
    torch.testing.assert_close(grouped, torch.cat(separate), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared, torch.cat([separate[1], separate[1]]), rtol=1e-4, atol=1e-4)
    i = torch.tensor([0.3, 0.6, 0.9], requires_grad=True)
    with model.using_statistics(model.reference_statistics(reference, i)):
        model.forward_after_stem(x, i).square().sum().backward()
    assert i.grad is not None and bool(i.grad.abs().gt(0).all())


def test_reference_statistics_refuse_training_mode_and_another_model():
    model = _model()
    stem = torch.randn(4, model.layer1[0].conv1.in_channels, 10, 12)
    with pytest.raises(ValueError, match="eval mode"):
        model.train().reference_statistics(stem, torch.ones(2))
    statistics = model.eval().reference_statistics(stem, torch.ones(2))
    deeper = hyper_resnet("resnet50", 2, in_chans=1, width=0.125).eval()
    with pytest.raises(ValueError, match="another model"), deeper.using_statistics(statistics):
        deeper.forward_after_stem(stem, torch.ones(2))
    with pytest.raises(ValueError, match="eval mode"), model.using_statistics(statistics):
        model.train().forward_after_stem(stem, torch.ones(2))


def test_training_with_per_group_descriptors_equals_separate_training_passes():
    """A training pass with descriptors [G, K] gives each group what a training pass at its descriptor alone gives
    (BatchNorm statistics per group), and gradients reach every group's hypernetworks."""
    model = _model().train()
    stem = torch.randn(10, model.layer1[0].conv1.in_channels, 10, 12)
    descriptors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    grouped = model.forward_after_stem(stem, descriptors)
    separate = torch.cat([_train_mode_output(model, part, d) for part, d in zip(stem.chunk(2), descriptors)])
    torch.testing.assert_close(grouped, separate, rtol=1e-4, atol=1e-4)
    grouped.square().sum().backward()
    assert all(p.grad is not None for p in model.hypernetwork_parameters())


class _GroupEncoder(nn.Module):
    """A linear encoder whose output depends on each group's descriptor; it records what it is given."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        groups = descriptor.shape[0] if descriptor.dim() == 2 else 1
        scale = (1 + descriptor.reshape(groups, -1).sum(1)).repeat_interleave(x.shape[0] // groups)
        return self.linear(x) * scale[:, None]


def test_simclr_with_groups_is_the_mean_of_each_groups_own_loss():
    torch.manual_seed(12)
    method = SimCLR(_GroupEncoder(), nn.Identity(), temperature=0.2, gather=False)
    view1, view2 = torch.randn(6, 4), torch.randn(6, 4)
    descriptors = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    loss = method(view1, view2, descriptors)["loss"]
    order = method.encoder.seen[-1]
    torch.testing.assert_close(order[:4], torch.cat([view1[:2], view2[:2]]))  # group 0's two views, consecutive
    expected = []
    for g, d in enumerate(descriptors):
        rows = slice(2 * g, 2 * g + 2)
        z = method.encoder(torch.cat([view1[rows], view2[rows]]), d)
        expected.append(nt_xent(z[:2], z[2:], 0.2, gather=False))
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_descriptors_for_step_are_reproducible_and_start_with_the_steps_own():
    space = InvarianceSpace(["a", "b", "c", "d"], min_active=1)
    rows = space.descriptors_for_step(3, 17, 4)
    assert rows.shape == (4, 4)
    torch.testing.assert_close(rows[0], space.descriptor_for_step(3, 17))
    torch.testing.assert_close(rows, space.descriptors_for_step(3, 17, 4))
    drawn = torch.cat([space.descriptors_for_step(3, step, 4) for step in range(200)])
    assert len({tuple(r.tolist()) for r in drawn}) == len(space)  # every descriptor of the table is drawn
    with pytest.raises(ValueError, match="count"):
        space.descriptors_for_step(3, 17, 0)


def test_sampling_probabilities_favour_more_active_bits_or_the_all_on_descriptor():
    space = InvarianceSpace(["a", "b", "c"], min_active=1)
    assert space.sampling_probabilities() is None  # uniform: the table's own draw
    bits = space.table.sum(1)
    torch.testing.assert_close(space.sampling_probabilities(bits_power=1.0), bits / bits.sum())
    favoured = space.sampling_probabilities(all_on=0.3)
    expected = torch.full((7,), 0.1)
    expected[-1] = 0.4  # the table's last row is all on
    torch.testing.assert_close(favoured, expected)
    draws = torch.stack([space.descriptor_for_step(0, step, favoured) for step in range(2000)])
    assert abs(float((draws.sum(1) == 3).float().mean()) - 0.4) < 0.05  # std of the share: 0.011
    with pytest.raises(ValueError, match="all_on"):
        space.sampling_probabilities(all_on=1.5)


def test_fewshot_reference_statistics_come_from_validation_classes_and_normalise_like_a_training_pass():
    from aiaudio.engine.pretrained import PretrainedEncoder
    from aiaudio.eval.episodes import SegmentPool
    from aiaudio.eval.fewshot import EpisodeConfig, EpisodeData, FewshotEvaluator
    from aiaudio.eval.learner import LearnerConfig
    from aiaudio.eval.plans import StatisticsConfig
    from aiaudio.eval.sweep import FewshotSweepConfig

    model = _model()
    encoder = PretrainedEncoder(model, nn.Identity(), InvarianceSpace(["a", "b"], min_active=0), True)
    images, labels = torch.randn(40, 1, 32, 32) * 2 + 1, torch.arange(40) % 8
    data = EpisodeData(SegmentPool(labels), lambda rows: images[rows], 40, [0, 1, 2, 3], [4, 5, 6, 7])

    def evaluator(statistics: StatisticsConfig) -> FewshotEvaluator:
        return FewshotEvaluator(EpisodeConfig(ways=2, shots=1, queries=1, test_episodes=2, val_episodes=2),
                                LearnerConfig(steps=2), FewshotSweepConfig(lrs=[0.1]), data, torch.device("cpu"),
                                statistics)

    measured = evaluator(StatisticsConfig(source="reference", size=12))
    rows = measured.reference_segments()
    assert len(rows) == 12 and bool((labels[rows] < 4).all())  # validation classes only, never the test ones
    descriptor = torch.tensor([0.3, 1.0])
    table = measured.features(encoder, descriptor)
    twin = copy.deepcopy(model).train()
    twin.bn1.eval()  # the stem does not depend on i: its running statistics stay
    with torch.no_grad():
        expected = twin(images[rows], descriptor)
    torch.testing.assert_close(table[rows], expected, rtol=1e-4, atol=1e-4)
    running = evaluator(StatisticsConfig(source="running")).features(encoder, descriptor)
    assert (running[rows] - expected).abs().max() > 1e-2


def test_a_learned_descriptor_normalises_a_large_batch_with_its_own_statistics_and_a_small_one_with_the_reference():
    """Inside measured_statistics: a batch whose descriptor needs a gradient and has >= 64 rows is normalised like a
    training pass on it; a smaller one with the reference's statistics at that descriptor; a fixed descriptor with the
    reference's (cached); and the gradient reaches i every time."""
    from aiaudio.engine.pretrained import PretrainedEncoder

    model = _model()
    encoder = PretrainedEncoder(model, nn.Identity(), InvarianceSpace(["a", "b"], min_active=0), True)
    reference, large, small = (torch.randn(n, 1, 24, 24) * 2 + 1 for n in (16, 64, 8))
    i = torch.tensor([0.4, 0.7], requires_grad=True)
    twin = copy.deepcopy(model).train()
    twin.bn1.eval()  # the stem's statistics do not depend on i
    with encoder.measured_statistics(reference):
        out = encoder(large, i)
        torch.testing.assert_close(out, twin(large, i.detach()), rtol=1e-4, atol=1e-4)
        out.sum().backward()
        assert i.grad is not None and bool(i.grad.abs().gt(0).all())
        with torch.no_grad():
            stem = model.forward_stem(reference)
            with model.using_statistics(model.reference_statistics(stem, i.detach())):
                expected = model(small, i.detach())
            fixed = encoder(small, i.detach())
        torch.testing.assert_close(encoder(small, i), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fixed, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert (encoder(small, i.detach()) - expected).abs().max() > 1e-2  # outside the block: running statistics
