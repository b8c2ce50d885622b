import math

import pytest
import torch
from torch import nn

from aiaudio.config import ConfigError, apply_overrides, from_dict, to_dict
from aiaudio.engine.checkpoint import latest_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from aiaudio.engine.sampling import StepBatchSampler
from aiaudio.engine.optim import LARS, build_optimizer, lr_multiplier, parameter_groups, warmup_cosine
from aiaudio.engine.trainer import TrainerConfig
from aiaudio.nn import HyperConv2d, InvarianceEmbedding, hyper_resnet18, plain_resnet18


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


def test_step_and_constant_schedules_after_warm_up():
    assert [lr_multiplier("constant", s, 10, 2) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert [lr_multiplier("step", s, 10, 0, milestones=[3, 6], gamma=0.5) for s in (0, 2, 3, 5, 6, 9)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lr_multiplier("warmup_cosine", 5, 10, 0) == pytest.approx(warmup_cosine(5, 10, 0))
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier("linear", 0, 10)


def test_lars_step_matches_the_hand_computed_update():
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    bias = nn.Parameter(torch.tensor([1.0]))
    groups = [{"params": [weight], "weight_decay": 0.1, "lars_adapt": True},
              {"params": [bias], "weight_decay": 0.0, "lars_adapt": False}]
    optimizer = LARS(groups, lr=0.5, momentum=0.9, trust_coefficient=0.01)
    for step in range(2):
        weight.grad, bias.grad = torch.tensor([0.3, -0.4]), torch.tensor([2.0])
        optimizer.step()
    # by hand: g' = g + 0.1 w, trust = 0.01 |w| / |g'|, v = 0.9 v + trust g', w -= 0.5 v; the bias is plain SGD
    w, v, vb, b = torch.tensor([3.0, 4.0]), torch.zeros(2), torch.zeros(1), torch.tensor([1.0])
    for step in range(2):
        g = torch.tensor([0.3, -0.4]) + 0.1 * w
        v = 0.9 * v + 0.01 * w.norm() / g.norm() * g if step else 0.01 * w.norm() / g.norm() * g
        w = w - 0.5 * v
        vb = 0.9 * vb + 2.0 if step else torch.tensor([2.0])
        b = b - 0.5 * vb
    torch.testing.assert_close(weight.detach(), w)
    torch.testing.assert_close(bias.detach(), b)


def test_optimizers_by_name_keep_the_groups_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for name, kind in (("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lars", LARS)):
        optimizer = build_optimizer(name, parameter_groups(model, 0.05), lr=0.1, nesterov=name == "sgd")
        assert isinstance(optimizer, kind)
        assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adagrad", parameter_groups(model, 0.0), lr=0.1)


@pytest.mark.parametrize("key,value,message", [
    ("keep_checkpoints", 0, "keep_checkpoints"), ("keep_checkpoints", -1, "keep_checkpoints"),
    ("batch_size", 1, "batch_size"), ("lr", 0, "trainer.lr"), ("lr", -1, "trainer.lr"),
    ("weight_decay", -1, "weight_decay"), ("min_lr_ratio", 50, "min_lr_ratio"), ("warmup_steps", -5, "warmup_steps"),
    ("beta1", 1.5, "beta1"), ("optimizer", "adam", "optimizer"), ("schedule", "linear", "schedule"),
    ("momentum", 1.0, "momentum"), ("grad_clip", -1, "grad_clip"), ("gamma", 0, "gamma"),
    ("hyper_lr_scale", 0, "hyper_lr_scale"), ("hyper_weight_decay", -0.1, "hyper_weight_decay"),
])
def test_trainer_config_refuses_bad_values_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainerConfig, {key: value}, "trainer")


def test_descriptor_dependent_parameters_get_their_own_rate_and_decay():
    model = hyper_resnet18(inv_dim=3, width=0.125)
    default = parameter_groups(model, 0.1)
    assert len(default) == 2  # no separate groups unless asked: optimiser states of earlier runs still load
    groups = parameter_groups(model, 0.1, hyper_lr_scale=0.1, hyper_weight_decay=0.5)
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    dependent = {id(p) for m in model.modules() if isinstance(m, HyperConv2d)
                 for p in (m.embed_to_hidden.weight, m.embed_to_hidden.bias, m.hidden_to_kernel.weight)}
    dependent |= {id(m.weight) for m in model.modules() if isinstance(m, InvarianceEmbedding)}
    base_kernels = {id(m.hidden_to_kernel.bias) for m in model.modules() if isinstance(m, HyperConv2d)}
    assert ids(groups[2]) | ids(groups[3]) == dependent == {id(p) for p in model.hypernetwork_parameters()} - base_kernels
    assert base_kernels <= ids(groups[0])
    assert groups[2]["weight_decay"] == 0.5 and groups[3]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in model.parameters())
    optimizer = build_optimizer("adamw", groups, lr=0.2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.2, 0.02, 0.02])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    del scheduler
    with pytest.raises(ValueError, match="hyper_lr_scale"):
        parameter_groups(model, 0.1, hyper_lr_scale=0.0)
    # a plain encoder has no descriptor-dependent parameters: the setting leaves its groups as they are
    plain = plain_resnet18(width=0.125)
    assert [ids(g) for g in parameter_groups(plain, 0.1, hyper_lr_scale=0.1)] == [
        ids(g) for g in parameter_groups(plain, 0.1)]
