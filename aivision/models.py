"""Prompt-ViT: a timm Vision Transformer whose token sequence gains one invariance token made from the descriptor.

The paper's prompt is the mean of P two-layer MLPs ``Linear(K, D) -> ReLU -> Linear(D, D)`` of the descriptor ``i``,
appended as one extra token after the position embedding; the feature is the class token after the final norm.
The mean of P such MLPs is exactly one MLP ``Linear(K, P*D) -> ReLU -> Linear(P*D, D)`` whose hidden layer stacks
the P first layers and whose output layer is the P second layers side by side, divided by P (the P output biases
average into one): :class:`InvariancePrompt` is that one MLP, so it costs one matrix product per layer instead of P.
``tests/vision/test_models.py`` checks the equivalence on packed weights. Its output layer takes the ordinary
fan-in initialisation of a ``P*D``-input layer, which starts the token at the variance of a single MLP's output; the
paper's average of P independently initialised MLPs starts P times smaller (256 times for P = 256) and so barely
moves the blocks at first.

Importing this module registers ``prompt_vit_{tiny,small,base}_patch16_224`` and the plain baselines
``plain_vit_{tiny,small,base}_patch16_224`` with timm; like every invariance encoder they take ``inv_dim`` and
``in_chans`` (and ``prompts``, ``img_size``, ``stop_grad_patch_embed``, ...).
:func:`load_moco_v3_checkpoint` initialises one from a MoCo-v3 checkpoint file, as the paper does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from aiaudio.nn.hyper import check_descriptor

#: (embed_dim, depth, num_heads) of the registered sizes.
VIT_SIZES: dict[str, tuple[int, int, int]] = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


class InvariancePrompt(nn.Module):
    """The invariance token: ``[K]`` or ``[G, K]`` descriptors -> ``[1, D]`` or ``[G, D]`` tokens.

    Equal to the mean of ``prompts`` MLPs ``Linear(K, D) -> ReLU -> Linear(D, D)`` (see the module docstring).

    Args:
        inv_dim: K.
        dim: D, the token width.
        prompts: P, the number of averaged MLPs (the paper: 256).
    """

    def __init__(self, inv_dim: int, dim: int, prompts: int = 256) -> None:
        super().__init__()
        if min(inv_dim, dim, prompts) < 1:
            raise ValueError(f"InvariancePrompt needs inv_dim, dim and prompts >= 1, got {inv_dim}, {dim}, {prompts}")
        self.inv_dim, self.dim, self.prompts = inv_dim, dim, prompts
        self.hidden = nn.Linear(inv_dim, prompts * dim)
        self.out = nn.Linear(prompts * dim, dim)
        for layer in (self.hidden, self.out):  # the prompt is the descriptor's whole influence
            layer.descriptor_dependent = ("weight", "bias")

    def forward(self, descriptor: torch.Tensor) -> torch.Tensor:
        rows = descriptor.reshape(-1, self.inv_dim).to(self.hidden.weight.dtype)
        return self.out(torch.relu(self.hidden(rows)))

    @torch.no_grad()
    def load_mlps(self, first: list[nn.Linear], second: list[nn.Linear]) -> None:
        """Set this prompt to the mean of the MLPs ``second[p](relu(first[p](i)))`` (the paper's parametrisation)."""
        if len(first) != self.prompts or len(second) != self.prompts:
            raise ValueError(f"expected {self.prompts} MLPs, got {len(first)} and {len(second)}")
        self.hidden.weight.copy_(torch.cat([layer.weight for layer in first]))
        self.hidden.bias.copy_(torch.cat([layer.bias for layer in first]))
        self.out.weight.copy_(torch.cat([layer.weight for layer in second], dim=1) / self.prompts)
        self.out.bias.copy_(torch.stack([layer.bias for layer in second]).mean(0))


class PromptViT(VisionTransformer):
    """A ViT conditioned on an invariance descriptor through one extra token (see the module docstring).

    ``forward(x, i)`` returns the class token after the final norm, ``[B, embed_dim]``; ``i`` is ``[K]`` for the
    whole batch or ``[G, K]`` for G equal groups of consecutive images (LayerNorm never mixes examples, so groups
    need no eval mode).

    Args:
        inv_dim: K, the descriptor length.
        prompts: P, the MLPs averaged into the token.
        stop_grad_patch_embed: freeze the patch embedding (MoCo-v3's stability trick): its parameters get no
            gradient and are never updated, and its output is detached.
        **kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ...).
    """

    amortised = True

    def __init__(self, inv_dim: int, prompts: int = 256, stop_grad_patch_embed: bool = False, **kwargs: Any) -> None:
        if inv_dim < 1:
            raise ValueError(f"inv_dim (descriptor length K) must be >= 1, got {inv_dim}")
        kwargs.setdefault("num_classes", 0)
        kwargs.setdefault("global_pool", "token")
        super().__init__(**kwargs)
        self.inv_dim = inv_dim
        self.prompt = InvariancePrompt(inv_dim, self.embed_dim, prompts)
        self.stop_grad_patch_embed = stop_grad_patch_embed
        if stop_grad_patch_embed:
            self.patch_embed.requires_grad_(False)

    def forward_features(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Token sequence after the final norm: class token, patches, invariance token last."""
        check_descriptor(i, self.inv_dim, x.shape[0])
        tokens = self.patch_embed(x)
        if self.stop_grad_patch_embed:
            tokens = tokens.detach()
        tokens = self._pos_embed(tokens)
        prompt = self.prompt(i).to(tokens.dtype)  # [G, D]
        prompt = prompt.repeat_interleave(tokens.shape[0] // prompt.shape[0], dim=0)
        tokens = torch.cat([tokens, prompt.unsqueeze(1)], dim=1)
        tokens = self.norm_pre(self.patch_drop(tokens))
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x, i))


class PlainViT(VisionTransformer):
    """The plain ViT baseline (MoCo-v3's): the class token after the final norm; the descriptor is ignored."""

    amortised = False

    def __init__(self, stop_grad_patch_embed: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 0)
        kwargs.setdefault("global_pool", "token")
        super().__init__(**kwargs)
        self.stop_grad_patch_embed = stop_grad_patch_embed
        if stop_grad_patch_embed:
            self.patch_embed.requires_grad_(False)

    def forward(self, x: torch.Tensor, i: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))


def _vit_options(size: str, pretrained: bool, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; use init=<MoCo-v3 checkpoint>")
    dim, depth, heads = VIT_SIZES[size]
    return {"patch_size": 16, "embed_dim": dim, "depth": depth, "num_heads": heads, **kwargs}


def _prompt_vit(size: str, pretrained: bool, inv_dim: int | None, kwargs: dict[str, Any]) -> PromptViT:
    name = f"prompt_vit_{size}_patch16_224"
    options = _vit_options(size, pretrained, name, kwargs)
    if inv_dim is None:
        raise ValueError(f"{name} needs inv_dim (the descriptor length K), e.g. inv_dim=2")
    return PromptViT(inv_dim, **options)


@register_model
def prompt_vit_tiny_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PromptViT:
    """Prompt-ViT-Ti/16 (D = 192, 12 blocks, 3 heads)."""
    return _prompt_vit("tiny", pretrained, inv_dim, kwargs)


@register_model
def prompt_vit_small_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PromptViT:
    """Prompt-ViT-S/16 (D = 384, 12 blocks, 6 heads)."""
    return _prompt_vit("small", pretrained, inv_dim, kwargs)


@register_model
def prompt_vit_base_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PromptViT:
    """Prompt-ViT-B/16 (D = 768, 12 blocks, 12 heads), the paper's."""
    return _prompt_vit("base", pretrained, inv_dim, kwargs)


@register_model
def plain_vit_tiny_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PlainViT:
    """Plain ViT-Ti/16 baseline (``inv_dim`` accepted and unused)."""
    return PlainViT(**_vit_options("tiny", pretrained, "plain_vit_tiny_patch16_224", kwargs))


@register_model
def plain_vit_small_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PlainViT:
    """Plain ViT-S/16 baseline (``inv_dim`` accepted and unused)."""
    return PlainViT(**_vit_options("small", pretrained, "plain_vit_small_patch16_224", kwargs))


@register_model
def plain_vit_base_patch16_224(pretrained: bool = False, *, inv_dim: int | None = None, **kwargs: Any) -> PlainViT:
    """Plain ViT-B/16 baseline, MoCo-v3's (``inv_dim`` accepted and unused)."""
    return PlainViT(**_vit_options("base", pretrained, "plain_vit_base_patch16_224", kwargs))


def moco_v3_encoder_state(state: Mapping[str, torch.Tensor], prefix: str = "module.base_encoder.") -> dict[str, torch.Tensor]:
    """The backbone weights of a MoCo-v3 checkpoint's ``state_dict``: keys under ``prefix``, without the projector
    (``head.*``), with the prefix removed."""
    out = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return {key: value for key, value in out.items() if not key.startswith("head.")}


def load_moco_v3_checkpoint(model: VisionTransformer, path: str | Path) -> list[str]:
    """Initialise ``model``'s ViT from a MoCo-v3 checkpoint file (``{"state_dict": {"module.base_encoder....": ...}}``
    as facebookresearch/moco-v3 writes it); returns the model keys the file did not set (the prompt's).

    The file is read with ``weights_only=True`` (nothing in it is executed). Every backbone weight must fit; the
    patch embedding is loaded like every other weight and is not re-initialised afterwards.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init={path}: no such MoCo-v3 checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no state_dict mapping of a MoCo-v3 checkpoint")
    backbone = moco_v3_encoder_state(state)
    if not backbone:
        raise ValueError(f"{path}: no key starts with 'module.base_encoder.'; is it a MoCo-v3 checkpoint?")
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as error:  # a shape mismatch
        raise ValueError(f"{path} does not fit {type(model).__name__} (check the ViT size and image size): {error}") from None
    if unexpected or any(not key.startswith("prompt.") for key in missing):
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: missing {[k for k in missing if not k.startswith('prompt.')]}, "
            f"unexpected {unexpected} (check the ViT size and image size)"
        )
    return list(missing)
