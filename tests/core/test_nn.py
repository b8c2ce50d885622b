"""Tests of aiaudio.nn against independent references: closed forms, timm's ResNets, hand-computed kernels."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import aiaudio.nn as ann
from aiaudio.nn import (
    HyperConv2d,
    HyperResNet,
    InvarianceEmbedding,
    PlainEncoder,
    PredictionHead,
    ProjectionHead,
    StaticResNet,
    create_encoder,
    encoder_kwargs,
    hyper_resnet,
    plain_resnet,
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _hyper_conv_count(out_ch: int, in_ch: int, k: int, embed_dim: int, hidden: int) -> int:
    """Closed form: Linear(E, h) + Linear(h, o*i*k*k)."""
    kernel = out_ch * in_ch * k * k
    return embed_dim * hidden + hidden + hidden * kernel + kernel


def _encoder(name: str, inv_dim: int | None, **options) -> nn.Module:
    """A registered encoder built through timm's registry, as configs build them (one input channel)."""
    return create_encoder(name, encoder_kwargs(name, inv_dim, 1, options))


def _tiny_hyper(name: str = "resnet18", inv_dim: int = 3, **kwargs) -> HyperResNet:
    return hyper_resnet(name, inv_dim, in_chans=1, width=0.125, **kwargs)


def _binary_descriptors(k: int, active: int) -> list[torch.Tensor]:
    rows = []
    for on in itertools.combinations(range(k), active):
        row = torch.zeros(k)
        row[list(on)] = 1.0
        rows.append(row)
    return rows


# ---------------------------------------------------------------- HyperConv2d


@pytest.mark.parametrize("out_ch,in_ch,k,embed_dim,hidden", [(5, 3, 3, 4, 6), (16, 8, 1, 16, 32), (2, 1, 7, 3, 1)])
def test_hyper_conv_parameter_count_closed_form(out_ch, in_ch, k, embed_dim, hidden):
    conv = HyperConv2d(in_ch, out_ch, k, embed_dim=embed_dim, hidden_dim=hidden)
    assert _count(conv) == _hyper_conv_count(out_ch, in_ch, k, embed_dim, hidden)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_hyper_conv_equals_conv_with_hand_computed_kernel(stride, padding):
    torch.manual_seed(0)
    conv = HyperConv2d(3, 5, 3, stride=stride, padding=padding, embed_dim=4, hidden_dim=6).double()
    with torch.no_grad():  # random biases too, so every term of the closed form matters
        conv.embed_to_hidden.bias.normal_()
    embedding = torch.randn(4, dtype=torch.float64)
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)

    w1, b1 = conv.embed_to_hidden.weight, conv.embed_to_hidden.bias
    w2, b2 = conv.hidden_to_kernel.weight, conv.hidden_to_kernel.bias
    hidden = torch.clamp((w1 * embedding[None, :]).sum(dim=1) + b1, min=0.0)
    kernel = ((w2 * hidden[None, :]).sum(dim=1) + b2).reshape(5, 3, 3, 3)
    expected = F.conv2d(x, kernel, stride=stride, padding=padding)

    torch.testing.assert_close(conv(x, embedding), expected, rtol=1e-12, atol=1e-12)


def test_zero_descriptor_generates_the_base_kernel_at_init():
    embedding = InvarianceEmbedding(7, 16)
    conv = HyperConv2d(4, 6, 3, embed_dim=16)
    kernel = conv.generate_kernel(embedding(torch.zeros(7)))
    assert torch.equal(kernel, conv.hidden_to_kernel.bias.reshape(6, 4, 3, 3))
    assert torch.equal(kernel, conv.base_kernel())


def test_embedding_is_nontrivial_for_binary_descriptors():
    torch.manual_seed(1)
    embedding = InvarianceEmbedding(7, 16)
    for active in range(1, 8):
        for descriptor in _binary_descriptors(7, active)[:5]:
            e = embedding(descriptor)
            # Unit variance per component at 3.5 active bits, growing like sqrt(active / 3.5).
            assert 0.35 * math.sqrt(active / 3.5) < e.std().item() < 2.0 * math.sqrt(active / 3.5)


def test_generated_kernels_at_init_have_kaiming_scale_and_depend_on_the_descriptor():
    torch.manual_seed(2)
    in_ch, k = 64, 3
    embedding = InvarianceEmbedding(7, 16)
    conv = HyperConv2d(in_ch, 64, k, embed_dim=16, hidden_dim=32, dependence=0.5)
    kaiming_std = math.sqrt(2.0 / (in_ch * k * k))
    with torch.no_grad():
        base = conv.base_kernel()
        assert base.std().item() == pytest.approx(kaiming_std, rel=0.05)
        descriptors = _binary_descriptors(7, 3) + _binary_descriptors(7, 4)
        kernels = [conv.generate_kernel(embedding(d)) for d in descriptors]
        ratios = []
        for kernel in kernels:
            # Total std: sqrt(1 + dependence^2) times the Kaiming scale for typical descriptors.
            assert 0.95 * kaiming_std < kernel.std().item() < 1.4 * kaiming_std
            ratios.append(((kernel - base).std() / base.std()).item())
        assert 0.35 < sum(ratios) / len(ratios) < 0.7  # dependence = 0.5
        assert min(ratios) > 0.1
        flat = torch.stack(kernels).flatten(1)
        relative = torch.cdist(flat, flat) / flat.norm(dim=1, keepdim=True)
        pairs = relative[~torch.eye(len(kernels), dtype=torch.bool)]
        assert pairs.min().item() > 0.05  # even descriptors one bit apart
        assert pairs.median().item() > 0.25


def test_dependence_zero_makes_kernels_descriptor_independent():
    embedding = InvarianceEmbedding(5, 16)
    conv = HyperConv2d(3, 4, 3, dependence=0.0)
    k1 = conv.generate_kernel(embedding(torch.tensor([1.0, 0, 1, 0, 0])))
    k2 = conv.generate_kernel(embedding(torch.ones(5)))
    assert torch.equal(k1, conv.base_kernel()) and torch.equal(k2, conv.base_kernel())


def test_base_kernel_is_marked_as_a_weight_for_weight_decay():
    conv = HyperConv2d(3, 4, 3)
    assert getattr(conv.hidden_to_kernel, "bias_is_weight", False) is True
    assert not getattr(conv.embed_to_hidden, "bias_is_weight", False)


# ---------------------------------------------------------------- parameter counts of whole models


def _closed_form_hyper_count(timm_model: nn.Module, inv_dim: int, embed_dim: int, hidden: int) -> tuple[int, int]:
    """(total, block-conv) parameter counts of a hyper ResNet derived from a timm ResNet's conv shapes."""
    total = 0
    block_conv_params = 0
    num_blocks = 0
    for name, module in timm_model.named_modules():
        if isinstance(module, nn.Conv2d) and name.startswith("layer"):
            out_ch, in_ch, k, _ = module.weight.shape
            total += _hyper_conv_count(out_ch, in_ch, k, embed_dim, hidden)
            block_conv_params += module.weight.numel()
        elif isinstance(module, nn.Conv2d):  # stem
            total += module.weight.numel()
        elif isinstance(module, nn.BatchNorm2d):
            total += module.weight.numel() + module.bias.numel()
        elif isinstance(module, (timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck)):
            num_blocks += 1
    total += num_blocks * inv_dim * embed_dim
    return total, block_conv_params


@pytest.mark.parametrize("name,in_chans,inv_dim", [("resnet50", 3, 5), ("resnet18", 1, 7)])
def test_hyper_resnet_parameter_count_matches_closed_form_from_timm(name, in_chans, inv_dim):
    with torch.device("meta"):
        reference = timm.create_model(name, in_chans=in_chans, num_classes=0)
        model = timm.create_model(f"hyper_{name}", in_chans=in_chans, inv_dim=inv_dim)
    expected_total, block_conv_params = _closed_form_hyper_count(reference, inv_dim, embed_dim=16, hidden=32)
    assert _count(model) == expected_total
    hyper_part = sum(p.numel() for p in model.hypernetwork_parameters())
    assert _count(model) - hyper_part == _count(reference) - block_conv_params  # static part: stem + BatchNorms
    assert 32.9 < hyper_part / block_conv_params < 33.1  # (hidden + 1) parameters per kernel entry, plus small terms
    if name == "resnet50":
        assert 0.76e9 < expected_total < 0.78e9  # the paper's Hyper-ResNet50 has about 0.77 B parameters


# ---------------------------------------------------------------- architecture against timm


def _copy_base_kernels(hyper: HyperResNet, reference: nn.Module) -> None:
    """Copy the hyper model's base kernels, stem and BatchNorms into a timm ResNet with the same module paths."""
    hyper_modules = dict(hyper.named_modules())
    hyper_state = hyper.state_dict()
    new_state = {}
    for key in reference.state_dict():
        module_path, _, leaf = key.rpartition(".")
        module = hyper_modules.get(module_path)
        if isinstance(module, HyperConv2d):
            assert leaf == "weight"
            new_state[key] = module.base_kernel().detach().clone()
        else:
            new_state[key] = hyper_state[key].clone()
    reference.load_state_dict(new_state, strict=True)


def _randomise_batch_norms(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))


def test_hyper_resnet18_without_descriptor_dependence_equals_timm_resnet18():
    torch.manual_seed(3)
    hyper = hyper_resnet("resnet18", 7, in_chans=1, dependence=0.0)
    _randomise_batch_norms(hyper, seed=4)
    reference = timm.create_model("resnet18", in_chans=1, num_classes=0)
    _copy_base_kernels(hyper, reference)
    x = torch.randn(2, 1, 64, 64)
    descriptor = torch.tensor([1.0, 0, 1, 1, 0, 0, 1])
    with torch.no_grad():
        hyper.eval(), reference.eval()  # running statistics
        torch.testing.assert_close(
            hyper.forward_features(x, descriptor), reference.forward_features(x), rtol=1e-4, atol=1e-5
        )
        hyper.train(), reference.train()  # batch statistics, pooled output
        torch.testing.assert_close(hyper(x, descriptor), reference(x), rtol=1e-4, atol=1e-5)
    assert hyper.num_features == reference.num_features == 512


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_static_resnet_at_width_one_is_timm_resnet(name):
    torch.manual_seed(5)
    block, layers = ann.ARCHITECTURES[name]
    ours = StaticResNet(block, layers, in_chans=1)
    _randomise_batch_norms(ours, seed=6)
    reference = timm.create_model(name, in_chans=1, num_classes=0)
    reference.load_state_dict(ours.state_dict(), strict=True)  # same module paths and shapes
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ours.eval(), reference.eval()
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)
    assert ours.num_features == reference.num_features


def test_bottleneck_hyper_resnet_with_dependent_weights_zeroed_equals_static_resnet():
    torch.manual_seed(7)
    hyper = _tiny_hyper("resnet50", inv_dim=4, zero_init_last=False)
    static = StaticResNet(ann.Bottleneck, (3, 4, 6, 3), in_chans=1, width=0.125)
    _randomise_batch_norms(hyper, seed=8)
    descriptor = torch.tensor([1.0, 1, 0, 1])
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        hyper.eval(), static.eval()
        with_dependence = hyper(x, descriptor)
        for module in hyper.modules():
            if isinstance(module, HyperConv2d):
                module.hidden_to_kernel.weight.zero_()
        _copy_base_kernels(hyper, static)
        torch.testing.assert_close(hyper(x, descriptor), static(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(with_dependence, static(x), rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------- behaviour of the hyper model


@pytest.mark.parametrize("zero_init_last", [False, True])
def test_outputs_depend_on_the_descriptor(zero_init_last):
    torch.manual_seed(9)
    model = _tiny_hyper(inv_dim=3, zero_init_last=zero_init_last).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a = model(x, torch.tensor([1.0, 0.0, 0.0]))
        b = model(x, torch.tensor([0.0, 1.0, 1.0]))
    assert ((a - b).norm() / a.norm()).item() > 0.05


def test_gradients_reach_every_hypernetwork_and_embedding():
    torch.manual_seed(10)
    model = _tiny_hyper(inv_dim=3, zero_init_last=False)
    x = torch.randn(4, 1, 64, 64)
    out = model(x, torch.tensor([1.0, 1.0, 0.0]))
    (out * torch.randn_like(out)).sum().backward()
    hyper_convs = [m for m in model.modules() if isinstance(m, HyperConv2d)]
    embeddings = [m for m in model.modules() if isinstance(m, InvarianceEmbedding)]
    assert len(embeddings) == 8
    assert len(hyper_convs) == 8 * 2 + 3  # two convs per block, three downsample projections
    for module in hyper_convs + embeddings:
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {module}.{name}"


def test_timm_create_model_builds_hyper_resnets_and_refuses_pretrained():
    model = timm.create_model("hyper_resnet18", in_chans=1, inv_dim=7, width=0.125).eval()
    assert isinstance(model, HyperResNet) and model.inv_dim == 7 and model.in_chans == 1
    assert model(torch.randn(1, 1, 32, 32), torch.ones(7)).shape == (1, model.num_features)
    with torch.device("meta"):
        big = timm.create_model("hyper_resnet50", in_chans=3, inv_dim=5)
    assert big.num_features == 2048
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("hyper_resnet18", pretrained=True, in_chans=1, inv_dim=7, width=0.125)
    with pytest.raises(ValueError, match="inv_dim"):
        timm.create_model("hyper_resnet18", in_chans=1, width=0.125)


def test_classifier_head_and_feature_map_shapes():
    model = hyper_resnet("resnet18", 2, in_chans=1, width=0.125, num_classes=10)
    x = torch.randn(2, 1, 64, 96)
    assert model(x, torch.ones(2)).shape == (2, 10)
    assert model.forward_features(x, torch.ones(2)).shape == (2, model.num_features, 2, 3)


def test_bad_shapes_raise_clear_value_errors():
    model = _tiny_hyper(inv_dim=3)
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        model(x, torch.ones(4))
    with pytest.raises(ValueError, match="equal groups"):
        model.eval()(torch.randn(3, 1, 32, 32), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[G, 3\]"):
        model(x, torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.randn(2, 3, 32, 32), torch.ones(3))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.randn(1, 32, 32), torch.ones(3))
    with pytest.raises(ValueError, match="torch.Tensor"):
        model(x, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="embedding of shape"):
        HyperConv2d(1, 2, 3)(x, torch.ones(3))
    with pytest.raises(ValueError, match="inv_dim"):
        create_encoder("hyper_resnet18", {"in_chans": 1})
    with pytest.raises(ValueError, match="not registered with timm"):
        create_encoder("no_such_vit", {"inv_dim": 3, "in_chans": 1})
    with pytest.raises(ValueError, match="not an invariance encoder"):
        create_encoder("resnet18", {})  # timm's own classifier: no descriptor argument
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        _encoder("plain_resnet18", inv_dim=None, width=0.125)(torch.randn(2, 3, 32, 32))


def test_hyper_conv_with_per_group_embeddings_in_both_layouts():
    """Rows-by-group input ``[G*n, C, H, W]`` and channel-stacked input ``[n, G*C, H, W]`` both equal per-group calls."""
    torch.manual_seed(3)
    conv = HyperConv2d(3, 5, 3, stride=2, padding=1, embed_dim=4)
    x, embeddings = torch.randn(6, 3, 9, 11), torch.randn(2, 4)
    separate = torch.cat([conv(x[3 * g : 3 * g + 3], embeddings[g]) for g in range(2)])
    torch.testing.assert_close(conv(x, embeddings), separate)
    stacked = torch.cat([x[:3], x[3:]], dim=1)  # group g at channels 3g..3g+2
    torch.testing.assert_close(conv(stacked, embeddings), torch.cat([separate[:3], separate[3:]], dim=1))


def test_stacked_batchnorm_normalises_each_group_like_batchnorm():
    torch.manual_seed(4)
    norm = ann.StackedBatchNorm2d(3)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    nn.init.uniform_(norm.weight)
    nn.init.uniform_(norm.bias)
    norm.eval()
    x = torch.randn(2, 6, 4, 4)
    expected = torch.cat([F.batch_norm(x[:, 3 * g : 3 * g + 3], norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps) for g in range(2)], 1)
    torch.testing.assert_close(norm(x), expected)
    # Training: each group normalised with its own batch statistics; the running ones move to the groups' average.
    before = norm.running_mean.clone(), norm.running_var.clone()
    separate = [nn.BatchNorm2d(3).train() for _ in range(2)]
    for g, twin in enumerate(separate):
        twin.load_state_dict({k: v for k, v in norm.state_dict().items()})
    expected = torch.cat([twin(x[:, 3 * g : 3 * g + 3]) for g, twin in enumerate(separate)], 1)
    torch.testing.assert_close(norm.train()(x), expected)
    torch.testing.assert_close(norm.running_mean, (separate[0].running_mean + separate[1].running_mean) / 2)
    torch.testing.assert_close(norm.running_var, (separate[0].running_var + separate[1].running_var) / 2)
    assert not torch.equal(norm.running_mean, before[0]) and not torch.equal(norm.running_var, before[1])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_per_group_descriptors_equal_separate_calls(name):
    """One call with descriptors [G, K] equals G calls with one descriptor each, on the matching rows."""
    torch.manual_seed(5)
    model = _tiny_hyper(name, inv_dim=3, zero_init_last=False).eval()
    x = torch.randn(6, 1, 40, 48)
    descriptors = torch.tensor([[1.0, 0.0, 1.0], [0.2, 0.9, 0.5], [0.0, 0.0, 0.0]])
    grouped = model(x, descriptors)
    separate = torch.cat([model(x[2 * g : 2 * g + 2], descriptors[g]) for g in range(3)])
    torch.testing.assert_close(grouped, separate, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(grouped[:2], model(x[:2], descriptors[1]), atol=1e-3)


def test_descriptor_gradients_of_groups_are_independent():
    """The loss of group 0 has zero gradient with respect to the descriptor of group 1, and vice versa."""
    torch.manual_seed(6)
    model = _tiny_hyper(inv_dim=3, zero_init_last=False).eval().requires_grad_(False)
    descriptors = torch.full((2, 3), 0.5, requires_grad=True)
    out = model(torch.randn(4, 1, 32, 32), descriptors)
    (grad,) = torch.autograd.grad(out[:2].sum(), descriptors)
    assert grad[0].abs().sum() > 0 and torch.all(grad[1] == 0)


@pytest.mark.parametrize("kind", ["hyper_resnet18", "plain_resnet18", "plain_resnet50"])
def test_forward_after_stem_composes_to_forward(kind):
    torch.manual_seed(7)
    width = 1.0 if kind == "resnet50" else 0.125  # width 1 is timm's own ResNet
    model = _encoder(kind, inv_dim=3, width=width, zero_init_last=False).eval()
    x, i = torch.randn(2, 1, 32, 40), torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(model.forward_after_stem(model.forward_stem(x), i), model(x, i))


def test_channels_last_input_and_model_give_the_same_output():
    torch.manual_seed(11)
    model = _tiny_hyper(inv_dim=3, zero_init_last=False).eval()
    x = torch.randn(2, 1, 64, 64)
    descriptor = torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        expected = model(x, descriptor)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl, descriptor), expected, rtol=1e-4, atol=1e-5)
        features = model.forward_features(x_cl, descriptor)
        assert features.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_and_bf16_model():
    torch.manual_seed(12)
    model = _tiny_hyper(inv_dim=3, zero_init_last=False).eval()
    x = torch.randn(2, 1, 64, 64)
    descriptor = torch.tensor([1.0, 0.0, 1.0])
    conv_dtypes = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: conv_dtypes.append(out.dtype))
        for m in model.modules()
        if isinstance(m, HyperConv2d)
    ]
    with torch.no_grad():
        expected = model(x, descriptor)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, descriptor)
    for hook in hooks:
        hook.remove()
    assert conv_dtypes[len(conv_dtypes) // 2 :] and set(conv_dtypes[len(conv_dtypes) // 2 :]) == {torch.bfloat16}
    assert ((low.float() - expected).norm() / expected.norm()).item() < 0.05
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(x.to(torch.bfloat16), descriptor)  # float32 descriptor, bf16 model
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05


# ---------------------------------------------------------------- plain encoders and the factory


def test_plain_encoders_ignore_the_descriptor_and_match_timm():
    timm_backed = plain_resnet("resnet18", in_chans=1)
    assert isinstance(timm_backed.backbone, timm.models.ResNet) and timm_backed.num_features == 512
    small = _encoder("plain_resnet18", inv_dim=None, width=0.25)
    assert isinstance(small, PlainEncoder) and isinstance(small.backbone, StaticResNet)
    assert small.num_features == 128
    small.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x, torch.ones(7)), small(x))
        assert small(x).shape == (2, 128)
        assert small.forward_features(x).shape == (2, 128, 2, 2)


@pytest.mark.parametrize("kind", ["hyper_resnet18", "hyper_resnet50", "plain_resnet18", "plain_resnet50"])
def test_registered_encoders_share_the_call_signature(kind):
    encoder = _encoder(kind, inv_dim=7, width=0.125).eval()
    assert encoder.amortised == kind.startswith("hyper_")
    with torch.no_grad():
        out = encoder(torch.randn(2, 1, 32, 32), torch.ones(7))
    assert out.shape == (2, encoder.num_features)
    expansion = 4 if kind.endswith("50") else 1
    assert encoder.num_features == 64 * expansion


# ---------------------------------------------------------------- heads


def test_projection_head_matches_hand_computed_mlp():
    torch.manual_seed(13)
    head = ProjectionHead(6, 8, 3).eval()
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    with torch.no_grad():
        head[1].running_mean.normal_()
        head[1].running_var.uniform_(0.5, 1.5)
        head[1].weight.normal_()
        head[1].bias.normal_()
    x = torch.randn(5, 6)
    bn = head[1]
    hidden = x @ head[0].weight.T
    hidden = (hidden - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = torch.clamp(hidden, min=0) @ head[3].weight.T + head[3].bias
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)


def test_head_variants():
    three = ProjectionHead(16, 32, 8, num_layers=3, last_batch_norm=True)
    linears = [m for m in three if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert isinstance(three[-1], nn.BatchNorm1d) and not three[-1].affine
    no_bn = ProjectionHead(16, 32, 8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in no_bn) and no_bn[0].bias is not None
    predictor = PredictionHead(8, 32, 8)
    assert [type(m) for m in predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert predictor(torch.randn(4, 8)).shape == (4, 8)
    assert ProjectionHead(16, 32, 8, num_layers=1)(torch.randn(4, 16)).shape == (4, 8)
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(16, 32, 8, num_layers=0)


def test_per_descriptor_statistics_normalise_each_binary_descriptor_with_its_own():
    """With descriptor_statistics, training passes keep one moving average per binary descriptor; after calibration,
    eval mode at a binary descriptor equals a plain-BatchNorm copy whose running statistics were recomputed at that
    descriptor alone (torch's own cumulative averages), one descriptor per group too."""
    import copy

    from aiaudio.nn.hyper import calibrate_descriptor_statistics, corner_weights

    torch.manual_seed(6)
    model = _tiny_hyper("resnet18", inv_dim=2, zero_init_last=False, descriptor_statistics=True)
    batches = [torch.randn(8, 1, 40, 48) * 3 + 1 for _ in range(3)]
    x = batches[0]
    descriptors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    model.train()
    for descriptor in descriptors:
        model(x, descriptor)
    norm = model.layer2[0].bn1
    assert norm.descriptor_seen.tolist() == [0.0, 1.0, 1.0, 1.0]  # rows in corner order: 00, 01, 10, 11
    calibrate_descriptor_statistics(model, batches, descriptors)
    references = []
    for descriptor in descriptors:
        reference = _tiny_hyper("resnet18", inv_dim=2, zero_init_last=False)
        reference.load_state_dict({k: v for k, v in model.state_dict().items() if "descriptor_" not in k})
        for module in reference.modules():
            if isinstance(module, ann.StackedBatchNorm2d):  # the blocks' norms: recomputed at this descriptor
                module.reset_running_stats()
                module.momentum = None
            elif isinstance(module, nn.BatchNorm2d):  # the stem's: kept, as calibration keeps it
                module.momentum = 0.0
        reference.train()
        with torch.no_grad():
            for batch in batches:
                reference(batch, descriptor)
        references.append(reference.eval())
    model.eval()
    with torch.no_grad():
        expected = [reference(x, d) for reference, d in zip(references, descriptors)]
        for descriptor, wanted in zip(descriptors, expected):
            torch.testing.assert_close(model(x, descriptor), wanted, rtol=1e-4, atol=1e-4)
        grouped = model(torch.cat([x, x]), descriptors[[2, 0]])
        torch.testing.assert_close(grouped, torch.cat([expected[2], expected[0]]), rtol=1e-4, atol=1e-4)
    batch_statistics = expected
    shared = _tiny_hyper("resnet18", inv_dim=2, zero_init_last=False)
    shared.load_state_dict({k: v for k, v in model.state_dict().items() if "descriptor_" not in k})
    with torch.no_grad():
        assert (shared.eval()(x, descriptors[2]) - batch_statistics[2]).abs().max() > 1e-2  # one mixed set: off
    descriptor = torch.tensor([0.3, 0.8], requires_grad=True)
    model(x, descriptor).sum().backward()
    assert descriptor.grad is not None and bool(descriptor.grad.abs().gt(0).all())  # the statistics depend on i too
    weights = corner_weights(torch.tensor([[0.3, 0.8], [1.0, 0.0]]), norm.descriptor_corners)
    torch.testing.assert_close(weights, torch.tensor([[0.14, 0.56, 0.06, 0.24], [0.0, 0.0, 1.0, 0.0]]))


def test_a_checkpoint_without_per_descriptor_statistics_loads_and_keeps_the_shared_ones():
    torch.manual_seed(7)
    old = _tiny_hyper("resnet18", inv_dim=2, zero_init_last=False)
    old.train()(torch.randn(4, 1, 40, 48), torch.tensor([1.0, 1.0]))
    new = _tiny_hyper("resnet18", inv_dim=2, zero_init_last=False, descriptor_statistics=True)
    new.load_state_dict(old.state_dict())  # strict: the missing tables are allowed
    x = torch.randn(4, 1, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x, torch.tensor([0.0, 1.0])), old.eval()(x, torch.tensor([0.0, 1.0])))
    with pytest.raises(ValueError, match="no per-descriptor"):
        ann.hyper.calibrate_descriptor_statistics(old, [x], torch.ones(1, 2))
