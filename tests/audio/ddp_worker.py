"""Run under torchrun by test_distributed.py: a 2-rank gloo pretraining run plus a gathered-loss check.

Each rank writes what it saw (descriptors per step, final weights, the distributed NT-Xent and its gradient) to
OUT/rank<r>.pt for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from aiaudio.config import apply_overrides, load_yaml
from aiaudio.engine.checkpoint import unwrap
from aiaudio.engine.distributed import init_distributed, cleanup
from aiaudio.engine.trainer import Trainer
from aiaudio.methods.losses import nt_xent
from aiaudio.audio.cache import CropDataset
from aiaudio.audio.data import open_cache
from aiaudio.pretrain import build_pretrainer, parse_config


class RecordingViews(nn.Module):
    """Delegates to the real view maker and records the descriptor of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, batch, descriptor, generator):
        self.seen.append(descriptor.detach().cpu().clone())
        return self.inner(batch, descriptor, generator)


def main(out: Path, config_path: str, overrides: list[str]) -> None:
    config = parse_config(apply_overrides(load_yaml(config_path), overrides))
    info = init_distributed("cpu")
    torch.manual_seed(0)
    dataset = CropDataset(open_cache(config.data), int(config.data.crop_seconds * config.data.sample_rate))
    model, _ = build_pretrainer(config)
    recorder = RecordingViews(model.views)
    model.views = recorder
    trainer = Trainer(model, dataset, config.trainer, Path(config.run_dir), {}, info)
    trainer.fit()

    # Gathered NT-Xent: each rank holds half of a fixed global batch.
    g = torch.Generator().manual_seed(123)
    z1_all, z2_all = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    half = slice(4 * info.rank, 4 * info.rank + 4)
    z1 = z1_all[half].clone().requires_grad_(True)
    z2 = z2_all[half].clone().requires_grad_(True)
    loss = nt_xent(z1, z2, 0.2)
    loss.backward()
    torch.save(
        {
            "descriptors": torch.stack(recorder.seen),
            "parameters": {k: v.detach().clone() for k, v in unwrap(model).named_parameters()},
            "frontend_stats": unwrap(model).views.inner.augment.frontend.std.clone(),
            "loss": loss.detach(),
            "grad_z1": z1.grad.clone(),
        },
        out / f"rank{info.rank}.pt",
    )
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
