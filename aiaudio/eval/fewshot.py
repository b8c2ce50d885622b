"""N-way K-shot evaluation of frozen encoders with learned invariances, for any modality.

A modality supplies an :class:`EpisodeData` (the segment pool, a function from segment indices to model inputs, and
which classes and clips validation and test episodes draw from). :class:`FewshotEvaluator` samples seeded episodes,
chooses each learner's hyper-parameters on validation episodes and scores the choice on test episodes, and
:func:`evaluate_encoder` runs every readout of an encoder (learned i, fixed descriptors, or plain features for a
baseline). :func:`format_table` and :func:`write_report` present the rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aiaudio.config import ConfigError
from aiaudio.engine.files import atomic_output, atomic_write_text
from aiaudio.engine.pretrained import PretrainedEncoder
from aiaudio.eval.episodes import Episodes, EpisodeSampler, SegmentPool
from aiaudio.eval.learner import (
    AmortisedFeatures,
    EpisodeEncoder,
    EpisodeResults,
    FrozenFeatures,
    InputFn,
    LearnerConfig,
    feature_table,
    nearest_centroid_accuracy,
    run_episodes,
    sklearn_accuracy,
    uses_bf16,
    with_overrides,
)
from aiaudio.eval.plans import StatisticsConfig, readout_plans, reference_rows
from aiaudio.eval.plots import learned_invariance_bars
from aiaudio.eval.stats import mean_ci
from aiaudio.eval.sweep import FewshotSweepConfig, SweepConfig
from aiaudio.invariance import InvarianceSpace
from aiaudio.seeding import mix_seed

log = logging.getLogger(__name__)

_VAL_STREAM = 1  # seeding stream of the validation episodes (test episodes use the seed itself)


@dataclass
class EpisodeConfig:
    ways: int = 5
    shots: int = 1
    queries: int = 1
    test_episodes: int = 10000
    val_episodes: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.ways, self.shots, self.queries, self.test_episodes, self.val_episodes) < 1 or self.ways < 2:
            raise ValueError("episodes: ways must be >= 2; shots, queries, test_episodes and val_episodes >= 1")


@dataclass
class SetInvarianceConfig:
    """How one invariance for a whole set is learned on its validation episodes (``selected: [jointly]``).

    Each step draws ``episodes_per_step`` validation episodes (every one once per pass, in a seeded order), reads
    each query segment out by its cosine to the class prototypes of its episode's support set (``scale`` times the
    cosine as logits, the learner's starting head), and takes an Adam step (``lr``) on the mean cross-entropy of
    the queries with respect to ``i``, projected back into ``[0, 1]``. ``i`` starts at the learner's ``init``. The
    objective is the one the test episodes pose, a support set generalising to its queries, pooled over the
    validation episodes; the BatchNorm statistics follow ``statistics`` (with a reference, a step measures them at
    the current ``i`` on its own batch, or on the reference when the batch is small).

    ``holdout > 0`` chooses the learning rate (among ``lrs``; null: ``lr`` alone) and the number of steps (the end of
    any pass, up to ``steps``, or none at all: ``i`` stays at its start) on validation episodes: ``i`` is learned on
    a seeded ``1 - holdout`` of them, scored by the same query loss on the rest after every pass, and then learned
    again on all of them with the setting of the lowest held-out loss. Test episodes are never used.
    """

    steps: int = 60
    lr: float = 0.05
    episodes_per_step: int = 8
    scale: float = 10.0
    seed: int = 0
    holdout: float = 0.0
    lrs: list[float] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.episodes_per_step < 1:
            raise ValueError("set_invariance: steps and episodes_per_step must be >= 1")
        if self.lr <= 0 or self.scale <= 0:
            raise ValueError("set_invariance: lr and scale must be positive")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"set_invariance.holdout must lie in [0, 1), got {self.holdout}")
        if self.lrs is not None and (not self.lrs or any(not lr > 0 for lr in self.lrs)):
            raise ValueError(f"set_invariance.lrs must be null or a non-empty list of positive values, got {self.lrs}")
        if self.holdout == 0 and self.lrs is not None and len(self.lrs) > 1:
            raise ValueError("set_invariance.lrs: choosing among several learning rates needs holdout > 0 "
                             "(the fraction of validation episodes held out to score them)")

    def candidate_lrs(self) -> list[float]:
        """The learning rates a held-out choice tries."""
        return list(self.lrs) if self.lrs is not None else [self.lr]


@dataclass
class FewshotRunConfig:
    """What every few-shot run sets besides its data and episodes (a modality adds ``data`` and ``episodes``):
    the amortised ``checkpoint`` and/or a plain ``baseline`` (run or checkpoint directories), the learner, its sweep,
    the fixed descriptors read out besides the learned one, optional scikit-learn readouts, and the device.
    ``per_episode: false`` leaves out the readout that learns i per episode (the paper's, and the slowest).

    ``selected`` adds readouts whose invariance is chosen once for the whole set on the validation episodes and then
    fixed for every test episode (:data:`SELECTIONS`): ``"jointly"``, one invariance learned by gradient descent on
    the query loss of the validation episodes (:func:`learn_set_invariance`, set by ``set_invariance``);
    ``"learned"``, the mean of the invariances learned per validation episode (with the learned readout's chosen
    setting); ``"binary"``, the binary descriptor of the space (every one with at least ``min_active`` bits on) that
    scores best on the validation episodes; ``"jointly_start"``, the per-episode learner started from the jointly
    learned invariance instead of ``learner.init`` (learned once, shared with ``"jointly"``). A 1-shot support set
    gives a per-episode learner little to go on; these pool the validation episodes' evidence instead. ``jointly``
    is on by default: on the demo's pitch task it finds pitch sensitivity where the per-episode learner does not,
    and on the mini benchmark it beats the best binary descriptor on every row (``benchmarks/RESULTS.md``).
    """

    checkpoint: str | None = None
    baseline: str | None = None
    out_dir: str = "runs/fewshot"
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sweep: FewshotSweepConfig = field(default_factory=FewshotSweepConfig)
    fixed: list[str] = field(default_factory=lambda: ["all"])
    sklearn: bool = False
    device: str = "auto"
    selected: list[str] = field(default_factory=lambda: ["jointly"])
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    set_invariance: SetInvarianceConfig = field(default_factory=SetInvarianceConfig)
    per_episode: bool = True

    def __post_init__(self) -> None:
        unknown = [name for name in self.selected if name not in SELECTIONS]
        if unknown:
            raise ValueError(f"selected: unknown choice(s) {unknown}; known: {list(SELECTIONS)}")
        if "learned" in self.selected and not self.per_episode:
            raise ValueError("selected: 'learned' averages the invariances learned per episode; it needs "
                             "per_episode=true (or use 'jointly')")


#: How a set-wide invariance can be chosen on validation episodes (see :class:`FewshotRunConfig`).
SELECTIONS: tuple[str, ...] = ("jointly", "learned", "binary", "jointly_start")
#: The readout name of the invariance learned jointly on the validation episodes (``selected: [jointly]``).
JOINTLY_READOUT = "i = learned jointly on validation"
#: The readout name of the per-episode learner started there (``selected: [jointly_start]``).
JOINTLY_START_READOUT = "learned i, from the jointly learned start"


@dataclass
class EpisodeData:
    """An evaluation set as episodes see it.

    Attributes:
        pool: clip classes and the segments of each clip.
        inputs: model inputs of segment indices, on the evaluation device.
        num_segments: segments in the pool.
        val_classes, test_classes: the classes validation and test episodes draw from.
        val_clips, test_clips: ``[C]`` bool masks of the clips each may use (None: every clip of its classes).
        feature_dir: where feature tables at fixed descriptors are cached (None: not cached).
    """

    pool: SegmentPool
    inputs: InputFn
    num_segments: int
    val_classes: list[int]
    test_classes: list[int]
    val_clips: torch.Tensor | None = None
    test_clips: torch.Tensor | None = None
    feature_dir: Path | None = None


class FewshotEvaluator:
    """Runs learners on the validation and test episodes of one evaluation set."""

    def __init__(
        self, episodes: EpisodeConfig, learner: LearnerConfig, sweep: SweepConfig, data: EpisodeData,
        device: torch.device, statistics: StatisticsConfig | None = None,
        set_invariance: SetInvarianceConfig | None = None,
    ) -> None:
        self.learner, self.sweep, self.data, self.device = learner, sweep, data, device
        self.statistics = statistics or StatisticsConfig()
        self.set_invariance = set_invariance or SetInvarianceConfig()
        self.pool = data.pool
        self.bf16 = uses_bf16(learner.precision, device)  # of the passes that learn i (per episode and jointly)
        e = episodes
        self.val_episodes = EpisodeSampler(
            self.pool, data.val_classes, e.ways, e.shots, e.queries, seed=mix_seed(e.seed, _VAL_STREAM), clips=data.val_clips,
        ).sample(e.val_episodes)
        self.test_episodes = EpisodeSampler(
            self.pool, data.test_classes, e.ways, e.shots, e.queries, seed=e.seed, clips=data.test_clips
        ).sample(e.test_episodes)

    def validation_invariance(self, encoder: EpisodeEncoder, start: torch.Tensor, config: LearnerConfig) -> torch.Tensor:
        """The mean of the descriptors ``encoder`` learns on the validation episodes with ``config``."""
        results = run_episodes(encoder, self.pool, self.val_episodes, config, start, self.device)
        return results.descriptors.mean(0).cpu()

    def reference_inputs(self, model: PretrainedEncoder) -> torch.Tensor | None:
        """Model inputs of the reference batch when ``model``'s features use statistics measured at the descriptor
        (``statistics.source: reference`` and BatchNorm statistics that depend on it), else None."""
        if self.statistics.source != "reference" or not model.measures_statistics:
            return None
        return self.data.inputs(self.reference_segments())

    def best_binary(self, model: PretrainedEncoder) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The binary descriptor of ``model``'s space whose features score best on the validation episodes (the
        head's first sweep setting), its feature table, and every candidate's validation accuracy by name."""
        config = with_overrides(self.learner, **self.sweep.settings(False)[0])
        scores: dict[str, float] = {}
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        for descriptor in model.space.table:
            table = self.features(model, descriptor)
            episodes = run_episodes(FrozenFeatures(table), self.pool, self.val_episodes, config, descriptor, self.device)
            score = float(episodes.accuracy.mean())
            scores[descriptor_label(model.space, descriptor)] = score
            if best is None or score > best[0]:
                best = (score, descriptor, table)
        assert best is not None, "an invariance space always has at least one descriptor"
        return best[1].clone(), best[2], scores

    def validation_segments(self) -> torch.Tensor:
        """Indices of the segments of the clips the validation episodes may use (their classes; their clip mask)."""
        pool, data = self.pool, self.data
        clips = torch.isin(pool.clip_class, torch.as_tensor(data.val_classes, dtype=torch.long))
        if data.val_clips is not None:
            clips &= data.val_clips.to(clips.device)
        return torch.nonzero(clips[pool.segment_clip]).flatten()

    def reference_segments(self) -> torch.Tensor:
        """The seeded reference batch of :class:`StatisticsConfig`, drawn from :meth:`validation_segments`."""
        return reference_rows(self.validation_segments(), self.statistics, "segments of the validation classes")

    def features(self, model: PretrainedEncoder, descriptor: torch.Tensor | None) -> torch.Tensor:
        """Features of every evaluation segment at one descriptor (None: a plain encoder), with the configured
        statistics, cached on disk per (checkpoint, data, statistics, descriptor) when the data has a feature folder
        and the model a checkpoint."""
        name = "plain" if descriptor is None else "-".join(f"{v:g}" for v in descriptor.tolist())
        referenced = self.statistics.source == "reference" and descriptor is not None and model.measures_statistics
        if referenced:
            name += f"-reference{self.statistics.size}s{self.statistics.seed}"
        path = None
        if self.data.feature_dir is not None and model.source is not None:
            path = self.data.feature_dir / f"{model.fingerprint()}-{name}.npy"
            if path.is_file():
                return torch.from_numpy(np.load(path)).to(self.device)
        start = descriptor.to(self.device) if descriptor is not None else None
        with model.measured_statistics(self.reference_inputs(model) if referenced else None):
            table = feature_table(model, self.data.inputs, self.data.num_segments, start)
        if path is not None:
            with atomic_output(path) as tmp:
                np.save(tmp, table.cpu().numpy())
        return table

    @property
    def precision(self) -> str:
        """The precision the passes that learn ``i`` run at: ``bf16`` or ``fp32``."""
        return "bf16" if self.bf16 else "fp32"

    def evaluate(self, encoder: EpisodeEncoder, start: torch.Tensor) -> dict[str, Any]:
        """Sweep on validation episodes, then score the best setting on test episodes (a one-setting sweep has
        nothing to choose: no validation episodes are run and its validation accuracy is None)."""
        summary = self._evaluate(encoder, start)
        return {**summary, "precision": self.precision} if encoder.learns_invariance else summary

    def _evaluate(self, encoder: EpisodeEncoder, start: torch.Tensor) -> dict[str, Any]:
        settings = self.sweep.settings(encoder.learns_invariance)
        if len(settings) == 1:
            chosen = with_overrides(self.learner, **settings[0])
            results = run_episodes(encoder, self.pool, self.test_episodes, chosen, start, self.device)
            return episode_summary(results, None, chosen, encoder.learns_invariance)
        best: tuple[float, LearnerConfig] | None = None
        for setting in settings:
            candidate = with_overrides(self.learner, **setting)
            episodes = run_episodes(encoder, self.pool, self.val_episodes, candidate, start, self.device)
            score = float(episodes.accuracy.mean())
            log.info("validation: %s -> accuracy %.4f", ", ".join(f"{k} {v:g}" for k, v in setting.items()), score)
            if best is None or score > best[0]:
                best = (score, candidate)
        assert best is not None
        results = run_episodes(encoder, self.pool, self.test_episodes, best[1], start, self.device)
        return episode_summary(results, best[0], best[1], encoder.learns_invariance)


def episode_summary(results: EpisodeResults, val_accuracy: float | None, config: LearnerConfig, learned: bool) -> dict[str, Any]:
    """Accuracy ± 95% CI over test episodes, the chosen setting, and (learned i) the mean and spread of i."""
    accuracy = mean_ci(results.accuracy)
    summary: dict[str, Any] = {
        "accuracy": accuracy.mean, "ci95": accuracy.ci95, "episodes": accuracy.n, "val_accuracy": val_accuracy,
        "lr": config.lr, "weight_decay": config.weight_decay, "mean_steps": float(results.steps.float().mean()),
    }
    if learned:
        summary["invariance_lr"] = config.invariance_lr
        summary["learned_i"] = results.descriptors.mean(0).tolist()
        summary["learned_i_std"] = results.descriptors.std(0, correction=0).tolist()
    return summary


def evaluate_encoder(
    evaluator: FewshotEvaluator, model: PretrainedEncoder, fixed: list[str], label: str, sklearn: bool = False,
    selected: list[str] | tuple[str, ...] = (), per_episode: bool = True,
) -> list[dict[str, Any]]:
    """Rows for every readout of ``model`` (``label`` names it: "amortised", "baseline"): i learned per episode
    (when ``per_episode``), each fixed descriptor and each ``selected`` set-wide invariance (see
    :class:`FewshotRunConfig`) for an amortised encoder, plain features for any other; optionally scikit-learn
    readouts too."""
    rows: list[dict[str, Any]] = []
    if model.amortised and not per_episode and not fixed and not selected:
        raise ValueError("nothing to read out: per_episode is off and there is no fixed or selected descriptor")
    plans = readout_plans(
        model, fixed, per_episode, evaluator.learner.init, evaluator.data.inputs,
        lambda d: evaluator.features(model, d), evaluator.bf16,
    ) if fixed or per_episode or not model.amortised else []
    for plan in plans:
        if plan.kind == "learned":
            readout = "learned i"
        elif plan.kind == "fixed":
            readout = f"i = {descriptor_label(model.space, plan.descriptor)}"
        else:
            readout = "linear" if label == "baseline" else "fixed features"
        start = plan.start if plan.start is not None else torch.zeros(model.space.dim)
        row: dict[str, Any] = {"model": label if label == "baseline" or model.amortised else "plain", "readout": readout}
        if label != "baseline":
            row["descriptor"] = None if plan.descriptor is None else plan.descriptor.tolist()
        rows.append({**row, **evaluator.evaluate(plan.encoder, start)})
    if model.amortised:
        learned_row = next((row for row in rows if row["readout"] == "learned i"), None)
        learned_plan = next((plan for plan in plans if plan.kind == "learned"), None)
        jointly: tuple[torch.Tensor, dict[str, Any]] | None = None
        for choice in selected:
            if choice in ("jointly", "jointly_start") and jointly is None:
                jointly = learn_set_invariance(evaluator, model)
            if choice == "jointly":
                rows.append(jointly_row(evaluator, model, jointly))
            elif choice == "jointly_start" and jointly is not None:
                encoder = AmortisedFeatures(model, evaluator.data.inputs, evaluator.bf16)
                rows.append({"model": "amortised", "readout": JOINTLY_START_READOUT, "start": jointly[0].tolist(),
                             **evaluator.evaluate(encoder, jointly[0])})
            elif choice == "learned" and learned_row is not None and learned_plan is not None:
                setting = with_overrides(evaluator.learner, lr=learned_row["lr"], weight_decay=learned_row["weight_decay"],
                                         invariance_lr=learned_row["invariance_lr"])
                descriptor = evaluator.validation_invariance(learned_plan.encoder, learned_plan.start, setting)
                rows.append(selected_row(evaluator, model, descriptor, "i = learned on validation"))
            elif choice == "binary":
                descriptor, table, scores = evaluator.best_binary(model)
                row = selected_row(evaluator, model, descriptor,
                                   f"i = best on validation ({descriptor_label(model.space, descriptor)})", table)
                rows.append({**row, "candidates": scores})
    if sklearn:
        descriptor = next((plan.descriptor for plan in plans if plan.kind == "fixed"), None)
        rows += sklearn_rows(evaluator, model, descriptor, rows[0]["model"])
    return rows


def prototype_query_loss(
    encoder: EpisodeEncoder, pool: SegmentPool, episodes: Episodes, descriptor: torch.Tensor, scale: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of every valid query segment of ``episodes`` read out by ``scale`` times its
    cosine to the class prototypes (mean normalised support features) of its episode, all features at one
    ``descriptor`` ``[K]`` in one pass (differentiable in the descriptor when the encoder learns it)."""
    e, n, k = episodes.support_segments.shape
    clips = episodes.query_clips.flatten(1)  # [E, m]
    segments, valid = pool.query_segments(clips.cpu())  # [E, m, P]
    rows = torch.cat([episodes.support_segments.flatten(), segments.flatten()]).to(device)
    features = encoder.features(encoder.prepare(rows), descriptor.unsqueeze(0))
    features = F.normalize(features.float(), dim=-1)
    support, queries = features[: e * n * k].view(e, n, k, -1), features[e * n * k:].view(*segments.shape, -1)
    prototypes = F.normalize(support.mean(2), dim=-1)  # [E, N, F]
    logits = scale * torch.einsum("empf,enf->empn", queries, prototypes)
    labels = episodes.query_labels().to(device).unsqueeze(-1).expand(segments.shape)
    mask = valid.to(device).flatten()
    flat_logits, flat_labels = logits.flatten(0, 2)[mask], labels.flatten()[mask]
    loss = F.cross_entropy(flat_logits, flat_labels)
    accuracy = (flat_logits.argmax(-1) == flat_labels).float().mean()
    return loss, accuracy.detach()


def _descend(
    encoder: AmortisedFeatures, evaluator: FewshotEvaluator, episodes: Episodes, start: torch.Tensor, lr: float,
    steps: int, on_pass: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Adam on one descriptor from ``start`` over the query loss of ``episodes`` (seeded passes of
    ``episodes_per_step``), projected into ``[0, 1]``: the descriptor and, per pass, its mean loss, accuracy and
    final descriptor. ``on_pass(steps taken, descriptor)`` is called at the end of every pass."""
    config = evaluator.set_invariance
    descriptor = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([descriptor], lr=lr)
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    passes: list[dict[str, Any]] = []
    losses: list[float] = []
    accuracies: list[float] = []
    for step in range(steps):
        if not order:
            order = torch.randperm(len(episodes), generator=generator).tolist()
        chosen, order = order[: config.episodes_per_step], order[config.episodes_per_step:]
        with torch.enable_grad():
            loss, accuracy = prototype_query_loss(encoder, evaluator.pool, episodes.subset(chosen), descriptor,
                                                  config.scale, evaluator.device)
            adam.zero_grad()
            loss.backward()
        adam.step()
        with torch.no_grad():
            descriptor.clamp_(0.0, 1.0)
        losses.append(float(loss.detach()))
        accuracies.append(float(accuracy))
        if not order or step == steps - 1:
            passes.append({"loss": sum(losses) / len(losses), "accuracy": sum(accuracies) / len(accuracies),
                           "i": descriptor.detach().cpu().tolist()})
            losses, accuracies = [], []
            if on_pass is not None:
                on_pass(step + 1, descriptor.detach())
    return descriptor.detach(), passes


@torch.no_grad()
def _held_out_score(encoder: AmortisedFeatures, evaluator: FewshotEvaluator, episodes: Episodes,
                    descriptor: torch.Tensor) -> tuple[float, float]:
    """Mean query loss and accuracy of ``episodes`` at ``descriptor`` (batches of ``episodes_per_step``)."""
    size = evaluator.set_invariance.episodes_per_step
    scores = []
    for begin in range(0, len(episodes), size):
        batch = episodes.subset(list(range(begin, min(begin + size, len(episodes)))))
        loss, accuracy = prototype_query_loss(encoder, evaluator.pool, batch, descriptor,
                                              evaluator.set_invariance.scale, evaluator.device)
        scores.append((len(batch), float(loss), float(accuracy)))
    total = sum(n for n, _, _ in scores)
    return sum(n * loss for n, loss, _ in scores) / total, sum(n * acc for n, _, acc in scores) / total


def learn_set_invariance(evaluator: FewshotEvaluator, model: PretrainedEncoder) -> tuple[torch.Tensor, dict[str, Any]]:
    """One invariance ``[K]`` for the whole set, learned on the validation episodes as
    :class:`SetInvarianceConfig` says, and its trace: the objective (loss and segment accuracy, each the mean over
    a pass through the validation episodes) at the first and the last pass, the descriptor every pass ended at, and
    (with a held-out choice) every candidate's held-out score and the chosen learning rate and steps."""
    config, episodes = evaluator.set_invariance, evaluator.val_episodes
    encoder = AmortisedFeatures(model, evaluator.data.inputs, evaluator.bf16)
    start = torch.full((model.space.dim,), float(evaluator.learner.init), device=evaluator.device)
    lr, steps = config.lr, config.steps
    candidates: list[dict[str, Any]] = []
    with model.measured_statistics(evaluator.reference_inputs(model)):
        if config.holdout > 0:
            held = round(config.holdout * len(episodes))
            if not 1 <= held < len(episodes):
                raise ConfigError(f"set_invariance.holdout={config.holdout} of {len(episodes)} validation episodes "
                                  "leaves none to learn on or none to score: raise episodes.val_episodes")
            order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(config.seed)).tolist()
            fit, held_out = episodes.subset(order[held:]), episodes.subset(order[:held])

            def score(candidate_lr: float | None, taken: int, descriptor: torch.Tensor) -> None:
                loss, accuracy = _held_out_score(encoder, evaluator, held_out, descriptor)
                candidates.append({"lr": candidate_lr, "steps": taken, "loss": loss, "accuracy": accuracy})

            score(None, 0, start)
            for candidate_lr in config.candidate_lrs():
                _descend(encoder, evaluator, fit, start, candidate_lr, config.steps,
                         lambda taken, descriptor, c=candidate_lr: score(c, taken, descriptor))
            best = min(candidates, key=lambda c: c["loss"])
            lr, steps = (best["lr"] if best["lr"] is not None else config.lr), best["steps"]
        learned, passes = _descend(encoder, evaluator, episodes, start, lr, steps) if steps else (start, [])
    learned = learned.cpu()
    log.info("set-wide invariance learned on %d validation episodes: %s (lr %g, %d steps)", len(episodes),
             ", ".join(f"{v:.2f}" for v in learned.tolist()), lr, steps)
    trace = {"first_pass": {k: passes[0][k] for k in ("loss", "accuracy")} if passes else None,
             "last_pass": {k: passes[-1][k] for k in ("loss", "accuracy")} if passes else None,
             "passes": [p["i"] for p in passes],
             **{k: getattr(config, k) for k in ("steps", "lr", "episodes_per_step", "scale", "seed", "holdout")},
             "precision": evaluator.precision}
    if candidates:
        trace.update(chosen={"lr": lr, "steps": steps}, candidates=candidates)
    return learned, trace


def jointly_row(
    evaluator: FewshotEvaluator, model: PretrainedEncoder, learned: tuple[torch.Tensor, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The row of the invariance learned jointly on the validation episodes (:func:`learn_set_invariance`, or its
    result ``learned`` when given), scored on the test episodes, with its trace under ``set_invariance``."""
    descriptor, trace = learned if learned is not None else learn_set_invariance(evaluator, model)
    return {**selected_row(evaluator, model, descriptor, JOINTLY_READOUT), "set_invariance": trace}


def floor_row(evaluator: FewshotEvaluator, table: torch.Tensor, readout: str) -> dict[str, Any]:
    """A no-learning floor through the test episodes: features ``table`` ``[S, F]`` (hand-made, e.g. MFCC
    statistics), standardised per dimension with the validation classes' segments, read out by the nearest class
    centroid (Euclidean) of each episode's support set (:func:`~aiaudio.eval.learner.nearest_centroid_accuracy`)."""
    reference = table[evaluator.validation_segments().to(table.device)]
    if len(reference) < 2:
        raise ValueError("the floor needs at least 2 segments of the validation classes to standardise with")
    standardised = (table - reference.mean(0)) / reference.std(0).clamp_min(1e-6)
    accuracy = mean_ci(nearest_centroid_accuracy(standardised, evaluator.pool, evaluator.test_episodes))
    return {"model": "floor", "readout": readout, "accuracy": accuracy.mean, "ci95": accuracy.ci95,
            "episodes": accuracy.n}


def selected_row(evaluator: FewshotEvaluator, model: PretrainedEncoder, descriptor: torch.Tensor, readout: str,
                 table: torch.Tensor | None = None) -> dict[str, Any]:
    """The row of a set-wide invariance chosen on validation episodes: test episodes on features at ``descriptor``
    (``table``, when they were computed already)."""
    plan_encoder = FrozenFeatures(table if table is not None else evaluator.features(model, descriptor))
    return {"model": "amortised", "readout": readout, "descriptor": descriptor.tolist(),
            **evaluator.evaluate(plan_encoder, descriptor), "chosen_i": descriptor.tolist()}


def sklearn_rows(
    evaluator: FewshotEvaluator, model: PretrainedEncoder, descriptor: torch.Tensor | None, label: str
) -> list[dict[str, Any]]:
    """scikit-learn logistic regression and ridge readouts on the test episodes (features at ``descriptor``)."""
    table = evaluator.features(model, descriptor)
    rows = []
    for kind in ("logistic", "ridge"):
        accuracy = mean_ci(sklearn_accuracy(table, evaluator.pool, evaluator.test_episodes, kind))
        readout = kind if descriptor is None else f"{kind}, i = {descriptor_label(model.space, descriptor)}"
        rows.append({"model": label, "readout": readout, "accuracy": accuracy.mean, "ci95": accuracy.ci95, "episodes": accuracy.n})
    return rows


def descriptor_label(space: InvarianceSpace, descriptor: torch.Tensor) -> str:
    """"all", "none", the active factors of a binary descriptor joined by '+', or the K numbers."""
    if torch.all(descriptor == 1):
        return "all"
    if torch.all(descriptor == 0):
        return "none"
    if torch.all((descriptor == 0) | (descriptor == 1)):
        return space.name_of(descriptor)
    return ",".join(f"{v:g}" for v in descriptor.tolist())


def format_table(report: dict[str, Any]) -> str:
    """The rows as a Markdown table: accuracy ± 95% CI in percent, and the mean learned i per factor."""
    factors = report["factors"]
    header = ["model", "readout", "accuracy (%)", *factors]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        learned = row.get("learned_i") or row.get("chosen_i")  # per episode (mean), or chosen for the set
        cells = [f"{100 * v:.0f}" for v in learned] if learned else ["" for _ in factors]
        accuracy = f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}"
        lines.append("| " + " | ".join([row["model"], row["readout"], accuracy, *cells]) + " |")
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any], title: str) -> None:
    """``results.json``, ``results.md`` and, when i was learned, ``learned_invariance.png`` (bars in percent)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2))
    episodes = report["config"]["episodes"]
    heading = (f"# Few-shot: {title}, {episodes['ways']}-way {episodes['shots']}-shot, "
               f"{episodes['test_episodes']} test episodes\n\n")
    atomic_write_text(out_dir / "results.md", heading + format_table(report) + "\n")
    learned = [row["learned_i"] for row in report["rows"] if row.get("learned_i")]
    if learned:
        learned_invariance_bars({title: learned[0]}, report["factors"], out_dir / "learned_invariance.png")
