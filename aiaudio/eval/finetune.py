"""Fine-tuning baselines for the many-shot readout: a linear head trained with the whole encoder, or with its last
k blocks, optionally within a time budget (matched to another readout's).

The encoder is copied (the loaded one stays frozen); the blocks not trained stay in eval mode, so their BatchNorm
statistics do not move. A validation split carved from the training items picks the best epoch (head and trained
blocks restored), and the test items are scored once at the end. The head and the evaluation are the linear
readout's (:class:`~aiaudio.eval.readout.LinearReadout`, L2-normalised features).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aiaudio.eval.learner import InputFn
from aiaudio.eval.readout import (
    LinearReadout,
    ReadoutData,
    _batches,
    _better,
    _clip_loss,
    evaluate_readout,
    row_training_targets,
    validation_split,
)
from aiaudio.seeding import generator_for

_FINETUNE_STREAM = 0xF17E


@dataclass
class FinetuneConfig:
    """How a fine-tuning baseline trains: ``epochs`` at most, mini-batches of ``batch_size`` items, Adam with
    ``lr`` for the head and ``encoder_lr`` for the trained blocks, ``weight_decay`` on both, early stopping after
    ``patience`` epochs without a better validation loss; ``seconds``: a wall-time budget (None: no budget)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    encoder_lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int = 5
    seconds: float | None = None
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.patience, self.eval_batch_size) < 1:
            raise ValueError("finetune: epochs, batch_size, patience and eval_batch_size must be >= 1")
        if not (self.lr > 0 and self.encoder_lr > 0 and self.weight_decay >= 0):
            raise ValueError("finetune: lr and encoder_lr must be positive, weight_decay >= 0")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"finetune.seconds must be positive (or null), got {self.seconds}")


def trailing_blocks(encoder: nn.Module, count: int) -> list[nn.Module]:
    """The modules trained when fine-tuning the last ``count`` blocks (0: the whole encoder): a ViT's last blocks
    and its final norm, or a ResNet's last residual blocks (of ``layer1..layer4``, also inside a plain wrapper)."""
    if count == 0:
        return [encoder]
    if isinstance(getattr(encoder, "blocks", None), nn.Sequential):  # timm ViTs
        blocks, tail = list(encoder.blocks), [encoder.norm]
    else:
        body = getattr(encoder, "backbone", encoder)
        stages = [getattr(body, f"layer{n}", None) for n in range(1, 5)]
        if any(stage is None for stage in stages):
            raise ValueError(f"{type(encoder).__name__} has no blocks to fine-tune; fine-tune it whole (blocks 0)")
        blocks, tail = [block for stage in stages for block in stage], []
    if not 1 <= count <= len(blocks):
        raise ValueError(f"{type(encoder).__name__} has {len(blocks)} blocks; cannot fine-tune the last {count}")
    return blocks[-count:] + tail


class _Tuned:
    """The fine-tuned encoder as the readout sees it: model inputs of rows, features at the fixed descriptor."""

    learns_invariance = False

    def __init__(self, encoder: nn.Module, inputs: InputFn) -> None:
        self.encoder, self.inputs = encoder, inputs

    def prepare(self, rows: torch.Tensor) -> torch.Tensor:
        return self.inputs(rows)

    def features(self, prepared: torch.Tensor, descriptors: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(prepared, None if descriptors is None else descriptors[0])


def finetune_readout(
    encoder: nn.Module, inputs: InputFn, data: ReadoutData, train: torch.Tensor, test: torch.Tensor, blocks: int,
    config: FinetuneConfig, descriptor: torch.Tensor | None, val_fraction: float, seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` (its last ``blocks`` blocks, or all of it for 0) with a linear head at a fixed
    ``descriptor``; returns the test and validation scores, the best epoch, the epochs and seconds used."""
    device = torch.device(device)
    started = time.perf_counter()
    tuned = copy.deepcopy(encoder).to(device).eval().requires_grad_(False)
    trained = trailing_blocks(tuned, blocks)
    parameters = [p for module in trained for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    side = _Tuned(tuned, inputs)
    fit, val = validation_split(data, torch.as_tensor(train, dtype=torch.int64).cpu(), val_fraction, seed)
    rows, row_clip = data.rows_of(fit)
    outputs = data.num_outputs
    row_targets, mean, std = row_training_targets(data, fit, row_clip, device)
    fixed = None if descriptor is None else descriptor.to(device, torch.float32)
    with torch.no_grad():
        width = side.features(side.prepare(rows[:1].to(device)), None if fixed is None else fixed[None]).shape[1]
    head = LinearReadout(torch.zeros(outputs, width, device=device, requires_grad=True),
                         torch.zeros(outputs, device=device, requires_grad=True), fixed, "l2", None, None, mean, std)
    optimizer = torch.optim.Adam([
        {"params": [head.weight], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": [head.bias], "lr": config.lr},
        {"params": parameters, "lr": config.encoder_lr, "weight_decay": config.weight_decay},
    ])
    generator = generator_for(config.seed, seed, _FINETUNE_STREAM)
    best: tuple[Any, dict[str, torch.Tensor], LinearReadout, int] | None = None
    epochs, quiet, out_of_time = 0, 0, False
    for epoch in range(1, config.epochs + 1):
        for module in trained:
            module.train()
        for chosen in _batches(torch.randperm(len(rows), generator=generator), config.batch_size):
            if config.seconds is not None and time.perf_counter() - started > config.seconds:
                out_of_time = True
                break
            loss = _clip_loss(data.task, head.outputs(side, rows[chosen].to(device), training=True),
                              row_targets[chosen.to(device)]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        tuned.eval()
        epochs = epoch
        with torch.no_grad():
            score = evaluate_readout(side, data, val, head.detached(), config.eval_batch_size)
        if best is None or _better(score, best[0], "loss", 0.0):
            state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
            best, quiet = (score, state, head.detached(), epoch), 0
        else:
            quiet += 1
        if out_of_time or quiet >= config.patience:
            break
    assert best is not None
    val_score, state, chosen_head, best_epoch = best
    tuned.load_state_dict(state)
    tuned.eval()
    with torch.no_grad():
        test_score = evaluate_readout(side, data, torch.as_tensor(test, dtype=torch.int64).cpu(), chosen_head,
                                      config.eval_batch_size)
    return {
        "test_score": test_score.score, "test_loss": test_score.loss, "val_score": val_score.score,
        "val_loss": val_score.loss, "best_epoch": best_epoch, "epochs": epochs, "blocks": blocks or "all",
        "trained_parameters": sum(p.numel() for p in parameters), "seconds": round(time.perf_counter() - started, 2),
        "out_of_time": out_of_time, "descriptor": None if fixed is None else fixed.cpu().tolist(),
        "lr": config.lr, "encoder_lr": config.encoder_lr, "weight_decay": config.weight_decay,
    }

