"""Prompt-ViT against independent references: timm's ViT, the paper's P averaged MLPs, MoCo-v3's checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import aivision  # noqa: F401  (registers the models)
from aiaudio.engine.optim import parameter_groups
from aiaudio.nn import create_encoder, encoder_kwargs
from aivision.models import InvariancePrompt, PromptViT, load_moco_v3_checkpoint

TINY = "prompt_vit_tiny_patch16_224"


def tiny(inv_dim: int = 2, prompts: int = 4, **kwargs) -> PromptViT:
    args = {"img_size": 32, "prompts": prompts, **kwargs}
    return create_encoder(TINY, encoder_kwargs(TINY, inv_dim, 3, {"width": 0.5}, args))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size,dim", [("tiny", 192), ("small", 384), ("base", 768)])
def test_sizes_and_parameter_counts_are_timm_vit_plus_the_prompt(size, dim):
    with torch.device("meta"):
        vit = timm.create_model(f"vit_{size}_patch16_224", num_classes=0)
        model = timm.create_model(f"prompt_vit_{size}_patch16_224", inv_dim=2, prompts=256)
    k, p = 2, 256
    prompt = k * p * dim + p * dim + p * dim * dim + dim  # the mean of P MLPs, their P output biases averaged into one
    assert count(model) == count(vit) + prompt
    assert model.num_features == dim and model.amortised is True


def test_the_prompt_is_the_mean_of_p_two_layer_mlps():
    torch.manual_seed(0)
    first = [nn.Linear(3, 8) for _ in range(5)]
    second = [nn.Linear(8, 8) for _ in range(5)]
    prompt = InvariancePrompt(3, 8, prompts=5)
    prompt.load_mlps(first, second)
    descriptors = torch.rand(4, 3)
    expected = torch.stack([second[p](torch.relu(first[p](descriptors))) for p in range(5)]).mean(0)
    torch.testing.assert_close(prompt(descriptors), expected)


def test_the_prompt_starts_at_the_scale_of_one_mlp_not_p_times_smaller():
    torch.manual_seed(1)
    descriptors = torch.rand(512, 2)
    ours = InvariancePrompt(2, 64, prompts=64)(descriptors).var().item()
    single = InvariancePrompt(2, 64, prompts=1)(descriptors).var().item()
    first = [nn.Linear(2, 64) for _ in range(64)]
    second = [nn.Linear(64, 64) for _ in range(64)]
    paper = torch.stack([second[p](torch.relu(first[p](descriptors))) for p in range(64)]).mean(0).var().item()
    assert 0.3 < ours / single < 3.0  # the same order as one MLP
    assert ours / paper > 10  # the paper's average is about P = 64 times smaller


def test_output_depends_on_the_descriptor_and_gradients_reach_the_prompt():
    torch.manual_seed(2)
    model = tiny()
    x = torch.randn(4, 3, 32, 32)
    a, b = model(x, torch.tensor([1.0, 0.0])), model(x, torch.tensor([0.0, 1.0]))
    assert a.shape == (4, 192) and (a - b).abs().max() > 1e-3
    descriptor = torch.tensor([0.5, 0.5], requires_grad=True)
    model(x, descriptor).square().sum().backward()
    assert model.prompt.hidden.weight.grad.abs().sum() > 0 and model.prompt.out.weight.grad.abs().sum() > 0
    assert descriptor.grad.abs().sum() > 0  # a downstream task can learn i through the token


def test_per_group_descriptors_equal_per_group_calls():
    torch.manual_seed(3)
    model = tiny().eval()
    x, descriptors = torch.randn(6, 3, 32, 32), torch.rand(3, 2)
    grouped = model(x, descriptors)
    for g in range(3):
        torch.testing.assert_close(grouped[2 * g : 2 * g + 2], model(x[2 * g : 2 * g + 2], descriptors[g]), atol=1e-5, rtol=1e-5)


def test_stop_gradient_on_the_patch_embedding_really_takes_effect():
    torch.manual_seed(4)
    model = tiny(stop_grad_patch_embed=True)
    before = {k: v.clone() for k, v in model.patch_embed.state_dict().items()}
    groups = parameter_groups(model, 0.1)
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 32, 32), torch.tensor([1.0, 1.0])).square().mean().backward()
        optimizer.step()
    assert all(p.grad is None for p in model.patch_embed.parameters())
    for key, value in model.patch_embed.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert not any(id(p) in grouped for p in model.patch_embed.parameters())
    assert model.blocks[0].attn.qkv.weight.grad is not None  # the rest trains


def test_a_moco_v3_checkpoint_initialises_the_vit_and_leaves_only_the_prompt(tmp_path: Path):
    torch.manual_seed(5)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    state = {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.randn(8, 192)  # the projector: not part of the encoder
    state.update({f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    state["module.predictor.0.weight"] = torch.randn(8, 8)
    path = tmp_path / "moco_v3_vit_tiny.pth"
    torch.save({"epoch": 300, "arch": "vit_tiny", "state_dict": state}, path)
    model = tiny(stop_grad_patch_embed=True)
    missing = load_moco_v3_checkpoint(model, path)
    assert missing and all(key.startswith("prompt.") for key in missing)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="does not fit"):
        load_moco_v3_checkpoint(tiny(img_size=64), path)  # another image size: the position embedding differs
    torch.save({"state_dict": {"encoder.x": torch.ones(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="module.base_encoder"):
        load_moco_v3_checkpoint(model, tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="init="):
        load_moco_v3_checkpoint(model, tmp_path / "missing.pth")


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="inv_dim"):
        timm.create_model(TINY, img_size=32)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(TINY, pretrained=True, inv_dim=2)


def test_the_plain_vit_baseline_is_timms_vit_and_ignores_the_descriptor():
    torch.manual_seed(6)
    with torch.device("meta"):
        vit = timm.create_model("vit_small_patch16_224", num_classes=0)
        plain = timm.create_model("plain_vit_small_patch16_224", inv_dim=2)
    assert count(plain) == count(vit) and plain.amortised is False
    model = create_encoder("plain_vit_tiny_patch16_224", encoder_kwargs("plain_vit_tiny_patch16_224", 2, 3, {}, {"img_size": 32}))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x, torch.tensor([1.0, 0.0])), model(x, torch.tensor([0.0, 1.0])))
    assert model(x).shape == (2, 192)


def test_finetuning_the_last_blocks_of_a_vit_includes_its_final_norm():
    from aiaudio.eval.finetune import trailing_blocks

    model = tiny()
    assert trailing_blocks(model, 2) == [model.blocks[10], model.blocks[11], model.norm]


def test_the_prompt_mlp_is_the_descriptor_dependent_group():
    model = tiny()
    groups = parameter_groups(model, 0.1, hyper_lr_scale=0.1)
    prompt = {id(p) for p in model.prompt.parameters()}
    assert {id(p) for group in groups[2:] for p in group["params"]} == prompt
    assert all(group["lr_scale"] == 0.1 for group in groups[2:])
