"""Hypernetwork convolutions whose kernels are generated from an invariance descriptor.

A residual block maps the descriptor ``i in [0, 1]^K`` to a block embedding ``e = W_e i`` (:class:`InvarianceEmbedding`,
no bias, so ``i = 0`` gives ``e = 0``). Each :class:`HyperConv2d` of the block turns ``e`` into its kernel with a small
MLP ``Linear(E, hidden) -> ReLU -> Linear(hidden, out * in * k * k)`` and convolves with it. The kernel is generated
once per forward call from one descriptor shared by the whole batch, or from one descriptor per group of consecutive
examples (few-shot evaluation learns one descriptor per episode and runs all episodes in one grouped convolution).

Initialisation. The last layer's bias is the *base kernel* (what every descriptor shares); its weight times the
hidden activations is the *descriptor-dependent* part of the kernel.

* base kernel: Kaiming normal with fan_in = in * k * k and ReLU gain, std ``s = sqrt(2 / fan_in)``;
* embedding: ``W_e ~ N(0, 1 / m)`` with ``m = max(K / 2, 1)``, so each component of ``e`` has unit variance for a
  descriptor with half of its K bits on (the typical pretraining descriptor);
* first hypernetwork layer: Kaiming normal (fan_in = E, ReLU gain) and zero bias, so ``E[hidden_j^2] = 1`` for such an
  embedding, and ``e = 0`` gives ``hidden = 0``: at initialisation the descriptor ``i = 0`` generates exactly the base
  kernel;
* last layer's weight: ``N(0, (dependence * s)^2 / hidden)``, so the descriptor-dependent part has std
  ``dependence * s`` for a typical descriptor. It grows like ``sqrt(active bits / m)`` with the number of active bits.

``dependence = 0.5`` keeps the base kernel dominant (the generated kernel's std is ``sqrt(1 + 0.25) ~ 1.12`` times the
Kaiming scale) while two descriptors already give kernels that differ by tens of percent, so the network depends on
``i`` from the first step instead of having to learn that dependence from a near-constant start.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_descriptor(descriptor: torch.Tensor, inv_dim: int, batch_size: int | None = None) -> None:
    """Raise a ValueError unless ``descriptor`` has shape ``[inv_dim]`` (one descriptor for the whole batch) or
    ``[G, inv_dim]`` (one descriptor per group of ``batch_size / G`` consecutive examples; ``G`` must divide
    ``batch_size`` when it is given)."""
    if not isinstance(descriptor, torch.Tensor):
        raise ValueError(
            f"the invariance descriptor must be a torch.Tensor of shape [{inv_dim}] or [G, {inv_dim}], "
            f"got {type(descriptor)}"
        )
    if descriptor.dim() not in (1, 2) or descriptor.shape[-1] != inv_dim or descriptor.numel() == 0:
        raise ValueError(
            f"the invariance descriptor must have shape [{inv_dim}] (one descriptor for the whole batch) or "
            f"[G, {inv_dim}] (one per group of examples), got shape {list(descriptor.shape)}"
        )
    if descriptor.dim() == 2 and batch_size is not None and batch_size % descriptor.shape[0] != 0:
        raise ValueError(
            f"{descriptor.shape[0]} descriptors cannot split a batch of {batch_size} examples into equal groups"
        )


def grouped_conv2d(
    x: torch.Tensor, kernels: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    """Convolve group ``g`` of ``x`` with ``kernels[g]``, all groups in one call.

    Args:
        x: ``[G * n, C, H, W]``, the examples of group ``g`` at rows ``g * n`` to ``(g + 1) * n - 1``; or the groups
            already stacked along channels, ``[n, G * C, H, W]`` (see :func:`stack_groups`), which is returned in the
            same stacked layout without any copy.
        kernels: ``[G, O, C, k, k]``.
        stride: convolution stride.
        padding: zero padding on each side.

    Returns:
        ``[G * n, O, H', W']`` in the same row order, or ``[n, G * O, H', W']`` for stacked input.
    """
    groups, out_channels, in_channels = kernels.shape[:3]
    flat = kernels.reshape(groups * out_channels, *kernels.shape[2:])
    if x.shape[1] == groups * in_channels:
        return F.conv2d(x, flat, None, stride, padding, groups=groups)
    out = F.conv2d(stack_groups(x, groups), flat, None, stride, padding, groups=groups)
    return unstack_groups(out, groups)


class StackedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in eval mode, also normalises G groups stacked along channels (``[n, G * C, H, W]``).

    Per-group descriptors run a Hyper-ResNet with the groups stacked along the channel axis, so that every hypernetwork
    convolution is one grouped convolution with no layout copies. Eval-mode BatchNorm is a per-channel affine map, so
    the stacked layout only needs the statistics and affine parameters repeated G times. Same parameters and state
    dict as :class:`torch.nn.BatchNorm2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.num_features or x.dim() != 4 or channels % self.num_features != 0:
            return super().forward(x)
        if self.training or self.running_mean is None:
            raise ValueError("stacked groups (per-group descriptors) need BatchNorm in eval mode with running statistics")
        groups = channels // self.num_features
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        return F.batch_norm(
            x, self.running_mean.repeat(groups), self.running_var.repeat(groups), weight, bias, False, 0.0, self.eps
        )


def stack_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[G * n, C, H, W]`` (group g at rows g*n..) -> ``[n, G * C, H, W]`` (group g at channels g*C..)."""
    n = x.shape[0] // groups
    return x.reshape(groups, n, *x.shape[1:]).transpose(0, 1).reshape(n, groups * x.shape[1], *x.shape[2:])


def unstack_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`stack_groups`."""
    channels = x.shape[1] // groups
    return x.reshape(x.shape[0], groups, channels, *x.shape[2:]).transpose(0, 1).reshape(-1, channels, *x.shape[2:])


class InvarianceEmbedding(nn.Linear):
    """Bias-free linear map from a descriptor ``[K]`` to a block embedding ``[E]``; computed in parameter precision.

    Args:
        inv_dim: K, the number of invariance factors.
        embed_dim: E, the embedding size.
    """

    def __init__(self, inv_dim: int, embed_dim: int = 16) -> None:
        if inv_dim < 1 or embed_dim < 1:
            raise ValueError(f"InvarianceEmbedding needs inv_dim >= 1 and embed_dim >= 1, got {inv_dim}, {embed_dim}")
        super().__init__(inv_dim, embed_dim, bias=False)

    def reset_parameters(self) -> None:
        """``N(0, 1 / m)``, m = max(K / 2, 1): unit-variance embeddings for descriptors with half their bits on."""
        typical_active_bits = max(self.in_features / 2.0, 1.0)
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(typical_active_bits))

    def forward(self, descriptor: torch.Tensor) -> torch.Tensor:
        """Embed a descriptor ``[K]`` (or ``[G, K]``; any float dtype or device) into ``[E]`` (or ``[G, E]``)."""
        check_descriptor(descriptor, self.in_features)
        descriptor = descriptor.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.autocast(self.weight.device.type, enabled=False):
            return F.linear(descriptor, self.weight)


class HyperConv2d(nn.Module):
    """A bias-free 2-D convolution whose kernel is generated from a block embedding by a small MLP.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size k.
        stride: convolution stride.
        padding: zero padding on each side.
        embed_dim: E, the size of the block embedding fed to the hypernetwork.
        hidden_dim: width of the hypernetwork's hidden layer.
        dependence: init std of the descriptor-dependent part of the kernel, relative to the base kernel's std, for a
            typical binary descriptor (see the module docstring). 0 makes the kernel independent of ``i`` at init.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        embed_dim: int = 16,
        hidden_dim: int = 32,
        dependence: float = 0.5,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride, embed_dim, hidden_dim) < 1 or padding < 0:
            raise ValueError(
                f"HyperConv2d got invalid sizes: in={in_channels} out={out_channels} k={kernel_size} "
                f"stride={stride} padding={padding} embed_dim={embed_dim} hidden_dim={hidden_dim}"
            )
        if dependence < 0:
            raise ValueError(f"HyperConv2d dependence must be >= 0, got {dependence}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.dependence = dependence
        self.kernel_shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.embed_to_hidden = nn.Linear(embed_dim, hidden_dim)
        # Built on the meta device and then allocated, so its large weight is initialised once (in reset_parameters).
        self.hidden_to_kernel = nn.Linear(hidden_dim, math.prod(self.kernel_shape), device="meta").to_empty(
            device=torch.get_default_device()
        )
        # Its bias is the base convolution kernel: weight-decay it like a kernel, not like a bias.
        self.hidden_to_kernel.bias_is_weight = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming base kernel, ``i``-dependent part of std ``dependence`` times it (see the module docstring)."""
        base_std = math.sqrt(2.0 / (self.in_channels * self.kernel_size * self.kernel_size))
        nn.init.kaiming_normal_(self.embed_to_hidden.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.embed_to_hidden.bias)
        nn.init.normal_(self.hidden_to_kernel.bias, std=base_std)
        if self.dependence == 0:
            nn.init.zeros_(self.hidden_to_kernel.weight)
        else:
            nn.init.normal_(self.hidden_to_kernel.weight, std=self.dependence * base_std / math.sqrt(self.hidden_dim))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, embed_dim={self.embed_dim}, hidden_dim={self.hidden_dim}"
        )

    def base_kernel(self) -> torch.Tensor:
        """The descriptor-independent part of the kernel (the last layer's bias), shape ``[out, in, k, k]``."""
        return self.hidden_to_kernel.bias.view(self.kernel_shape)

    def generate_kernel(self, embedding: torch.Tensor) -> torch.Tensor:
        """The kernel ``[out, in, k, k]`` for a block embedding ``[E]`` (or ``[G, out, in, k, k]`` for ``[G, E]``),
        in parameter precision (autocast off)."""
        if embedding.dim() not in (1, 2) or embedding.shape[-1] != self.embed_dim:
            raise ValueError(
                f"HyperConv2d expects a block embedding of shape [{self.embed_dim}] or [G, {self.embed_dim}], "
                f"got {list(embedding.shape)}"
            )
        weight = self.hidden_to_kernel.weight
        with torch.autocast(weight.device.type, enabled=False):
            hidden = F.relu(self.embed_to_hidden(embedding.to(weight.dtype)))
            return self.hidden_to_kernel(hidden).view(*embedding.shape[:-1], *self.kernel_shape)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` ``[B, in, H, W]`` with the kernel generated from ``embedding`` ``[E]``.

        With embeddings ``[G, E]``, ``x`` holds G equal groups of consecutive examples and group ``g`` is convolved
        with the kernel of ``embedding[g]`` (see :func:`grouped_conv2d`). Under autocast the kernel is cast to the autocast dtype; for channels-last input it is made channels-last too.
        """
        groups = embedding.shape[0] if embedding.dim() == 2 else 1
        if x.dim() != 4 or x.shape[1] not in (self.in_channels, groups * self.in_channels):
            raise ValueError(f"HyperConv2d expects input [B, {self.in_channels}, H, W], got {list(x.shape)}")
        kernel = self.generate_kernel(embedding)
        if torch.is_autocast_enabled(x.device.type):
            kernel = kernel.to(torch.get_autocast_dtype(x.device.type))
        if kernel.dim() == 5:
            if x.shape[1] != self.in_channels * kernel.shape[0] and x.shape[0] % kernel.shape[0] != 0:
                raise ValueError(f"{kernel.shape[0]} descriptors cannot split a batch of {x.shape[0]} into equal groups")
            return grouped_conv2d(x, kernel, self.stride, self.padding)
        if x.is_contiguous(memory_format=torch.channels_last):
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, kernel, None, self.stride, self.padding)
