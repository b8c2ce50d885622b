"""Hypernetwork ResNets conditioned on an invariance descriptor, and plain ResNet baselines.

:class:`HyperResNet` is a ResNet (timm's stem: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) whose residual
blocks each own an :class:`~aiaudio.nn.hyper.InvarianceEmbedding`, and whose every block convolution (including the
1x1 downsample) is a :class:`~aiaudio.nn.hyper.HyperConv2d` with its own hypernetwork. The stem, the BatchNorms and
the classifier are ordinary static layers. Module paths and BatchNorm names match timm's ``resnet18``/``resnet50``.

:class:`StaticResNet` is the same code with ordinary convolutions; with ``width=1`` its state dict is timm's.
:class:`PlainEncoder` wraps a plain ResNet so that it has the encoder call signature ``forward(x, i=None)``.

Importing this module registers ``hyper_resnet18``, ``hyper_resnet50``, ``plain_resnet18`` and ``plain_resnet50``
with ``timm.create_model`` (build encoders with :func:`aiaudio.nn.create_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from aiaudio.nn.hyper import (
    HyperConv2d,
    InvarianceEmbedding,
    DescriptorContext,
    ReferenceStatistics,
    StackedBatchNorm2d,
    check_descriptor,
    corner_index,
    stack_groups,
    unstack_groups,
)

#: ``make_conv(in_channels, out_channels, kernel_size, stride, padding) -> conv module``
ConvFactory = Callable[[int, int, int, int, int], nn.Module]

BASE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
STEM_WIDTH = 64


def _scaled_width(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _apply_conv(conv: nn.Module, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
    """Run a block convolution: hypernetwork convolutions take the block embedding, ordinary ones do not."""
    if isinstance(conv, HyperConv2d):
        return conv(x, embedding)
    return conv(x)


class Downsample(nn.Sequential):
    """Shortcut projection: 1x1 convolution (hyper or static) at index 0, BatchNorm at index 1 (timm's layout)."""

    def __init__(self, conv: nn.Module, norm: nn.BatchNorm2d) -> None:
        super().__init__(conv, norm)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self[1](_apply_conv(self[0], x, embedding))


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 conv, BN, ReLU, 3x3 conv, BN, add shortcut, ReLU.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the shortcut projection.
        make_conv: builds each convolution (hypernetwork or static).
        embedding: the block's descriptor embedding, or None for a static block.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, make_conv: ConvFactory, embedding: InvarianceEmbedding | None
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.conv1 = make_conv(inplanes, planes, 3, stride, 1)
        self.bn1 = StackedBatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = make_conv(planes, planes, 3, 1, 1)
        self.bn2 = StackedBatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = Downsample(make_conv(inplanes, planes, 1, stride, 0), StackedBatchNorm2d(planes))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.embedding(descriptor) if self.embedding is not None else None
        shortcut = x if self.downsample is None else self.downsample(x, embedding)
        out = self.act1(self.bn1(_apply_conv(self.conv1, x, embedding)))
        out = self.bn2(_apply_conv(self.conv2, out, embedding))
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """ResNet-50 block: 1x1 conv, 3x3 conv (strided), 1x1 conv to ``4 * planes``, each with BN; add shortcut, ReLU.

    Args:
        inplanes: input channels.
        planes: bottleneck channels (the block outputs ``4 * planes``).
        stride: stride of the 3x3 convolution and of the shortcut projection.
        make_conv: builds each convolution (hypernetwork or static).
        embedding: the block's descriptor embedding, or None for a static block.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, make_conv: ConvFactory, embedding: InvarianceEmbedding | None
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.embedding = embedding
        self.conv1 = make_conv(inplanes, planes, 1, 1, 0)
        self.bn1 = StackedBatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = make_conv(planes, planes, 3, stride, 1)
        self.bn2 = StackedBatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = make_conv(planes, outplanes, 1, 1, 0)
        self.bn3 = StackedBatchNorm2d(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = Downsample(make_conv(inplanes, outplanes, 1, stride, 0), StackedBatchNorm2d(outplanes))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.embedding(descriptor) if self.embedding is not None else None
        shortcut = x if self.downsample is None else self.downsample(x, embedding)
        out = self.act1(self.bn1(_apply_conv(self.conv1, x, embedding)))
        out = self.act2(self.bn2(_apply_conv(self.conv2, out, embedding)))
        out = self.bn3(_apply_conv(self.conv3, out, embedding))
        return self.act3(out + shortcut)


BlockType = type[BasicBlock] | type[Bottleneck]

#: name -> (block type, blocks per stage)
ARCHITECTURES: dict[str, tuple[BlockType, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class _ResNet(nn.Module):
    """Shared ResNet body; ``make_conv``/``make_embedding`` decide whether block convolutions are hypernetworks."""

    def __init__(
        self,
        block: BlockType,
        layers: Sequence[int],
        in_chans: int,
        width: float,
        num_classes: int,
        zero_init_last: bool,
        make_conv: ConvFactory,
        make_embedding: Callable[[], InvarianceEmbedding | None],
    ) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_chans = in_chans
        self.width = width
        self.num_classes = num_classes

        stem_width = _scaled_width(STEM_WIDTH, width)
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = stem_width
        for stage, (base, num_blocks) in enumerate(zip(BASE_WIDTHS, layers), start=1):
            planes = _scaled_width(base, width)
            blocks = []
            for index in range(num_blocks):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(block(inplanes, planes, stride, make_conv, make_embedding()))
                inplanes = planes * block.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_features = inplanes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        # Static convolutions: timm's ResNet init (Kaiming normal, fan_out). Hypernetworks initialise themselves.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:  # as timm: each residual branch starts as zero, so every block starts as the identity
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_norm().weight)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f"{type(self).__name__} expects input of shape [B, {self.in_chans}, H, W], got {shape}")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The static stem (7x7 conv, BN, ReLU, max-pool): independent of the descriptor, so it can be cached."""
        self._check_input(x)
        return resnet_stem(self, x)

    def _features(self, x: torch.Tensor, descriptor: torch.Tensor | None) -> torch.Tensor:
        return self._blocks(resnet_stem(self, x), descriptor)

    def _blocks(self, x: torch.Tensor, descriptor: torch.Tensor | None) -> torch.Tensor:
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, descriptor)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling, then the classifier (the identity when ``num_classes == 0``)."""
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


def resnet_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stem of a ResNet laid out as timm's (``conv1``, ``bn1``, ``act1``, ``maxpool``): ours or timm's."""
    return model.maxpool(model.act1(model.bn1(model.conv1(x))))


class HyperResNet(_ResNet):
    """ResNet whose block convolutions are generated from an invariance descriptor ``i`` (one per batch).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        inv_dim: K, the descriptor length.
        in_chans: input channels (1 for spectrograms).
        width: channel multiplier of the stem (64) and stage widths (64, 128, 256, 512); rounded, at least 1.
        hyper_hidden: hidden width of each convolution's hypernetwork.
        embed_dim: E, size of each block's descriptor embedding.
        dependence: init scale of the descriptor-dependent part of each kernel (see :mod:`aiaudio.nn.hyper`).
        num_classes: classifier outputs; 0 means no classifier (``forward`` returns pooled features).
        zero_init_last: zero the last BatchNorm scale of each block, as timm's ResNet does.
        descriptor_statistics: the blocks' BatchNorm layers keep running statistics per binary descriptor and
            normalise each descriptor with its own (see :class:`~aiaudio.nn.hyper.StackedBatchNorm2d`); False keeps one
            set shared by every descriptor.
    """

    amortised = True

    def __init__(
        self,
        block: BlockType,
        layers: Sequence[int],
        *,
        inv_dim: int,
        in_chans: int = 1,
        width: float = 1.0,
        hyper_hidden: int = 32,
        embed_dim: int = 16,
        dependence: float = 0.5,
        num_classes: int = 0,
        zero_init_last: bool = True,
        descriptor_statistics: bool = False,
    ) -> None:
        if inv_dim < 1:
            raise ValueError(f"inv_dim (descriptor length K) must be >= 1, got {inv_dim}")

        def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
            return HyperConv2d(
                in_channels, out_channels, kernel_size, stride, padding, embed_dim, hyper_hidden, dependence
            )

        super().__init__(
            block,
            layers,
            in_chans,
            width,
            num_classes,
            zero_init_last,
            make_conv,
            lambda: InvarianceEmbedding(inv_dim, embed_dim),
        )
        self.inv_dim = inv_dim
        self.hyper_hidden = hyper_hidden
        self.embed_dim = embed_dim
        self.dependence = dependence
        self.descriptor_statistics = descriptor_statistics
        self.descriptor_context = DescriptorContext()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for module in stage.modules():
                if isinstance(module, StackedBatchNorm2d):
                    module.context = self.descriptor_context
                    if descriptor_statistics:
                        module.track_descriptors(inv_dim, self.descriptor_context)

    def forward_features(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, num_features, H / 32, W / 32]`` of ``x`` ``[B, in_chans, H, W]`` for descriptor ``i``.

        ``i`` is ``[K]`` for the whole batch, or ``[G, K]``: G equal groups of consecutive examples, each with its own
        descriptor (in training, each group's BatchNorm statistics are its own).
        """
        self._check_input(x)
        return self.forward_after_stem_features(resnet_stem(self, x), i)

    def forward_after_stem_features(self, stem: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The residual stages applied to a stem output (see :meth:`forward_stem`) for descriptor(s) ``i``."""
        check_descriptor(i, self.inv_dim, stem.shape[0])
        context = self.descriptor_context
        special = context.statistics is not None or context.recording is not None or context.batch_statistics
        if special and self.training:
            raise ValueError("reference BatchNorm statistics are for eval mode (a training pass uses its batch's)")
        context.descriptor = i if i.dim() == 1 or i.shape[0] > 1 else i[0]
        if self.training and self.descriptor_statistics:  # the corner whose statistics this pass updates, read once
            context.row = corner_index(context.descriptor)
        context.layer = 0
        try:
            if i.dim() == 1 or i.shape[0] == 1:
                out = self._blocks(stem, i if i.dim() == 1 else i[0])
            else:
                # The groups run stacked along channels: every block convolution is one grouped convolution.
                groups = i.shape[0]
                out = unstack_groups(self._blocks(stack_groups(stem, groups), i), groups)
            if context.statistics is not None and context.layer != len(context.statistics.means):
                raise ValueError(f"reference statistics hold {len(context.statistics.means)} layers, the model "
                                 f"normalised {context.layer}: they were measured on another model")
            return out
        finally:
            context.descriptor = None
            context.row = None

    def reference_statistics(self, stem: torch.Tensor, i: torch.Tensor) -> ReferenceStatistics:
        """Every block BatchNorm's statistics on a reference batch at descriptor(s) ``i``, for
        :meth:`using_statistics`: ``stem`` is the reference batch's stem output ``[n, C, H, W]`` (see
        :meth:`forward_stem`), ``i`` is ``[K]`` or ``[G, K]`` (the batch is then measured at each of the G
        descriptors). Needs eval mode; differentiable in ``i`` when gradients are on."""
        if self.training:
            raise ValueError("reference statistics are measured in eval mode")
        check_descriptor(i, self.inv_dim)
        groups = i.shape[0] if i.dim() == 2 and i.shape[0] > 1 else 1
        context = self.descriptor_context
        if context.statistics is not None:
            raise ValueError("reference statistics cannot be measured while others are in use")
        context.recording = []
        try:
            self.forward_after_stem_features(stem.repeat(groups, 1, 1, 1) if groups > 1 else stem, i)
            means, variances = zip(*context.recording)
        finally:
            context.recording = None
        return ReferenceStatistics(tuple(means), tuple(variances))

    @contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Within the block, eval-mode passes normalise every block BatchNorm with the statistics of the batch they
        run on (per group for stacked groups), as a training pass does, without touching the running statistics."""
        context = self.descriptor_context
        if context.statistics is not None or context.recording is not None:
            raise ValueError("batch statistics cannot be used while reference statistics are in use or measured")
        context.batch_statistics = True
        try:
            yield
        finally:
            context.batch_statistics = False

    @contextmanager
    def using_statistics(self, statistics: ReferenceStatistics | None) -> Iterator[None]:
        """Within the block, eval-mode passes normalise every block BatchNorm with ``statistics`` (from
        :meth:`reference_statistics`; for stacked groups, measured at the same G descriptors or at one) instead of the
        running statistics. None changes nothing."""
        context = self.descriptor_context
        previous, context.statistics = context.statistics, statistics
        try:
            yield
        finally:
            context.statistics = previous

    def forward_after_stem(self, stem: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Pooled features from a stem output: ``forward(x, i) == forward_after_stem(forward_stem(x), i)``."""
        return self.forward_head(self.forward_after_stem_features(stem, i))

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, num_features]`` (or logits if ``num_classes > 0``) for descriptor ``i`` ``[K]``
        (or ``[G, K]``, one per group of consecutive examples)."""
        return self.forward_head(self.forward_features(x, i))

    def hypernetwork_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of every hypernetwork and block embedding (everything else is static)."""
        for module in self.modules():
            if isinstance(module, (HyperConv2d, InvarianceEmbedding)):
                yield from module.parameters()


class StaticResNet(_ResNet):
    """The same ResNet with ordinary convolutions; with ``width=1`` its state dict matches timm's.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        in_chans: input channels.
        width: channel multiplier (as :class:`HyperResNet`).
        num_classes: classifier outputs; 0 means pooled features.
        zero_init_last: zero the last BatchNorm scale of each block, as timm's ResNet does.
    """

    def __init__(
        self,
        block: BlockType,
        layers: Sequence[int],
        *,
        in_chans: int = 1,
        width: float = 1.0,
        num_classes: int = 0,
        zero_init_last: bool = True,
    ) -> None:
        def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)

        super().__init__(block, layers, in_chans, width, num_classes, zero_init_last, make_conv, lambda: None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._features(x, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PlainEncoder(nn.Module):
    """A plain ResNet with the encoder signature ``forward(x, i=None)``; the descriptor is ignored.

    Args:
        backbone: a timm ResNet or :class:`StaticResNet` built with ``num_classes=0``.
    """

    amortised = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features: int = backbone.num_features
        self.in_chans: int = backbone.conv1.in_channels

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f"PlainEncoder expects input of shape [B, {self.in_chans}, H, W], got {shape}")

    def forward_features(self, x: torch.Tensor, i: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        return self.backbone.forward_features(x)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return resnet_stem(self.backbone, x)

    def forward_after_stem(self, stem: torch.Tensor, i: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features from a stem output; the descriptor is ignored."""
        backbone = self.backbone
        for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            stem = stage(stem)
        return backbone.forward_head(stem)

    def forward(self, x: torch.Tensor, i: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        return self.backbone(x)


def _architecture(name: str) -> tuple[BlockType, tuple[int, int, int, int]]:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def plain_resnet(name: str, in_chans: int = 1, width: float = 1.0, zero_init_last: bool = True) -> PlainEncoder:
    """A plain ResNet encoder: timm's model at ``width=1``, otherwise :class:`StaticResNet` (same layout, scaled)."""
    block, layers = _architecture(name)
    if width == 1.0:
        backbone = timm.create_model(
            name, pretrained=False, in_chans=in_chans, num_classes=0, zero_init_last=zero_init_last
        )
    else:
        backbone = StaticResNet(block, layers, in_chans=in_chans, width=width, zero_init_last=zero_init_last)
    return PlainEncoder(backbone)


def hyper_resnet(name: str, inv_dim: int, **kwargs: Any) -> HyperResNet:
    """A :class:`HyperResNet` with the blocks and depths of ``name`` (``"resnet18"`` or ``"resnet50"``)."""
    block, layers = _architecture(name)
    return HyperResNet(block, layers, inv_dim=inv_dim, **kwargs)


def _entrypoint_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the arguments ``timm.create_model`` always passes; without pretrained weights they configure nothing."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _require_inv_dim(name: str, inv_dim: int | None) -> None:
    if inv_dim is None:
        raise ValueError(f"{name} needs inv_dim (the descriptor length K), e.g. inv_dim=7")


def _refuse_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; create it with pretrained=False")


@register_model
def hyper_resnet18(
    pretrained: bool = False, *, inv_dim: int | None = None, in_chans: int = 1, width: float = 1.0, hyper_hidden: int = 32,
    embed_dim: int = 16, dependence: float = 0.5, zero_init_last: bool = True, **kwargs: Any,
) -> HyperResNet:
    """Hyper-ResNet-18 (BasicBlock, layers 2-2-2-2) for ``timm.create_model``; needs ``inv_dim``."""
    _refuse_pretrained("hyper_resnet18", pretrained)
    _require_inv_dim("hyper_resnet18", inv_dim)
    return hyper_resnet(
        "resnet18", inv_dim, in_chans=in_chans, width=width, hyper_hidden=hyper_hidden, embed_dim=embed_dim,
        dependence=dependence, zero_init_last=zero_init_last, **_entrypoint_kwargs(kwargs),
    )


@register_model
def hyper_resnet50(
    pretrained: bool = False, *, inv_dim: int | None = None, in_chans: int = 1, width: float = 1.0, hyper_hidden: int = 32,
    embed_dim: int = 16, dependence: float = 0.5, zero_init_last: bool = True, **kwargs: Any,
) -> HyperResNet:
    """Hyper-ResNet-50 (Bottleneck, layers 3-4-6-3) for ``timm.create_model``; needs ``inv_dim``."""
    _refuse_pretrained("hyper_resnet50", pretrained)
    _require_inv_dim("hyper_resnet50", inv_dim)
    return hyper_resnet(
        "resnet50", inv_dim, in_chans=in_chans, width=width, hyper_hidden=hyper_hidden, embed_dim=embed_dim,
        dependence=dependence, zero_init_last=zero_init_last, **_entrypoint_kwargs(kwargs),
    )


@register_model
def plain_resnet18(
    pretrained: bool = False, *, inv_dim: int | None = None, in_chans: int = 1, width: float = 1.0,
    zero_init_last: bool = True, **kwargs: Any,
) -> PlainEncoder:
    """A plain ResNet-18 encoder (``forward(x, i=None)``, the descriptor ignored; ``inv_dim`` accepted and unused)."""
    _refuse_pretrained("plain_resnet18", pretrained)
    _entrypoint_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"plain_resnet18 got unexpected arguments {sorted(kwargs)}")
    return plain_resnet("resnet18", in_chans=in_chans, width=width, zero_init_last=zero_init_last)


@register_model
def plain_resnet50(
    pretrained: bool = False, *, inv_dim: int | None = None, in_chans: int = 1, width: float = 1.0,
    zero_init_last: bool = True, **kwargs: Any,
) -> PlainEncoder:
    """A plain ResNet-50 encoder (``forward(x, i=None)``, the descriptor ignored; ``inv_dim`` accepted and unused)."""
    _refuse_pretrained("plain_resnet50", pretrained)
    _entrypoint_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"plain_resnet50 got unexpected arguments {sorted(kwargs)}")
    return plain_resnet("resnet50", in_chans=in_chans, width=width, zero_init_last=zero_init_last)
