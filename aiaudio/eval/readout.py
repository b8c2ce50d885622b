"""Many-shot linear readout of a frozen encoder, with one learned invariance descriptor for the whole task.

The downstream recipe: freeze the encoder, then learn a linear head on L2-normalised features and, for an amortised
encoder, one continuous descriptor ``i in [0, 1]^K`` (init 0.5) jointly by mini-batch Adam; ``i`` is projected back
into ``[0, 1]`` after every step. A validation split carved (seeded) from the training clips drives early stopping
(the best epoch's head and descriptor are restored) and an lr x weight-decay sweep; the chosen model is then scored
once on the test clips, which play no part in any choice.

Data are rows (segments) grouped into clips; a clip carries the target. The head is trained on rows labelled with
their clip's target; a clip's output is the mean of its rows' outputs (logits or predictions), and losses and scores
are computed per clip. Tasks:

* ``"classification"``: cross-entropy; score = accuracy.
* ``"regression"``: mean squared error on targets standardised with the training clips' mean and std; score = R^2 in
  the original units (:func:`r2_score`, scikit-learn's definition, averaged uniformly over outputs).

The encoder side is an :class:`~aiaudio.eval.learner.EpisodeEncoder`: :class:`~aiaudio.eval.learner.AmortisedFeatures`
learns ``i``; :class:`~aiaudio.eval.learner.FrozenFeatures` serves features computed once (a plain encoder, or an
amortised one at a fixed descriptor), and then ``i`` stays where it starts (or is None).

Weight decay is the coupled L2 penalty ``0.5 * weight_decay * |W|^2`` added to the mean loss (the bias is not
decayed): for classification this is scikit-learn's ``LogisticRegression(C=1 / (weight_decay * n_train))``.

Example:
    >>> encoder = AmortisedFeatures(model, lambda rows: inputs[rows])
    >>> result = linear_readout(encoder, data, train_clips, test_clips, ReadoutLearnerConfig(), SweepConfig(),
    ...                         start=torch.full((7,), 0.5))
    >>> result.test_score, result.descriptor
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from aiaudio.eval.learner import EpisodeEncoder
from aiaudio.eval.sweep import SweepConfig
from aiaudio.seeding import generator_for

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("classification", "regression")
MONITORS: tuple[str, ...] = ("loss", "score")
NORMALIZATIONS: tuple[str, ...] = ("l2", "batchnorm", "none")
_BATCHNORM_MOMENTUM = 0.1
_BATCHNORM_EPS = 1e-5
_SHUFFLE_STREAM = 0x5EAD  # seeding stream of the mini-batch order
_SPLIT_STREAM = 0x5B17  # seeding stream of held-out splits


@dataclass
class ReadoutLearnerConfig:
    """How one readout (head and, when learned, descriptor) is trained.

    Attributes:
        epochs: most passes over the training rows.
        batch_size: training rows per Adam step.
        lr: Adam learning rate of the head.
        weight_decay: L2 penalty on the head weights (see the module docstring).
        invariance_lr: Adam learning rate of the descriptor (when it is learned).
        init: initial value of every descriptor entry (the paper: 0.5).
        patience: stop after this many epochs without a validation improvement.
        min_delta: an epoch improves when it beats the best by more than this.
        monitor: ``"loss"`` (validation loss, lower is better) or ``"score"`` (validation score, higher is better,
            ties broken by the lower loss) decides the best epoch.
        normalize: what the head sees: ``"l2"`` (L2-normalised features), ``"batchnorm"`` (features standardised
            by a BatchNorm without affine parameters: batch statistics while training, their running averages when
            evaluating, as in MAE's linear probe) or ``"none"`` (raw features).
        eval_batch_size: rows per forward pass when evaluating.
        seed: seed of the mini-batch order.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.0
    invariance_lr: float = 1e-2
    init: float = 0.5
    patience: int = 10
    min_delta: float = 0.0
    monitor: str = "loss"
    normalize: str = "l2"
    eval_batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.eval_batch_size < 1:
            raise ValueError("learner: epochs, batch_size, patience and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.invariance_lr < 0 or self.weight_decay < 0 or self.min_delta < 0:
            raise ValueError("learner: lr must be positive; invariance_lr, weight_decay and min_delta >= 0")
        if not 0.0 <= self.init <= 1.0:
            raise ValueError(f"learner.init must lie in [0, 1], got {self.init}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"learner.normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"learner.monitor must be one of {list(MONITORS)}, got {self.monitor!r}")


@dataclass
class ReadoutData:
    """Rows grouped into clips, and the clips' targets.

    Attributes:
        segment_clip: ``[S]`` int64, the clip of every row (the encoder's ``prepare`` takes row indices).
        targets: ``[C]`` int64 class indices (classification), or ``[C]`` / ``[C, D]`` floats (regression).
        task: ``"classification"`` or ``"regression"``.
        num_classes: number of classes (classification; defaults to ``targets.max() + 1``).
    """

    segment_clip: torch.Tensor
    targets: torch.Tensor
    task: str
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        self.segment_clip = torch.as_tensor(self.segment_clip, dtype=torch.int64).cpu()
        num_clips = self.targets.shape[0]
        if self.segment_clip.dim() != 1 or (len(self.segment_clip) and int(self.segment_clip.max()) >= num_clips):
            raise ValueError(f"segment_clip must be [S] clip indices below the {num_clips} targets")
        if self.task == "classification":
            self.targets = torch.as_tensor(self.targets, dtype=torch.int64).cpu()
            if self.targets.dim() != 1 or bool((self.targets < 0).any()):
                raise ValueError("classification targets must be [C] non-negative class indices")
            if self.num_classes is None:
                self.num_classes = int(self.targets.max()) + 1 if num_clips else 0
        else:
            self.targets = torch.as_tensor(self.targets, dtype=torch.float32).cpu()
            if self.targets.dim() not in (1, 2) or not bool(torch.isfinite(self.targets).all()):
                raise ValueError("regression targets must be finite [C] or [C, D] numbers")

    @property
    def num_clips(self) -> int:
        return self.targets.shape[0]

    @property
    def num_outputs(self) -> int:
        """Head outputs: classes, or target dimensions."""
        if self.task == "classification":
            return int(self.num_classes or 0)
        return 1 if self.targets.dim() == 1 else self.targets.shape[1]

    def rows_of(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``clips`` and, for every row, the position of its clip in ``clips``."""
        position = torch.full((self.num_clips,), -1, dtype=torch.int64)
        position[clips] = torch.arange(len(clips))
        rows = torch.nonzero(position[self.segment_clip] >= 0).flatten()
        return rows, position[self.segment_clip[rows]]


@dataclass
class Evaluation:
    """Per-clip outcome on a set of clips: loss, score, predictions (class index or values) and targets."""

    loss: float
    score: float
    predictions: torch.Tensor
    targets: torch.Tensor


@dataclass
class LinearReadout:
    """A linear head over (normalised) features at one descriptor; its outputs are logits or standardised targets.

    Attributes:
        weight: ``[O, F]`` head weights.
        bias: ``[O]`` head bias.
        descriptor: ``[K]`` descriptor the features are computed at (learned or fixed), or None.
        normalize: ``"l2"``, ``"batchnorm"`` or ``"none"`` (see :class:`ReadoutLearnerConfig`).
        feature_mean: ``[F]`` BatchNorm running mean (``"batchnorm"`` only).
        feature_var: ``[F]`` BatchNorm running variance (``"batchnorm"`` only).
        target_mean: ``[O]`` regression target mean of the training clips (zeros for classification).
        target_std: ``[O]`` regression target std of the training clips (ones for classification).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    descriptor: torch.Tensor | None
    normalize: str
    feature_mean: torch.Tensor | None
    feature_var: torch.Tensor | None
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def features(self, encoder: EpisodeEncoder, rows: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Normalised features ``[R, F]`` of ``rows``; ``training`` uses (and updates) BatchNorm batch statistics."""
        prepared = encoder.prepare(rows)
        descriptor = None if self.descriptor is None else self.descriptor.unsqueeze(0)
        features = encoder.features(prepared, descriptor).float()
        if self.normalize == "l2":
            return F.normalize(features, dim=-1)
        if self.normalize == "batchnorm":
            return F.batch_norm(
                features, self.feature_mean, self.feature_var, training=training, momentum=_BATCHNORM_MOMENTUM,
                eps=_BATCHNORM_EPS,
            )
        return features

    def outputs(self, encoder: EpisodeEncoder, rows: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Head outputs ``[R, O]`` of ``rows``."""
        return self.features(encoder, rows, training) @ self.weight.T + self.bias

    def detached(self) -> LinearReadout:
        """A copy holding no autograd graph."""
        def copy_of(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.detach().clone()

        return LinearReadout(
            copy_of(self.weight), copy_of(self.bias), copy_of(self.descriptor), self.normalize,
            copy_of(self.feature_mean), copy_of(self.feature_var), self.target_mean, self.target_std,
        )


@dataclass
class FitResult:
    """A trained readout at its best validation epoch, and its training record.

    Attributes:
        readout: the head (and descriptor) restored from the best epoch.
        best_epoch: the restored epoch (1-based).
        epochs: epochs run.
        val: the validation evaluation at the best epoch.
        history: per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_score`` (and ``descriptor`` when learned).
        lr: the head learning rate used.
        weight_decay: the weight decay used.
        invariance_lr: the descriptor learning rate used; None when the descriptor is not learned.
    """

    readout: LinearReadout
    best_epoch: int
    epochs: int
    val: Evaluation
    history: list[dict[str, Any]]
    lr: float
    weight_decay: float
    invariance_lr: float | None = None

    @property
    def descriptor(self) -> torch.Tensor | None:
        return self.readout.descriptor


@dataclass
class SweepResult:
    """The chosen fit and every trial's ``lr``, ``weight_decay`` (``invariance_lr`` when the descriptor is learned),
    ``val_score``, ``val_loss``, ``best_epoch`` and ``epochs``."""

    best: FitResult
    trials: list[dict[str, Any]]


@dataclass
class ReadoutResult:
    """A readout end to end: the chosen fit, its test evaluation, the sweep and the clip splits."""

    fit: FitResult
    test: Evaluation
    trials: list[dict[str, Any]]
    train_clips: torch.Tensor
    val_clips: torch.Tensor
    test_clips: torch.Tensor

    @property
    def test_score(self) -> float:
        return self.test.score

    @property
    def descriptor(self) -> torch.Tensor | None:
        return self.fit.descriptor


# --------------------------------------------------------------------------------------------------------------
# Metrics and splits
# --------------------------------------------------------------------------------------------------------------


def r2_score(targets: torch.Tensor, predictions: torch.Tensor) -> float:
    """Coefficient of determination, as ``sklearn.metrics.r2_score`` (uniform average over outputs).

    Per output ``1 - SS_res / SS_tot`` with ``SS_tot`` around the targets' mean; a constant target gives 1 when
    predicted exactly and 0 otherwise. Fewer than two samples give NaN.
    """
    y = targets.double().reshape(targets.shape[0], -1)
    p = predictions.double().reshape(predictions.shape[0], -1)
    if y.shape != p.shape:
        raise ValueError(f"targets {list(targets.shape)} and predictions {list(predictions.shape)} differ in shape")
    if y.shape[0] < 2:
        return math.nan
    residual = (y - p).pow(2).sum(0)
    total = (y - y.mean(0)).pow(2).sum(0)
    constant = torch.where(residual == 0, 1.0, 0.0).to(y)
    per_output = torch.where(total > 0, 1 - residual / total.clamp_min(1e-300), constant)
    return float(per_output.mean())


def split_off(
    clips: torch.Tensor, fraction: float, seed: int, strata: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out a seeded ``fraction`` of ``clips``, stratified by ``strata`` (e.g. class indices) when given.

    Each stratum of n clips gives ``round(fraction * n)`` clips, at most n - 1 (a stratum of one clip stays whole);
    without strata, between 1 and ``len(clips) - 1`` clips are held out.

    Args:
        clips: ``[C]`` clip indices to split.
        fraction: share to hold out, in (0, 1).
        seed: the split's seed (the same seed and clips give the same split).
        strata: ``[C]`` non-negative group of every clip in ``clips``, or None.

    Returns:
        ``(kept, held_out)``, each sorted, disjoint, together ``clips``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction must lie strictly between 0 and 1, got {fraction}")
    clips = torch.as_tensor(clips, dtype=torch.int64).cpu()
    count = len(clips)
    if count < 2:
        raise ValueError(f"cannot hold out a fraction of {count} clip(s): need at least 2")
    keys = torch.rand(count, generator=generator_for(seed, _SPLIT_STREAM))
    if strata is None:
        take = min(max(round(fraction * count), 1), count - 1)
        held = torch.zeros(count, dtype=torch.bool)
        held[torch.argsort(keys)[:take]] = True
    else:
        strata = torch.as_tensor(strata, dtype=torch.int64).cpu()
        if strata.shape != clips.shape:
            raise ValueError(f"strata {list(strata.shape)} must match clips {list(clips.shape)}")
        order = torch.argsort(keys)
        order = order[torch.argsort(strata[order], stable=True)]  # by stratum, random within a stratum
        sizes = torch.bincount(strata)
        first = torch.cumsum(sizes, 0) - sizes
        sorted_strata = strata[order]
        rank = torch.arange(count) - first[sorted_strata]
        quota = torch.minimum(torch.round(fraction * sizes.double()).long(), (sizes - 1).clamp_min(0))
        held = torch.zeros(count, dtype=torch.bool)
        held[order] = rank < quota[sorted_strata]
        if not bool(held.any()):
            raise ValueError(f"holding out {fraction:g} of {count} clips leaves nothing held out: too few per class")
    return torch.sort(clips[~held]).values, torch.sort(clips[held]).values


def validation_split(
    data: ReadoutData, train_clips: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a seeded validation split from ``train_clips`` (stratified by class for classification)."""
    train_clips = torch.as_tensor(train_clips, dtype=torch.int64).cpu()
    strata = data.targets[train_clips] if data.task == "classification" else None
    return split_off(train_clips, fraction, seed, strata)


# --------------------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------------------


def row_training_targets(
    data: ReadoutData, clips: torch.Tensor, row_clip: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each training row's target (class index; or regression targets standardised with the training clips' mean
    and std), and that mean and std (zeros and ones for classification)."""
    outputs = data.num_outputs
    if data.task == "classification":
        zeros, ones = torch.zeros(outputs, device=device), torch.ones(outputs, device=device)
        return data.targets[clips][row_clip].to(device), zeros, ones
    clip_targets = data.targets[clips].view(len(clips), -1).to(device)
    mean, std = clip_targets.mean(0), clip_targets.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((clip_targets - mean) / std)[row_clip.to(device)], mean, std


def _clip_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-item loss: cross-entropy (classification) or squared error summed over outputs (regression)."""
    if task == "classification":
        return F.cross_entropy(outputs, targets, reduction="none")
    return (outputs - targets).pow(2).sum(-1)


@torch.no_grad()
def evaluate_readout(
    encoder: EpisodeEncoder, data: ReadoutData, clips: torch.Tensor, readout: LinearReadout, batch_size: int = 512
) -> Evaluation:
    """Loss and score of a readout on ``clips`` (each clip's output: the mean of its rows' outputs).

    The loss is in standardised target units for regression; the score is accuracy or R^2 (original units).
    """
    clips = torch.as_tensor(clips, dtype=torch.int64).cpu()
    if len(clips) == 0:
        raise ValueError("cannot evaluate a readout on an empty set of clips")
    device = readout.weight.device
    rows, row_clip = data.rows_of(clips)
    if len(rows) == 0:
        raise ValueError("the clips to evaluate have no rows")
    sums = torch.zeros(len(clips), readout.weight.shape[0], device=device)
    for start in range(0, len(rows), batch_size):
        outputs = readout.outputs(encoder, rows[start : start + batch_size].to(device))
        sums.index_add_(0, row_clip[start : start + batch_size].to(device), outputs)
    counts = torch.bincount(row_clip, minlength=len(clips)).to(device)
    outputs = sums / counts.clamp_min(1).unsqueeze(1)
    targets = data.targets[clips].to(device)
    if data.task == "classification":
        loss = float(_clip_loss("classification", outputs, targets).mean())
        predictions = outputs.argmax(-1)
        score = float((predictions == targets).float().mean())
    else:
        standardised = (targets.view(len(clips), -1) - readout.target_mean) / readout.target_std
        loss = float(_clip_loss("regression", outputs, standardised).mean())
        predictions = (outputs * readout.target_std + readout.target_mean).view(targets.shape)
        score = r2_score(targets, predictions)
    return Evaluation(loss, score, predictions.cpu(), targets.cpu())


def _better(candidate: Evaluation, best: Evaluation | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    if monitor == "loss":
        return candidate.loss < best.loss - min_delta
    if candidate.score > best.score + min_delta:
        return True
    return candidate.score >= best.score - min_delta and candidate.loss < best.loss - min_delta


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``order`` cut into mini-batches; a last batch of one row joins the previous one (BatchNorm needs two)."""
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def fit_readout(
    encoder: EpisodeEncoder,
    data: ReadoutData,
    train_clips: torch.Tensor,
    val_clips: torch.Tensor,
    config: ReadoutLearnerConfig,
    start: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Train a head (and, when ``encoder.learns_invariance``, the descriptor) with early stopping on validation.

    Args:
        encoder: the encoder side; ``prepare`` takes row indices on ``device``.
        data: rows, clips and targets.
        train_clips: clips the head is trained on.
        val_clips: clips that decide the best epoch (disjoint from ``train_clips``).
        config: training settings.
        start: ``[K]`` initial (learned) or fixed descriptor; None for an encoder without one. Required when the
            descriptor is learned (usually ``torch.full((K,), config.init)``).
        device: where training runs.

    Returns:
        The fit at its best validation epoch (head, descriptor and BatchNorm statistics restored).
    """
    device = torch.device(device)
    train_clips = torch.as_tensor(train_clips, dtype=torch.int64).cpu()
    val_clips = torch.as_tensor(val_clips, dtype=torch.int64).cpu()
    if len(train_clips) == 0 or len(val_clips) == 0:
        raise ValueError("a readout needs non-empty training and validation clips")
    if bool(torch.isin(train_clips, val_clips).any()):
        raise ValueError("training and validation clips overlap")
    learns = bool(encoder.learns_invariance)
    if learns and start is None:
        raise ValueError("an encoder that learns its descriptor needs a start descriptor [K]")
    rows, row_clip = data.rows_of(train_clips)
    if config.normalize == "batchnorm" and len(rows) < 2:
        raise ValueError("normalize=batchnorm needs at least two training rows")
    outputs = data.num_outputs
    row_targets, mean, std = row_training_targets(data, train_clips, row_clip, device)

    descriptor = None if start is None else start.detach().to(device, torch.float32).clone()
    probe = LinearReadout(torch.zeros(0), torch.zeros(0), descriptor, "none", None, None, mean, std)
    with torch.no_grad():
        width = probe.features(encoder, rows[:1].to(device)).shape[1]
    batchnorm = config.normalize == "batchnorm"
    readout = LinearReadout(
        torch.zeros(outputs, width, device=device, requires_grad=True),
        torch.zeros(outputs, device=device, requires_grad=True),
        descriptor, config.normalize,
        torch.zeros(width, device=device) if batchnorm else None,
        torch.ones(width, device=device) if batchnorm else None,
        mean, std,
    )
    groups: list[dict[str, Any]] = [
        {"params": [readout.weight], "weight_decay": config.weight_decay},
        {"params": [readout.bias], "weight_decay": 0.0},
    ]
    if learns and config.invariance_lr > 0:
        descriptor.requires_grad_(True)
        groups.append({"params": [descriptor], "lr": config.invariance_lr, "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    invariance_lr = config.invariance_lr if learns else None  # what the fit reports
    generator = generator_for(config.seed, _SHUFFLE_STREAM)

    best: FitResult | None = None
    history: list[dict[str, Any]] = []
    quiet = 0
    for epoch in range(1, config.epochs + 1):
        total = 0.0
        for chosen in _batches(torch.randperm(len(rows), generator=generator), config.batch_size):
            with torch.enable_grad():
                predicted = readout.outputs(encoder, rows[chosen].to(device), training=True)
                loss = _clip_loss(data.task, predicted, row_targets[chosen.to(device)]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            if descriptor is not None and descriptor.requires_grad:
                with torch.no_grad():
                    descriptor.clamp_(0.0, 1.0)
            total += float(loss.detach()) * len(chosen)
        snapshot = readout.detached()
        val = evaluate_readout(encoder, data, val_clips, snapshot, config.eval_batch_size)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": total / len(rows), "val_loss": val.loss,
                                  "val_score": val.score}
        if learns:
            record["descriptor"] = [round(v, 6) for v in snapshot.descriptor.cpu().tolist()]
        history.append(record)
        if _better(val, None if best is None else best.val, config.monitor, config.min_delta):
            best = FitResult(snapshot, epoch, 0, val, [], config.lr, config.weight_decay, invariance_lr)
            quiet = 0
        else:
            quiet += 1
            if quiet >= config.patience:
                break
    assert best is not None
    best.epochs = len(history)
    best.history = history
    return best


def sweep_readout(
    encoder: EpisodeEncoder,
    data: ReadoutData,
    train_clips: torch.Tensor,
    val_clips: torch.Tensor,
    config: ReadoutLearnerConfig,
    sweep: SweepConfig,
    start: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> SweepResult:
    """Fit one readout per ``(lr, weight_decay[, invariance_lr])`` of the grid; keep the best validation score (ties:
    lower validation loss, then the earlier grid point). Only training and validation clips are seen."""
    learns = bool(encoder.learns_invariance)
    best: FitResult | None = None
    trials: list[dict[str, Any]] = []
    for setting in sweep.settings(learns):
        trial_config = replace(config, **setting)
        fit = fit_readout(encoder, data, train_clips, val_clips, trial_config, start, device)
        trial: dict[str, Any] = {"lr": trial_config.lr, "weight_decay": trial_config.weight_decay}
        if learns:
            trial["invariance_lr"] = trial_config.invariance_lr
        trials.append({**trial, "val_score": fit.val.score, "val_loss": fit.val.loss,
                       "best_epoch": fit.best_epoch, "epochs": fit.epochs})
        log.info("readout %s: validation score %.4f (loss %.4f) at epoch %d",
                 ", ".join(f"{key} {value:g}" for key, value in trial.items()), fit.val.score, fit.val.loss,
                 fit.best_epoch)
        if best is None or _sweep_key(fit) > _sweep_key(best):
            best = fit
    assert best is not None
    return SweepResult(best, trials)


def _sweep_key(fit: FitResult) -> tuple[float, float]:
    score = fit.val.score if not math.isnan(fit.val.score) else -math.inf
    return score, -fit.val.loss


def linear_readout(
    encoder: EpisodeEncoder,
    data: ReadoutData,
    train_clips: torch.Tensor,
    test_clips: torch.Tensor,
    config: ReadoutLearnerConfig,
    sweep: SweepConfig,
    start: torch.Tensor | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ReadoutResult:
    """The downstream recipe: carve validation from ``train_clips``, sweep, and score the chosen fit on the test clips.

    Args:
        encoder: the encoder side (learns the descriptor or not).
        data: rows, clips and targets.
        train_clips: training clips (validation is carved from them).
        test_clips: test clips, used once at the end.
        config: training settings (its lr, weight_decay and, when swept, invariance_lr are replaced by the sweep's).
        sweep: the lr x weight-decay grid.
        start: ``[K]`` start (or fixed) descriptor; None for a plain encoder.
        val_fraction: share of the training clips held out for validation.
        seed: seed of the validation split.
        device: where training runs.
    """
    train_clips = torch.as_tensor(train_clips, dtype=torch.int64).cpu()
    test_clips = torch.as_tensor(test_clips, dtype=torch.int64).cpu()
    if bool(torch.isin(train_clips, test_clips).any()):
        raise ValueError("training and test clips overlap")
    fit_clips, val_clips = validation_split(data, train_clips, val_fraction, seed)
    result = sweep_readout(encoder, data, fit_clips, val_clips, config, sweep, start, device)
    test = evaluate_readout(encoder, data, test_clips, result.best.readout, config.eval_batch_size)
    return ReadoutResult(result.best, test, result.trials, fit_clips, val_clips, test_clips)


def result_summary(result: ReadoutResult) -> dict[str, Any]:
    """A JSON-ready summary of a readout (scores, chosen hyper-parameters, descriptor, sweep, split sizes)."""
    fit = result.fit
    return {
        "test_score": result.test.score,
        "test_loss": result.test.loss,
        "val_score": fit.val.score,
        "val_loss": fit.val.loss,
        "lr": fit.lr,
        "weight_decay": fit.weight_decay,
        "invariance_lr": fit.invariance_lr,
        "best_epoch": fit.best_epoch,
        "epochs": fit.epochs,
        "descriptor": None if fit.descriptor is None else fit.descriptor.cpu().tolist(),
        "normalize": fit.readout.normalize,
        "trials": copy.deepcopy(result.trials),
        "clips": {"train": len(result.train_clips), "val": len(result.val_clips), "test": len(result.test_clips)},
    }
