import math
import os

import pytest
import torch
from torch import nn

from aiaudio.config import ConfigError, apply_overrides, from_dict, to_dict
from aiaudio.engine.checkpoint import latest_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from aiaudio.engine.sampling import StepBatchSampler
from aiaudio.engine.schedule import warmup_cosine
from aiaudio.engine.trainer import TrainerConfig, parameter_groups


def test_warmup_cosine_closed_form():
    total, warm = 100, 10
    assert warmup_cosine(0, total, warm) == pytest.approx(0.1)
    assert warmup_cosine(9, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warm) == pytest.approx(1.0)
    mid = 10 + 45
    assert warmup_cosine(mid, total, warm) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    for s in range(10, 100):
        expected = 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))
        assert warmup_cosine(s, total, warm) == pytest.approx(expected)


def test_step_sampler_partitions_epochs_and_resumes_exactly():
    sampler = StepBatchSampler(dataset_size=20, global_batch=6, total_steps=9, seed=1)
    batches = list(sampler)
    assert len(batches) == 9 and all(len(b) == 6 for b in batches)
    # 3 steps per epoch (last 2 examples dropped); within an epoch no index repeats.
    for epoch in range(3):
        idx = [i for b in batches[3 * epoch : 3 * epoch + 3] for i, _ in b]
        assert len(set(idx)) == 18
    resumed = list(StepBatchSampler(20, 6, 9, seed=1, start_step=4))
    assert resumed == batches[4:]
    # Two ranks split each global batch into disjoint halves that together equal the one-rank batch.
    r0 = list(StepBatchSampler(20, 6, 9, seed=1, rank=0, world_size=2))
    r1 = list(StepBatchSampler(20, 6, 9, seed=1, rank=1, world_size=2))
    for a, b, whole in zip(r0, r1, batches):
        assert a + b == whole
    # Item seeds differ between epochs even for the same index.
    seeds_of_0 = {s for b in batches for i, s in b if i == batches[0][0][0]}
    assert len(seeds_of_0) >= 2
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(4, 6, 1, seed=0)
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(20, 5, 1, seed=0, world_size=2)


def test_config_overrides_and_strict_sections():
    cfg = apply_overrides({"trainer": {"lr": 0.1}}, ["trainer.lr=0.5", "trainer.steps=20", "data.root=/x"])
    assert cfg == {"trainer": {"lr": 0.5, "steps": 20}, "data": {"root": "/x"}}
    trainer = from_dict(TrainerConfig, cfg["trainer"], "trainer")
    assert trainer.lr == 0.5 and trainer.steps == 20
    assert to_dict(trainer)["steps"] == 20
    with pytest.raises(ConfigError, match=r"trainer\.lrr"):
        from_dict(TrainerConfig, {"lrr": 1.0}, "trainer")
    with pytest.raises(ConfigError, match="integer"):
        from_dict(TrainerConfig, {"steps": "many"}, "trainer")
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainerConfig, {"precision": "fp8"}, "trainer")
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["trainer.lr"])


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, model, {"a": 1}, {"optimizer": {}}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000020", "step_00000030"]
    assert latest_checkpoint(tmp_path).name == "step_00000030"
    assert resolve_checkpoint(tmp_path) == resolve_checkpoint(tmp_path / "checkpoints" / "step_00000030")
    # A crash while writing leaves only a hidden temporary directory: latest still names a complete checkpoint.
    (tmp_path / "checkpoints" / ".tmp-step_00000040-1").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000030"
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    load_weights(other, latest_checkpoint(tmp_path) / "model.safetensors")
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError):
        load_weights(nn.Linear(3, 5), latest_checkpoint(tmp_path) / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nothing")


def test_parameter_groups_exclude_norms_and_plain_biases():
    class Hyper(nn.Linear):
        bias_is_weight = True

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), Hyper(4, 2))
    decay, no_decay = parameter_groups(model, 0.1)
    ids = lambda ps: {id(p) for p in ps["params"]}  # noqa: E731
    assert ids(decay) == {id(model[0].weight), id(model[2].weight), id(model[2].bias)}
    assert ids(no_decay) == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert no_decay["weight_decay"] == 0.0
