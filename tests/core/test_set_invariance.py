"""One invariance for a whole set, learned on its validation episodes (``selected: [jointly]``): the prototype query
loss against a loop over episodes, and the descriptor it learns on an encoder whose right invariance is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aiaudio.engine.pretrained import PretrainedEncoder
from aiaudio.eval.episodes import SegmentPool
from aiaudio.eval.fewshot import (
    JOINTLY_READOUT,
    JOINTLY_START_READOUT,
    EpisodeConfig,
    EpisodeData,
    FewshotEvaluator,
    FewshotRunConfig,
    SetInvarianceConfig,
    evaluate_encoder,
    learn_set_invariance,
    prototype_query_loss,
)
from aiaudio.eval.learner import AmortisedFeatures, LearnerConfig
from aiaudio.eval.sweep import FewshotSweepConfig
from aiaudio.invariance import InvarianceSpace


class KnownInvariance(nn.Module):
    """Inputs ``[signal (4), nuisance (4), distractor (4)]``; features ``[signal + 3 i_1 distractor, 3 (1 - i_0)
    nuisance]``. Class information is in the signal alone, so the best descriptor is ``i_0 = 1`` (invariant to the
    nuisance) and ``i_1 = 0`` (the distractor kept out). Rows form ``len(i)`` equal groups, group g at ``i[g]``."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))  # frozen at 1: gives the model a device

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        groups = i.reshape(-1, 2)
        x = x.view(len(groups), -1, 12)
        signal, nuisance, distractor = x[..., :4], x[..., 4:8], x[..., 8:]
        first = signal + 3 * groups[:, 1, None, None] * distractor
        second = 3 * (1 - groups[:, 0, None, None]) * nuisance
        return self.gain * torch.cat([first, second], dim=-1).flatten(0, 1)


def known_set(classes: int = 10, per_class: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, 4, generator=generator)
    signal = centres[labels] + 0.3 * torch.randn(len(labels), 4, generator=generator)
    return torch.cat([signal, torch.randn(len(labels), 8, generator=generator)], dim=1), labels


def known_evaluator(config: SetInvarianceConfig | None = None) -> tuple[FewshotEvaluator, PretrainedEncoder]:
    items, labels = known_set()
    data = EpisodeData(SegmentPool(labels), lambda s: items[s], len(items), list(range(5)), list(range(5, 10)))
    evaluator = FewshotEvaluator(
        EpisodeConfig(ways=3, shots=1, queries=2, test_episodes=60, val_episodes=24), LearnerConfig(steps=10),
        FewshotSweepConfig(lrs=[0.05], invariance_lrs=[0.1]), data, torch.device("cpu"), set_invariance=config,
    )
    model = PretrainedEncoder(KnownInvariance(), nn.Identity(), InvarianceSpace(("nuisance", "distractor")), True)
    return evaluator, model


def test_the_prototype_query_loss_matches_a_loop_over_episodes() -> None:
    evaluator, model = known_evaluator()
    episodes = evaluator.val_episodes.subset(list(range(5)))
    descriptor = torch.tensor([0.3, 0.6], requires_grad=True)
    encoder = AmortisedFeatures(model, evaluator.data.inputs)
    loss, accuracy = prototype_query_loss(encoder, evaluator.pool, episodes, descriptor, 10.0, torch.device("cpu"))
    items = evaluator.data.inputs(torch.arange(evaluator.data.num_segments))
    losses, hits = [], []
    for e in range(len(episodes)):  # the reference: one episode, one query at a time
        support = F.normalize(model(items[episodes.support_segments[e].flatten()], descriptor), dim=-1)
        prototypes = F.normalize(support.view(3, 1, -1).mean(1), dim=-1)
        for way in range(3):
            for clip in episodes.query_clips[e, way].tolist():  # one segment per clip here
                query = F.normalize(model(items[[clip]], descriptor), dim=-1)
                logits = 10.0 * query @ prototypes.T
                losses.append(F.cross_entropy(logits, torch.tensor([way])))
                hits.append(float(logits.argmax() == way))
    expected = torch.stack(losses).mean()
    torch.testing.assert_close(loss, expected)
    assert accuracy.item() == pytest.approx(sum(hits) / len(hits))
    (gradient,) = torch.autograd.grad(loss, descriptor)
    (expected_gradient,) = torch.autograd.grad(expected, descriptor)
    torch.testing.assert_close(gradient, expected_gradient)


def test_the_set_wide_invariance_learns_the_known_best_descriptor_and_lowers_the_validation_loss() -> None:
    evaluator, model = known_evaluator(SetInvarianceConfig(steps=40, lr=0.1, episodes_per_step=6))
    learned, trace = learn_set_invariance(evaluator, model)
    assert learned[0] > 0.9 and learned[1] < 0.1  # from the 0.5 start: nuisance out, distractor out
    assert trace["last_pass"]["loss"] < trace["first_pass"]["loss"] - 0.1
    assert len(trace["passes"]) == 10  # 24 episodes in passes of 4 steps of 6
    again, _ = learn_set_invariance(evaluator, model)
    torch.testing.assert_close(learned, again, rtol=0, atol=0)  # seeded: the same order, the same descriptor

    rows = evaluate_encoder(evaluator, model, ["all"], "amortised", selected=["jointly"], per_episode=False)
    assert [row["readout"] for row in rows] == ["i = all", "i = learned jointly on validation"]
    fixed, jointly = rows
    torch.testing.assert_close(torch.tensor(jointly["chosen_i"]), learned)
    assert jointly["episodes"] == 60 and jointly["set_invariance"]["steps"] == 40
    assert jointly["accuracy"] > fixed["accuracy"] + 0.2  # i = all keeps the distractor in the features


def test_the_per_episode_learner_can_start_from_the_jointly_learned_invariance() -> None:
    evaluator, model = known_evaluator(SetInvarianceConfig(steps=40, lr=0.1, episodes_per_step=6))
    rows = evaluate_encoder(evaluator, model, [], "amortised", selected=["jointly", "jointly_start"])
    assert [row["readout"] for row in rows] == ["learned i", JOINTLY_READOUT, JOINTLY_START_READOUT]
    plain, jointly, started = rows
    assert started["start"] == jointly["chosen_i"]  # learned once, shared by both readouts
    assert started["episodes"] == 60 and started["invariance_lr"] == 0.1
    # from the 0.5 start ten support steps leave the distractor in; from the jointly learned start it stays out
    assert max(started["learned_i"][1], jointly["chosen_i"][1]) < 0.15 < plain["learned_i"][1]
    assert started["accuracy"] > plain["accuracy"] + 0.1


def test_a_held_out_choice_scores_every_pass_and_learns_again_with_the_winner() -> None:
    evaluator, model = known_evaluator(SetInvarianceConfig(steps=12, episodes_per_step=6, holdout=0.25,
                                                           lrs=[0.001, 0.2]))
    learned, trace = learn_set_invariance(evaluator, model)
    candidates = trace["candidates"]
    # the start, then every pass of each learning rate on the 18 episodes learned on: passes of 3 steps of 6
    assert [(c["lr"], c["steps"]) for c in candidates] == [(None, 0)] + [(lr, s) for lr in (0.001, 0.2) for s in (3, 6, 9, 12)]
    best = min(candidates, key=lambda c: c["loss"])
    assert trace["chosen"] == {"lr": best["lr"], "steps": best["steps"]}
    assert best["lr"] == 0.2  # the tiny rate barely leaves the 0.5 start, which keeps the distractor in
    assert candidates[0]["loss"] > best["loss"] + 0.1
    assert learned[0] > 0.8 and learned[1] < 0.2
    # then learned again on all 24 validation episodes: passes of 4 steps
    expected, _ = learn_set_invariance(
        known_evaluator(SetInvarianceConfig(steps=best["steps"], lr=0.2, episodes_per_step=6))[0], model)
    torch.testing.assert_close(learned, expected, rtol=0, atol=0)


def test_a_held_out_choice_keeps_the_start_when_learning_gains_nothing() -> None:
    evaluator, model = known_evaluator(SetInvarianceConfig(steps=4, episodes_per_step=6, holdout=0.5, lrs=[0.3]))
    known = model.encoder.forward
    model.encoder.forward = lambda x, i: known(x, 0.5 + 0 * i)  # i has no effect (a zero gradient): every score ties
    learned, trace = learn_set_invariance(evaluator, model)
    assert trace["chosen"]["steps"] == 0 and trace["passes"] == [] and trace["first_pass"] is None
    torch.testing.assert_close(learned, torch.full((2,), 0.5))


def test_bad_set_invariance_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="holdout"):
        SetInvarianceConfig(holdout=1.0)
    with pytest.raises(ValueError, match="needs holdout"):
        SetInvarianceConfig(lrs=[0.01, 0.1])
    with pytest.raises(ValueError, match="set_invariance.lrs"):
        SetInvarianceConfig(lrs=[], holdout=0.5)
    with pytest.raises(ValueError, match="set_invariance"):
        SetInvarianceConfig(steps=0)
    with pytest.raises(ValueError, match="set_invariance"):
        SetInvarianceConfig(lr=0.0)
    with pytest.raises(ValueError, match="per_episode"):
        FewshotRunConfig(selected=["learned"], per_episode=False)
    evaluator, model = known_evaluator()
    with pytest.raises(ValueError, match="nothing to read out"):
        evaluate_encoder(evaluator, model, [], "amortised", per_episode=False)
