"""Few-shot learners over a frozen encoder: a linear readout and, for amortised encoders, the invariance ``i``.

Per episode, a linear head on L2-normalised features and (optionally) a continuous descriptor ``i in [0, 1]^K``
(init 0.5) are learned jointly with Adam on the support set; ``i`` is projected back into ``[0, 1]`` after every step.
Many episodes run at once: episode ``e`` has its own head and descriptor, and the encoder runs all episodes' support
sets in one grouped pass (see :func:`aiaudio.nn.hyper.grouped_conv2d`). Each episode stops on its own once its support
loss has stopped improving; stopped episodes leave the batch, so the work shrinks as episodes converge. Adam is
per-element and each episode's loss depends only on its own parameters, so a batch of episodes gives the same result
as the same episodes one at a time.

The encoder side is an :class:`EpisodeEncoder`: ``prepare`` computes once, per episode batch, whatever does not depend
on ``i`` (the stem of a Hyper-ResNet, or whole features of a frozen encoder), ``features`` finishes the computation
for one descriptor per episode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from aiaudio.eval.episodes import Episodes, SegmentPool
from aiaudio.invariance import quantize

#: ``inputs(segment indices [M]) -> model inputs [M, ...]`` on the evaluation device.
InputFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LearnerConfig:
    """How each episode's readout (and invariance) is learned.

    Attributes:
        steps: step budget per episode.
        lr: Adam learning rate of the linear head.
        invariance_lr: Adam learning rate of the descriptor.
        weight_decay: L2 penalty on the head weights (added to the loss).
        init: initial value of every descriptor entry (the paper: 0.5).
        tolerance: an episode counts a step as "no progress" when its support loss fell by less than this.
        patience: an episode stops after this many consecutive steps without progress.
        scale: logit scale; the head starts as the class prototypes (mean normalised support features) times it.
        quantize_bits: round the learned descriptor to this many bits before predicting (None: no rounding).
        episodes_per_batch: episodes run together on the device.
        precision: of the encoder passes that learn ``i``: ``fp32``; ``bf16`` (autocast; the head and the loss stay
            in fp32); or ``auto``, bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with
            AVX-512 BF16 or AMX), fp32 elsewhere (:func:`uses_bf16`).
    """

    steps: int = 100
    lr: float = 0.01
    invariance_lr: float = 0.02
    weight_decay: float = 0.0
    init: float = 0.5
    tolerance: float = 1e-4
    patience: int = 10
    scale: float = 10.0
    quantize_bits: int | None = None
    episodes_per_batch: int = 64
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"learner.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.steps < 0 or self.patience < 1 or self.episodes_per_batch < 1:
            raise ValueError("learner: steps must be >= 0, patience and episodes_per_batch >= 1")
        if not 0.0 <= self.init <= 1.0:
            raise ValueError(f"learner.init must lie in [0, 1], got {self.init}")
        if self.lr <= 0 or self.invariance_lr < 0 or self.weight_decay < 0 or self.scale <= 0:
            raise ValueError("learner: lr and scale must be positive, invariance_lr and weight_decay >= 0")


#: The precisions of the encoder passes that learn ``i`` (:class:`LearnerConfig`).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX
    (elsewhere bf16 convolutions are emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether the encoder passes that learn ``i`` run under bf16 autocast (``precision``: one of :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


class EpisodeEncoder(Protocol):
    """The encoder side of episode learning (see the module docstring)."""

    learns_invariance: bool

    def prepare(self, segments: torch.Tensor) -> torch.Tensor:
        """The descriptor-independent part for segment indices ``[M]``."""
        ...

    def features(self, prepared: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Features ``[G * n, F]`` of prepared rows forming G equal groups, group ``g`` with ``descriptors[g]``."""
        ...


class AmortisedFeatures:
    """A Hyper-ResNet (any encoder with ``forward_stem`` / ``forward_after_stem``) whose descriptor is learned.

    Args:
        encoder: the frozen encoder in eval mode.
        inputs: model inputs for segment indices.
        bf16: run the encoder under bf16 autocast (features come out in bf16; callers read them out in fp32).
    """

    learns_invariance = True

    def __init__(self, encoder: torch.nn.Module, inputs: InputFn, bf16: bool = False) -> None:
        self.encoder, self.inputs, self.bf16 = encoder, inputs, bf16
        parameter = next(encoder.parameters(), None)
        self.device_type = "cpu" if parameter is None else parameter.device.type

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    @torch.no_grad()
    def prepare(self, segments: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.encoder.forward_stem(self.inputs(segments))

    def features(self, prepared: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.encoder.forward_after_stem(prepared, descriptors)


class FrozenFeatures:
    """Features computed once (a plain encoder, or an amortised one at a fixed descriptor): nothing to learn in i.

    Args:
        table: ``[S, F]`` features of every segment of the pool.
    """

    learns_invariance = False

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def prepare(self, segments: torch.Tensor) -> torch.Tensor:
        return self.table[segments.to(self.table.device)]

    def features(self, prepared: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        return prepared


@torch.no_grad()
def feature_table(
    encoder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    inputs: InputFn,
    num_segments: int,
    descriptor: torch.Tensor | None,
    batch_size: int = 128,
) -> torch.Tensor:
    """Features ``[S, F]`` of every segment at one descriptor (None for a plain encoder)."""
    rows = [
        encoder(inputs(torch.arange(start, min(start + batch_size, num_segments))), descriptor).float()
        for start in range(0, num_segments, batch_size)
    ]
    return torch.cat(rows)


@dataclass
class EpisodeResults:
    """Per-episode outcome: accuracy on the queries, learned descriptor, steps taken, final support loss."""

    accuracy: torch.Tensor
    descriptors: torch.Tensor
    steps: torch.Tensor
    support_loss: torch.Tensor

    @staticmethod
    def concat(parts: list[EpisodeResults]) -> EpisodeResults:
        return EpisodeResults(*(torch.cat([getattr(p, f) for p in parts]) for f in ("accuracy", "descriptors", "steps", "support_loss")))


@dataclass
class _Head:
    weight: torch.Tensor  # [E, N, F]
    bias: torch.Tensor  # [E, N]
    descriptors: torch.Tensor  # [E, K]


class _MaskedAdam:
    """Adam over per-episode parameter rows, updating only the rows of the active episodes."""

    def __init__(self, tensors: list[torch.Tensor], lrs: list[float], betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.tensors, self.lrs, self.betas = tensors, lrs, betas
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]
        self.count = torch.zeros(tensors[0].shape[0], device=tensors[0].device)

    def step(self, rows: torch.Tensor | None, grads: list[torch.Tensor]) -> None:
        """One Adam step of the rows ``rows`` (None: every row) with their gradients."""
        beta1, beta2 = self.betas
        every = slice(None)
        index = every if rows is None else rows
        self.count[index] += 1
        t = self.count[index]
        for tensor, m, v, lr, grad in zip(self.tensors, self.m, self.v, self.lrs, grads):
            if lr == 0:
                continue
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            m_rows = beta1 * m[index] + (1 - beta1) * grad
            v_rows = beta2 * v[index] + (1 - beta2) * grad * grad
            m[index], v[index] = m_rows, v_rows
            step = (m_rows / (1 - beta1**t).view(shape)) / ((v_rows / (1 - beta2**t).view(shape)).sqrt() + 1e-8)
            tensor[index] -= lr * step


def _support_loss(
    encoder: EpisodeEncoder, prepared: torch.Tensor, labels: torch.Tensor, head: _Head, rows: torch.Tensor | None,
    weight_decay: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-episode support loss of episodes ``rows`` (None: all) and leaf copies of their head and descriptor rows."""
    num, per = labels.shape[0], labels.shape[1]
    index = slice(None) if rows is None else rows
    count = num if rows is None else len(rows)
    weight = head.weight[index].detach().clone().requires_grad_()
    bias = head.bias[index].detach().clone().requires_grad_()
    descriptors = head.descriptors[index].detach().clone().requires_grad_(encoder.learns_invariance)
    chosen = prepared if rows is None else prepared.view(num, per, *prepared.shape[1:])[rows].flatten(0, 1)
    features = F.normalize(encoder.features(chosen, descriptors).float(), dim=-1).view(count, per, -1)
    logits = torch.einsum("enf,ecf->enc", features, weight) + bias.unsqueeze(1)
    loss = F.cross_entropy(logits.flatten(0, 1), labels[index].flatten(), reduction="none").view(count, per).mean(1)
    loss = loss + 0.5 * weight_decay * weight.pow(2).sum(dim=(1, 2))
    return loss, [weight, bias, descriptors]


def fit_episodes(
    encoder: EpisodeEncoder, prepared: torch.Tensor, labels: torch.Tensor, ways: int, start: torch.Tensor,
    config: LearnerConfig,
) -> tuple[_Head, torch.Tensor, torch.Tensor]:
    """Learn each episode's head (and descriptor) on its support set.

    Args:
        encoder: the encoder side.
        prepared: ``[E * n, ...]`` prepared support rows, episode-major.
        labels: ``[E, n]`` support labels in ``[0, ways)``.
        ways: N.
        start: ``[E, K]`` initial (or, without invariance learning, fixed) descriptors.
        config: the learner's settings.

    Returns:
        The head, steps taken ``[E]`` and the last support loss ``[E]``.
    """
    num = labels.shape[0]
    with torch.no_grad():
        features = F.normalize(encoder.features(prepared, start).float(), dim=-1).view(num, labels.shape[1], -1)
        one_hot = F.one_hot(labels, ways).float()  # [E, n, N]
        prototypes = torch.einsum("enc,enf->ecf", one_hot, features) / one_hot.sum(1).clamp_min(1).unsqueeze(-1)
    head = _Head(config.scale * F.normalize(prototypes, dim=-1), torch.zeros(num, ways, device=labels.device), start.clone())
    invariance_lr = config.invariance_lr if encoder.learns_invariance else 0.0
    adam = _MaskedAdam([head.weight, head.bias, head.descriptors], [config.lr, config.lr, invariance_lr])
    steps = torch.zeros(num, dtype=torch.long, device=labels.device)
    last = torch.full((num,), math.inf, device=labels.device)
    quiet = torch.zeros(num, dtype=torch.long, device=labels.device)
    active = torch.ones(num, dtype=torch.bool, device=labels.device)
    all_active = True  # while every episode is active, whole tensors are used instead of gathered rows
    for _ in range(config.steps):
        rows = None
        if not all_active:
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
        with torch.enable_grad():
            loss, leaves = _support_loss(encoder, prepared, labels, head, rows, config.weight_decay)
            needs = [leaf for leaf in leaves if leaf.requires_grad]
            grads = torch.autograd.grad(loss.sum(), needs)
        grads = list(grads) + [torch.zeros_like(leaves[2])] * (len(leaves) - len(needs))
        with torch.no_grad():
            adam.step(rows, grads)
            head.descriptors.clamp_(0.0, 1.0)
            index = slice(None) if rows is None else rows
            progress = last[index] - loss.detach()
            quiet[index] = torch.where(progress < config.tolerance, quiet[index] + 1, 0)
            last[index] = loss.detach()
            steps[index] += 1
            active[index] = quiet[index] < config.patience
            if all_active:
                all_active = bool(active.all())
    return head, steps, last


def majority_vote(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Predicted class per clip from per-segment scores ``[..., P, N]`` and the valid-segment mask ``[..., P]``:
    the most votes of the segments' argmax, ties broken by the larger summed softmax probability."""
    mask = valid.to(scores.device).unsqueeze(-1).float()
    votes = (F.one_hot(scores.argmax(-1), scores.shape[-1]).float() * mask).sum(-2)
    probability = (scores.softmax(-1) * mask).sum(-2)
    return (votes + probability / (scores.shape[-2] + 1)).argmax(-1)


@torch.no_grad()
def predict_clips(
    encoder: EpisodeEncoder, pool: SegmentPool, clips: torch.Tensor, head: _Head, descriptors: torch.Tensor
) -> torch.Tensor:
    """Predicted way of each query clip ``[E, m]`` by :func:`majority_vote` over its segments."""
    num, per = clips.shape
    segments, valid = pool.query_segments(clips.cpu())
    width = segments.shape[-1]
    features = encoder.features(encoder.prepare(segments.flatten().to(head.weight.device)), descriptors)
    features = F.normalize(features.float(), dim=-1).view(num, per * width, -1)
    logits = torch.einsum("esf,ecf->esc", features, head.weight) + head.bias.unsqueeze(1)
    return majority_vote(logits.view(num, per, width, -1), valid)


@torch.no_grad()
def nearest_centroid_accuracy(table: torch.Tensor, pool: SegmentPool, episodes: Episodes) -> torch.Tensor:
    """Per-episode query accuracy ``[E]`` of the nearest class centroid (Euclidean) of each episode's support
    features, a query clip voting with its segments (:func:`majority_vote`); ``table`` ``[S, F]``. No learning."""
    e, n, k = episodes.support_segments.shape
    support = table[episodes.support_segments.to(table.device)].float()  # [E, N, K, F]
    centroids = support.mean(2)  # [E, N, F]
    clips = episodes.query_clips.flatten(1)
    segments, valid = pool.query_segments(clips.cpu())
    queries = table[segments.to(table.device)].float().flatten(1, 2)  # [E, m * P, F]
    scores = -torch.cdist(queries, centroids).square().view(e, clips.shape[1], segments.shape[-1], n)
    predicted = majority_vote(scores, valid)
    return (predicted == episodes.query_labels().to(predicted.device)).float().mean(1).cpu()


def sklearn_accuracy(table: torch.Tensor, pool: SegmentPool, episodes: Episodes, kind: str) -> torch.Tensor:
    """Per-episode query accuracy of scikit-learn readouts on frozen features (a reference, one fit per episode).

    Args:
        table: ``[S, F]`` features of every segment.
        pool: the clips and segments.
        episodes: the episodes.
        kind: ``"logistic"`` (LogisticRegression) or ``"ridge"`` (RidgeClassifier), on L2-normalised features.
    """
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    if kind not in ("logistic", "ridge"):
        raise ValueError(f"sklearn readout must be logistic or ridge, got {kind!r}")
    features = F.normalize(table.float(), dim=-1).cpu().numpy()
    support_labels = episodes.support_labels().numpy()
    query_clips = episodes.query_clips.flatten(1)
    segments, valid = pool.query_segments(query_clips)
    accuracy = torch.zeros(len(episodes))
    for e in range(len(episodes)):  # scikit-learn fits one model at a time
        model = LogisticRegression(max_iter=1000) if kind == "logistic" else RidgeClassifier(alpha=1.0)
        model.fit(features[episodes.support_segments[e].flatten().numpy()], support_labels[e])
        scores = torch.from_numpy(model.decision_function(features[segments[e].flatten().numpy()])).float()
        scores = scores.view(*segments[e].shape, -1)
        if scores.shape[-1] == 1:  # binary problems give one column: the score of class 1
            scores = torch.cat([-scores, scores], dim=-1)
        predicted = torch.from_numpy(model.classes_)[majority_vote(scores, valid[e])]
        accuracy[e] = (predicted == episodes.query_labels()[e]).float().mean()
    return accuracy


def run_episodes(
    encoder: EpisodeEncoder, pool: SegmentPool, episodes: Episodes, config: LearnerConfig,
    start: torch.Tensor, device: torch.device | str = "cpu",
) -> EpisodeResults:
    """Learn and score every episode, ``config.episodes_per_batch`` at a time.

    Args:
        encoder: the encoder side.
        pool: the clips and segments the episodes index.
        episodes: the episodes.
        config: the learner's settings.
        start: ``[K]`` initial descriptor (the fixed one when the encoder does not learn it).
        device: where the learning runs.
    """
    parts = []
    for begin in range(0, len(episodes), config.episodes_per_batch):
        chunk = slice(begin, begin + config.episodes_per_batch)
        support = episodes.support_segments[chunk]
        num = support.shape[0]
        labels = episodes.support_labels()[chunk].to(device)
        prepared = encoder.prepare(support.flatten().to(device))
        initial = start.to(device, torch.float32).expand(num, -1).clone()
        head, steps, loss = fit_episodes(encoder, prepared, labels, episodes.ways, initial, config)
        final = head.descriptors
        if config.quantize_bits is not None and encoder.learns_invariance:
            final = quantize(final, config.quantize_bits)
        query = episodes.query_clips[chunk].flatten(1)
        predicted = predict_clips(encoder, pool, query, head, final)
        accuracy = (predicted == episodes.query_labels()[chunk].to(device)).float().mean(1)
        parts.append(EpisodeResults(accuracy.cpu(), final.cpu(), steps.cpu(), loss.cpu()))
    return EpisodeResults.concat(parts)


def with_overrides(config: LearnerConfig, **changes: float) -> LearnerConfig:
    """A copy of ``config`` with some fields changed (a point of a hyper-parameter sweep)."""
    return replace(config, **changes)
