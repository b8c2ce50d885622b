"""The shared, modality-agnostic trainer.

It trains any :class:`TrainingModule` (``forward(batch, step)`` returning a dict with a scalar ``"loss"``, and a hook
after each optimiser step; see :class:`~aiaudio.methods.pretrainer.ContrastivePretrainer`) on any dataset keyed by
``(index, item_seed)``. It owns: device placement, bf16 autocast and channels_last on CUDA, optional
``torch.compile``, DDP under torchrun, the optimiser (AdamW, SGD or LARS) and schedule chosen by name, atomic
checkpoints (with the module's buffers: queues, momentum encoders) and exact resume, JSONL metrics, a progress bar on
rank 0, and a stop with a clear message when the loss stops being finite.
"""

from __future__ import annotations

import logging
import math
import pickle
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import (
    intact_checkpoints,
    latest_checkpoint,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from aiaudio.engine.distributed import DistInfo
from aiaudio.engine.files import ensure_writable_folder
from aiaudio.engine.metrics import MetricsLog
from aiaudio.engine.sampling import StepBatchSampler
from aiaudio.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_multiplier, parameter_groups

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Optimisation and bookkeeping options shared by every pretraining run.

    ``batch_size`` is the global batch per step, split evenly over ranks.
    ``optimizer``: "adamw" (``beta1``, ``beta2``), "sgd" or "lars" (``momentum``, ``nesterov``; LARS also
    ``lars_trust``); ``weight_decay`` applies to weights, never to normalisation parameters or plain biases.
    ``hyper_lr_scale`` and ``hyper_weight_decay``: the learning rate (a multiple of ``lr``) and weight decay (null: the
    same as the other weights) of an amortised encoder's descriptor-dependent parameters (invariance embeddings,
    hypernetwork layers, prompt MLPs; not the base kernels).
    ``schedule``: "warmup_cosine" (down to ``min_lr_ratio``), "step" (times ``gamma`` at each of ``milestones``) or
    "constant", each after ``warmup_steps`` of linear warm-up.
    ``precision``: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16" or "fp32".
    ``channels_last``: "auto" (on CUDA), true or false.
    ``dist_timeout``: seconds a collective waits for every rank before the run fails (a hung rank then stops the
    others instead of blocking them forever).
    """

    steps: int = 1000
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    hyper_lr_scale: float = 1.0
    hyper_weight_decay: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.9
    nesterov: bool = False
    lars_trust: float = 0.001
    schedule: str = "warmup_cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    grad_clip: float = 0.0
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    precision: str = "auto"
    channels_last: Any = "auto"
    compile: bool = False
    num_workers: int = 4
    seed: int = 0
    device: str = "auto"
    dist_timeout: float = 1800.0
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"trainer.steps must be positive, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(
                f"trainer.batch_size must be at least 2 (a contrastive loss needs another example), got {self.batch_size}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"trainer.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"trainer.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"trainer.lr must be a positive number, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.hyper_lr_scale > 0 and math.isfinite(self.hyper_lr_scale)):
            raise ValueError(f"trainer.hyper_lr_scale must be a positive number, got {self.hyper_lr_scale}")
        if self.hyper_weight_decay is not None and not self.hyper_weight_decay >= 0:
            raise ValueError(f"trainer.hyper_weight_decay must be null or >= 0, got {self.hyper_weight_decay}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"trainer.{name} must lie in [0, 1), got {getattr(self, name)}")
        if not self.lars_trust > 0:
            raise ValueError(f"trainer.lars_trust must be positive, got {self.lars_trust}")
        if self.warmup_steps < 0:
            raise ValueError(f"trainer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"trainer.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.gamma <= 1.0 or any(m < 1 for m in self.milestones):
            raise ValueError(f"trainer.gamma must lie in (0, 1] and trainer.milestones be steps >= 1, got "
                             f"{self.gamma}, {self.milestones}")
        if not self.grad_clip >= 0:
            raise ValueError(f"trainer.grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if not self.dist_timeout > 0:
            raise ValueError(f"trainer.dist_timeout must be positive seconds, got {self.dist_timeout}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"trainer.keep_checkpoints must be at least 1 (the newest checkpoint is always kept), got "
                f"{self.keep_checkpoints}"
            )
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.channels_last not in ("auto", True, False):
            raise ValueError(f"trainer.channels_last must be auto, true or false, got {self.channels_last!r}")
        if self.log_every <= 0 or self.ckpt_every <= 0:
            raise ValueError("trainer.log_every and trainer.ckpt_every must be positive")

    def use_bf16(self, device: torch.device) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")

    def use_channels_last(self, device: torch.device) -> bool:
        return self.channels_last is True or (self.channels_last == "auto" and device.type == "cuda")


#: A logged metric below this means the embeddings are constant across the batch: the trainer warns of a collapse.
COLLAPSE_STD = 1e-4


class TrainingModule(nn.Module):
    """What the trainer trains: ``forward(batch, step) -> {"loss": scalar, ...}`` plus the hooks below.

    Every other entry of the returned dict is averaged over the logging window and logged. An ``"embedding_std"``
    entry (the spread of normalised embeddings across the batch) below :data:`COLLAPSE_STD` is reported as a
    representation collapse.
    """

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after the optimiser step of step ``step`` (0-based): momentum updates, queues."""

    def step_label(self, step: int) -> str:
        """A short text logged with step ``step`` (the descriptor's name, say); empty by default."""
        return ""

    def compile_target(self) -> nn.Module:
        """The submodule ``trainer.compile`` hands to ``torch.compile`` (the whole module by default)."""
        return self

    def batch_groups(self) -> int:
        """Into how many equal groups of at least 2 examples each step splits a rank's batch (1 by default)."""
        return 1

    def unused_parameters_possible(self) -> bool:
        """Whether a step may leave some parameters without gradients (DDP then looks for them each step)."""
        return False


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingStopped(RuntimeError):
    """The run was asked to stop (SIGTERM, as a preempting scheduler sends) and saved a checkpoint first."""


class NonFiniteStateError(NonFiniteLossError):
    """A parameter or buffer (a BatchNorm statistic, a queue) became NaN or infinite; nothing non-finite is saved."""


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """Runs (or resumes) a training run in ``run_dir``.

    Args:
        model: the :class:`TrainingModule`; unwrapped, on the CPU.
        dataset: map-style dataset indexed by ``(index, item_seed)`` tuples.
        config: the trainer options.
        run_dir: where checkpoints, metrics and the resolved config live.
        resolved_config: the full run config, saved with every checkpoint and compared on resume.
        dist_info: this process's rank, world size and device.
        extra_files: text files written into every checkpoint beside the weights (``encoder.json``, say).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainerConfig,
        run_dir: Path,
        resolved_config: dict[str, Any],
        dist_info: DistInfo,
        extra_files: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(model, TrainingModule):
            raise TypeError(f"the trainer trains a TrainingModule, got {type(model).__name__}")
        per_rank = config.batch_size // dist_info.world_size
        if config.batch_size % dist_info.world_size or per_rank < 2:
            raise ConfigError(
                f"trainer.batch_size={config.batch_size} must split into at least 2 examples on each of "
                f"{dist_info.world_size} ranks"
            )
        groups = model.batch_groups()
        if per_rank % groups or per_rank // groups < 2:
            raise ConfigError(
                f"trainer.batch_size={config.batch_size} gives {per_rank} examples per rank, which cannot split into "
                f"{groups} groups of at least 2 (invariance.descriptors_per_step): use a multiple of {2 * groups}"
            )
        self.extra_files = dict(extra_files or {})
        if dist_info.is_main:
            ensure_writable_folder(Path(run_dir) / "checkpoints", "checkpoints")
        self.config = config
        self.run_dir = Path(run_dir)
        self.resolved_config = resolved_config
        self.dist = dist_info
        self.device = dist_info.device
        self.dataset = dataset
        self.model = model.to(self.device)
        if config.use_channels_last(self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = parameter_groups(self.model, config.weight_decay, config.hyper_lr_scale, config.hyper_weight_decay)
        self.optimizer = build_optimizer(
            config.optimizer, groups, config.lr,
            betas=(config.beta1, config.beta2), momentum=config.momentum, nesterov=config.nesterov,
            trust_coefficient=config.lars_trust,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(
                config.schedule, step, config.steps, config.warmup_steps, config.min_lr_ratio, config.milestones,
                config.gamma,
            ),
        )
        self.start_step = self._resume()
        if config.compile:
            self.model.compile_target().compile()
        self.train_model: nn.Module = self.model
        if dist_info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=self.model.unused_parameters_possible()
            )

    def _resume(self) -> int:
        """Load the newest intact checkpoint (a damaged one is passed over with a warning); 0 for a fresh run."""
        if latest_checkpoint(self.run_dir) is None:
            return 0
        for checkpoint in intact_checkpoints(self.run_dir):
            try:
                return self._load(checkpoint)
            except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as error:
                log.warning("checkpoint %s does not load (%s); trying the one before", checkpoint, error)
        raise RuntimeError(f"{self.run_dir} holds checkpoints but none is intact; move them away to start afresh")

    def _load(self, checkpoint: Path) -> int:
        state = load_training_state(checkpoint)
        if state.get("world_size", 1) != self.dist.world_size:
            log.warning(
                "resuming %s with %d ranks; it was saved with %d: the data order from here on differs from an "
                "uninterrupted run",
                checkpoint, self.dist.world_size, state.get("world_size", 1),
            )
        load_weights(self.model, checkpoint / "model.safetensors")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        if self.dist.is_main:
            log.info("resuming from %s (step %d of %d)", checkpoint, step, self.config.steps)
        return step

    def _loader(self) -> DataLoader:
        sampler = StepBatchSampler(
            len(self.dataset),
            self.config.batch_size,
            self.config.steps,
            self.config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start_step=self.start_step,
        )
        workers = self.config.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def _save(self, step: int) -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "world_size": self.dist.world_size,
        }
        return save_checkpoint(
            self.run_dir, step, self.model, self.resolved_config, state, keep=self.config.keep_checkpoints,
            extra_files=self.extra_files,
        )

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``; returns a summary (steps run, last logged loss, checkpoint path)."""
        cfg = self.config
        total = cfg.steps
        summary: dict[str, Any] = {"start_step": self.start_step, "steps": total, "last_loss": None}
        if self.start_step >= total:
            summary["checkpoint"] = str(latest_checkpoint(self.run_dir))
            return summary
        metrics = MetricsLog(self.run_dir, self.start_step, enabled=self.dist.is_main, tensorboard=cfg.tensorboard)
        self._sigterm = False
        handles_signals = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if handles_signals else None
        bf16 = cfg.use_bf16(self.device)
        progress = tqdm(
            total=total, initial=self.start_step, disable=not (self.dist.is_main and cfg.progress),
            desc="pretrain", unit="step", dynamic_ncols=True,
        )
        self.train_model.train()
        window_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        window_extra: dict[str, torch.Tensor] = {}
        window_steps = 0
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        window_start = time.perf_counter()
        step = self.start_step
        try:
            for step, batch in zip(range(self.start_step, total), self._loader()):
                batch = _to_device(batch, self.device)
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = self.train_model(batch, step)
                loss = out["loss"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.model.after_step(step, total)
                detached = loss.detach().double()
                finite = torch.isfinite(detached)
                first_bad = torch.where((first_bad < 0) & ~finite, torch.tensor(step, device=self.device), first_bad)
                window_loss += torch.where(finite, detached, torch.zeros_like(detached))
                for key, value in out.items():
                    if key != "loss":
                        window_extra[key] = window_extra.get(key, 0.0) + value.detach().double()
                window_steps += 1
                done = step + 1
                stopping = self._stop_requested()
                at_log = done % cfg.log_every == 0 or done == total or stopping
                at_ckpt = done % cfg.ckpt_every == 0 or done == total or stopping
                if not (at_log or at_ckpt):
                    continue
                self._raise_if_non_finite(first_bad)
                if at_log:
                    values = self._reduce_window(window_loss, window_extra, window_steps)
                    elapsed = time.perf_counter() - window_start
                    values["lr"] = self.scheduler.get_last_lr()[0]
                    values["steps_per_s"] = window_steps / elapsed
                    values["examples_per_s"] = window_steps * cfg.batch_size / elapsed
                    values["descriptor"] = self.model.step_label(step)
                    metrics.write(done, values)
                    summary["last_loss"] = values["loss"]
                    progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                    self._warn_if_collapsed(values, done)
                    window_loss.zero_()
                    window_extra = {}
                    window_steps = 0
                    window_start = time.perf_counter()
                if at_ckpt:
                    self._raise_if_state_non_finite(done)
                if at_ckpt and self.dist.is_main:
                    summary["checkpoint"] = str(self._save(done))
                if at_ckpt and self.dist.distributed:
                    dist.barrier()
                progress.update(done - progress.n)
                if stopping:
                    raise TrainingStopped(
                        f"stopped by SIGTERM after step {done} of {total}; the checkpoint of step {done} is saved in "
                        f"{self.run_dir}: rerun the same command to resume"
                    )
        finally:
            progress.close()
            metrics.close()
            if handles_signals:
                signal.signal(signal.SIGTERM, previous)
        summary["final_step"] = step + 1
        return summary

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._sigterm = True

    def _stop_requested(self) -> bool:
        """Whether any rank was sent SIGTERM (agreed across ranks, so that all save and stop at the same step)."""
        if not self.dist.distributed:
            return self._sigterm
        flag = torch.tensor([int(self._sigterm)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _raise_if_state_non_finite(self, done: int) -> None:
        """Stop before a checkpoint that would hold a NaN or infinite parameter or buffer (checked on every rank)."""
        tensors = [(name, t) for name, t in self.model.state_dict().items() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]) if tensors else torch.ones(0, dtype=torch.bool)
        bad = (~finite).to(torch.int32)
        if self.dist.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad.any()):
            return
        names = [name for (name, _), flag in zip(tensors, bad.tolist()) if flag]
        last = latest_checkpoint(self.run_dir)
        raise NonFiniteStateError(
            f"after step {done}, {len(names)} parameter(s)/buffer(s) are NaN or infinite ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}); stopped without saving. Last good checkpoint: "
            f"{last if last else 'none (no checkpoint was written yet)'}. The run diverged: try a lower trainer.lr, "
            "a longer trainer.warmup_steps or trainer.grad_clip."
        )

    def _warn_if_collapsed(self, values: dict[str, Any], done: int) -> None:
        spread = values.get("embedding_std")
        if spread is not None and spread < COLLAPSE_STD and self.dist.is_main:
            log.warning(
                "representation collapse at step %d: the embeddings are constant across the batch (spread %.2e, loss "
                "%.4f); the encoder has stopped learning. Try a lower trainer.lr or a longer trainer.warmup_steps.",
                done, spread, values["loss"],
            )

    def _raise_if_non_finite(self, first_bad: torch.Tensor) -> None:
        bad = first_bad.clone()
        if self.dist.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad_step = int(bad.item())
        if bad_step >= 0:
            last = latest_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"the training loss became non-finite at step {bad_step + 1}; stopped without saving. "
                f"Last good checkpoint: {last if last else 'none (no checkpoint was written yet)'}. "
                "Try a lower trainer.lr, a longer trainer.warmup_steps, trainer.grad_clip, or trainer.precision=fp32."
            )

    def _reduce_window(
        self, window_loss: torch.Tensor, window_extra: dict[str, torch.Tensor], steps: int
    ) -> dict[str, Any]:
        names = ["loss", *sorted(window_extra)]
        stacked = torch.stack([window_loss, *[window_extra[k] for k in sorted(window_extra)]])
        if self.dist.distributed:
            dist.all_reduce(stacked)
            stacked /= self.dist.world_size
        return {name: float(v) / max(1, steps) for name, v in zip(names, stacked.tolist())}
