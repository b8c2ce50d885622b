"""The trainer on a toy module: non-finite loss stops with a clear error and keeps the last good checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.distributed import DistInfo
from aiaudio.engine.metrics import read_metrics
from aiaudio.engine.trainer import NonFiniteLossError, Trainer, TrainerConfig, TrainingModule


class KeyedNoise(Dataset):
    """Items addressed by (index, seed): a fixed random vector per index."""

    def __init__(self, n: int = 32) -> None:
        self.data = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        return self.data[key[0]]


class Regression(TrainingModule):
    """Fits a linear map; the loss turns to NaN from step ``bad_step`` on."""

    def __init__(self, bad_step: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.bad_step = bad_step

    def forward(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        loss = ((self.linear(batch).squeeze(1) - batch.sum(1)) ** 2).mean()
        if self.bad_step is not None and step >= self.bad_step:
            loss = loss * float("nan")
        return {"loss": loss}


CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def make_config(**kw) -> TrainerConfig:
    base = dict(steps=20, batch_size=8, lr=0.05, warmup_steps=0, log_every=2, ckpt_every=4, num_workers=0,
                progress=False, tensorboard=False, device="cpu")
    return TrainerConfig(**{**base, **kw})


def test_trainer_fits_and_logs(tmp_path):
    trainer = Trainer(Regression(), KeyedNoise(), make_config(steps=60, lr=0.1), tmp_path, {"toy": True}, CPU)
    summary = trainer.fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(2, 61, 2))
    assert records[-1]["loss"] < 0.05 * records[0]["loss"]
    assert summary["final_step"] == 60
    assert latest_checkpoint(tmp_path).name == "step_00000060"
    assert records[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 60)))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(Regression(bad_step=9), KeyedNoise(), make_config(), tmp_path, {}, CPU)
    with pytest.raises(NonFiniteLossError, match="step 10") as error:
        trainer.fit()
    assert "step_00000008" in str(error.value)
    last = latest_checkpoint(tmp_path)
    assert last.name == "step_00000008"
    # The kept checkpoint holds finite weights.
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(last / "model.safetensors")).values())


class PoisonedStatistics(Regression):
    """A finite loss throughout, but a running statistic that turns infinite at ``bad_step`` (as a diverged
    BatchNorm's running_var does while a collapsed contrastive loss stays finite)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.register_buffer("running_var", torch.ones(3))
        self.poison_at = bad_step

    def forward(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if step >= self.poison_at:
            self.running_var.fill_(float("inf"))
        return super().forward(batch, step)


def test_a_non_finite_buffer_stops_the_run_before_any_checkpoint_holds_it(tmp_path):
    from aiaudio.engine.trainer import NonFiniteStateError

    trainer = Trainer(PoisonedStatistics(bad_step=9), KeyedNoise(), make_config(), tmp_path, {}, CPU)
    with pytest.raises(NonFiniteStateError, match="running_var") as error:
        trainer.fit()
    assert "after step 12" in str(error.value) and "step_00000008" in str(error.value)
    assert latest_checkpoint(tmp_path).name == "step_00000008"
    assert isinstance(error.value, NonFiniteLossError)  # the command line stops with the same exit code


class Collapsed(Regression):
    """Reports embeddings that are identical across the batch."""

    def forward(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {**super().forward(batch, step), "embedding_std": torch.tensor(0.0)}


def test_a_collapse_is_reported_with_its_step(tmp_path, caplog):
    trainer = Trainer(Collapsed(), KeyedNoise(), make_config(steps=4), tmp_path, {}, CPU)
    with caplog.at_level("WARNING"):
        trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if "collapse" in r.getMessage()]
    assert warnings and "step 2" in warnings[0]
    caplog.clear()
    Trainer(Regression(), KeyedNoise(), make_config(steps=4), tmp_path / "healthy", {}, CPU).fit()
    assert not [r for r in caplog.records if "collapse" in r.getMessage()]


def test_batches_that_leave_a_rank_fewer_than_two_examples_are_refused(tmp_path):
    from aiaudio.config import ConfigError

    two_ranks = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="at least 2 examples on each of 2 ranks"):
        Trainer(Regression(), KeyedNoise(), make_config(batch_size=2), tmp_path, {}, two_ranks)
    with pytest.raises(TypeError, match="TrainingModule"):
        Trainer(nn.Linear(4, 1), KeyedNoise(), make_config(), tmp_path, {}, CPU)
