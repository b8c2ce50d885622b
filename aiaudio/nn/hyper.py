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

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


class DescriptorContext:
    """The descriptor a Hyper-ResNet is running at, shared with its BatchNorm layers for the length of one forward
    call (``[K]``, or ``[G, K]`` for stacked groups; None outside a call), whether training passes update the
    per-descriptor statistics as cumulative averages (calibration) instead of moving averages, and the reference
    statistics of an eval-mode pass (see :class:`ReferenceStatistics`)."""

    def __init__(self) -> None:
        self.descriptor: torch.Tensor | None = None
        self.row: int | None = None  # the descriptor's corner when it is binary and a training pass runs (else None)
        self.cumulative = False
        self.recording: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # eval-mode norms append their batch's
        self.batch_statistics = False  # eval-mode norms normalise with their batch's statistics
        self.statistics: ReferenceStatistics | None = None  # eval-mode norms normalise with these, in layer order
        self.layer = 0  # the next norm's index into ``statistics`` during a forward call


@dataclass(frozen=True)
class ReferenceStatistics:
    """Each block BatchNorm's mean and variance on a reference batch at a descriptor (or G descriptors): the
    statistics a train-mode pass at exactly that descriptor would normalise with, for any continuous ``i``.

    Running statistics of a Hyper-ResNet are averaged over every descriptor pretraining drew, and a descriptor's
    activation statistics are not a smooth (multilinear or quadratic) function of ``i`` that a table of corners could
    interpolate; measuring them on reference data at the descriptor itself is exact.

    Attributes:
        means, variances: one ``[C]`` (one descriptor) or ``[G * C]`` (G stacked groups) tensor per block norm, in
            forward order; biased variances, as a training pass normalises with.
    """

    means: tuple[torch.Tensor, ...]
    variances: tuple[torch.Tensor, ...]


def corner_index(descriptor: torch.Tensor) -> int | None:
    """The row of a binary descriptor ``[K]`` in the corner table (bit k worth ``2^(K-1-k)``, the order of
    ``itertools.product``); None for any other descriptor. Reads the descriptor once on the host."""
    bits = descriptor.tolist()
    if descriptor.dim() != 1 or any(bit not in (0.0, 1.0) for bit in bits):
        return None
    return sum(int(bit) << (len(bits) - 1 - k) for k, bit in enumerate(bits))


#: The largest K with per-descriptor statistics (a table of 2^K rows per BatchNorm layer).
MAX_STATISTICS_DIM = 10


def corner_weights(descriptor: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Multilinear weights ``[G, R]`` of the corners ``[R, K]`` of the unit cube for descriptors ``[G, K]``:
    ``prod_k (i_k c_k + (1 - i_k)(1 - c_k))``; a binary descriptor puts all its weight on its own corner."""
    d = descriptor[:, None, :]
    return (d * corners + (1 - d) * (1 - corners)).prod(-1)


class StackedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in eval mode, also normalises G groups stacked along channels (``[n, G * C, H, W]``), and
    that can keep running statistics per binary descriptor.

    Per-group descriptors run a Hyper-ResNet with the groups stacked along the channel axis, so that every hypernetwork
    convolution is one grouped convolution with no layout copies. Eval-mode BatchNorm is a per-channel affine map, so
    the stacked layout only needs the statistics and affine parameters repeated G times.

    Per-descriptor statistics (:meth:`track_descriptors`). Each descriptor generates different kernels and so
    different activation statistics; one set of running statistics, updated whatever descriptor a step drew, fits none
    of them in eval mode, and the mismatch compounds with depth. With a :class:`DescriptorContext`, the layer also keeps
    a moving average per binary descriptor (``descriptor_mean``, ``descriptor_var``, ``descriptor_seen``, one row per
    corner of ``[0, 1]^K``), updated by training passes at that descriptor; in eval mode a descriptor ``i`` is
    normalised with the mixture of the corners' statistics under the multilinear weights of ``i``
    (:func:`corner_weights`; exactly a corner's own statistics at a binary ``i``), differentiable in ``i``. Corners never
    seen get no weight; with none seen (e.g. a checkpoint from before), the shared running statistics are used, as
    before. Without a context: exactly :class:`torch.nn.BatchNorm2d`'s parameters and state dict.
    """

    context: DescriptorContext | None = None
    tracking = False  # keeps per-descriptor statistics (track_descriptors)

    def track_descriptors(self, inv_dim: int, context: DescriptorContext) -> None:
        """Keep running statistics per binary descriptor of length ``inv_dim``, reading the descriptor from ``context``."""
        if not 1 <= inv_dim <= MAX_STATISTICS_DIM:
            raise ValueError(f"per-descriptor statistics need 1 <= K <= {MAX_STATISTICS_DIM}, got K = {inv_dim}")
        corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=inv_dim)), dtype=torch.float32)
        self.context = context
        self.tracking = True
        self.register_buffer("descriptor_corners", corners, persistent=False)
        self.register_buffer("descriptor_mean", torch.zeros(len(corners), self.num_features))
        self.register_buffer("descriptor_var", torch.ones(len(corners), self.num_features))
        self.register_buffer("descriptor_seen", torch.zeros(len(corners)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.tracking:  # a checkpoint without per-descriptor statistics: the shared ones serve
            for name in ("descriptor_mean", "descriptor_var", "descriptor_seen"):
                if prefix + name in missing_keys:
                    missing_keys.remove(prefix + name)

    @torch.no_grad()
    def _update_descriptor_statistics(self, x: torch.Tensor, row: int) -> None:
        dims = (0, 2, 3)
        mean = x.float().mean(dims)
        count = x.numel() // x.shape[1]
        var = x.float().var(dims, unbiased=count > 1)
        seen = self.descriptor_seen[row]  # kept on the device: no host read per layer
        cumulative = 1.0 / (seen + 1.0)
        if (self.context is not None and self.context.cumulative) or self.momentum is None:
            rate = cumulative
        else:
            rate = torch.where(seen == 0, cumulative, torch.full_like(seen, self.momentum))
        self.descriptor_mean[row].lerp_(mean, rate)
        self.descriptor_var[row].lerp_(var, rate)
        self.descriptor_seen[row] += 1

    def _descriptor_statistics(self, descriptor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``[G, C]`` for descriptors ``[G, K]`` from the corners seen; a descriptor none of whose
        corners was seen gets the shared running statistics. No host reads (nothing waits for the device)."""
        weights = corner_weights(descriptor.to(self.descriptor_mean.dtype), self.descriptor_corners)
        weights = weights * (self.descriptor_seen > 0)
        total = weights.sum(-1, keepdim=True)
        weights = weights / total.clamp_min(1e-6)
        mean = weights @ self.descriptor_mean
        var = (weights @ (self.descriptor_var + self.descriptor_mean**2) - mean**2).clamp_min(0.0)
        own = total > 1e-6
        return torch.where(own, mean, self.running_mean), torch.where(own, var, self.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = self.context.descriptor if self.context is not None else None
        channels = x.shape[1]
        stacked = not (channels == self.num_features or x.dim() != 4 or channels % self.num_features != 0)
        if stacked and self.training:
            return self._train_stacked(x, channels // self.num_features)
        if self.training:
            row = self.context.row if self.context is not None else None
            if row is not None and self.tracking and self.track_running_stats:
                self._update_descriptor_statistics(x, row)
            return super().forward(x)
        groups = channels // self.num_features if stacked else 1
        context = self.context
        if context is not None and context.batch_statistics:
            return self._batch_normalise(x, groups)
        if context is not None and context.recording is not None:
            mean, var = x.float().mean((0, 2, 3)), x.float().var((0, 2, 3), unbiased=False)
            context.recording.append((mean, var))
            return self._normalise(x, mean, var, groups)
        if context is not None and context.statistics is not None:
            index, context.layer = context.layer, context.layer + 1
            means = context.statistics.means
            if index >= len(means) or means[index].numel() not in (channels, self.num_features):
                raise ValueError(f"reference statistics do not fit BatchNorm layer {index} ({self.num_features} "
                                 "channels): they were measured on another model")
            mean, var = means[index], context.statistics.variances[index]
            if mean.numel() != channels:  # measured at one descriptor, run on stacked groups of it
                mean, var = mean.repeat(groups), var.repeat(groups)
            return self._normalise(x, mean, var, groups)
        if stacked and self.running_mean is None:
            raise ValueError("stacked groups (per-group descriptors) need running or reference BatchNorm statistics")
        if not self.tracking:
            descriptor = None
        if self.running_mean is None or (descriptor is None and not stacked):
            return super().forward(x)
        if descriptor is None:
            mean, var = self.running_mean.repeat(groups), self.running_var.repeat(groups)
        else:
            mean, var = self._descriptor_statistics(descriptor.reshape(-1, descriptor.shape[-1]))
            mean, var = mean.reshape(-1), var.reshape(-1)
            if mean.numel() != channels:  # one descriptor for stacked groups of the same descriptor
                mean, var = mean.repeat(groups), var.repeat(groups)
        return self._normalise(x, mean, var, groups)

    def _train_stacked(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        """A training pass over G groups stacked along channels: each group normalised with its own batch
        statistics; the running statistics move towards the groups' average (per-descriptor statistics are not
        updated: a step with several descriptors is no corner's)."""
        if self.running_mean is not None and self.track_running_stats:
            with torch.no_grad():
                count = x.numel() // x.shape[1]
                mean = x.float().mean((0, 2, 3)).view(groups, -1).mean(0)
                var = x.float().var((0, 2, 3), unbiased=count > 1).view(groups, -1).mean(0)
                self.num_batches_tracked += 1
                rate = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var, rate)
        return self._batch_normalise(x, groups)

    def _batch_normalise(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        """``x`` normalised with its own batch statistics, per stacked group, and the affine parameters."""
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)

    def _normalise(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, groups: int) -> torch.Tensor:
        """``x`` normalised with per-channel ``mean`` and ``var`` (``[groups * C]``) and the affine parameters."""
        weight = self.weight.repeat(groups) if self.weight is not None else torch.ones_like(mean)
        bias = self.bias.repeat(groups) if self.bias is not None else torch.zeros_like(mean)
        scale = weight * torch.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


def calibrate_descriptor_statistics(model: nn.Module, batches: Iterable[torch.Tensor], descriptors: torch.Tensor,
                                    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> int:
    """Recompute the per-descriptor BatchNorm statistics of ``model`` (a Hyper-ResNet with
    :meth:`StackedBatchNorm2d.track_descriptors` layers) as cumulative averages over ``batches`` at each of
    ``descriptors`` ``[D, K]`` (train-mode passes without gradients; weights and every shared running statistic,
    the stem's too, unchanged);
    ``forward(x, i)`` runs the model (default ``model(x, i)``). Returns the number of layers calibrated."""
    norms = [m for m in model.modules() if isinstance(m, StackedBatchNorm2d) and m.tracking]
    if not norms:
        raise ValueError("the model keeps no per-descriptor BatchNorm statistics to calibrate")
    batches = list(batches)
    shared = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in shared]
    was_training = model.training
    context = norms[0].context
    run = forward or model
    try:
        context.cumulative = True
        model.train()
        with torch.no_grad():
            for descriptor in descriptors:
                row = corner_index(descriptor)
                if row is None:
                    raise ValueError(f"calibration descriptors must be binary, got {descriptor.tolist()}")
                for norm in norms:
                    norm.descriptor_seen[row] = 0
                for batch in batches:
                    run(batch, descriptor)
    finally:
        context.cumulative = False
        model.train(was_training)
        for norm, (mean, var, tracked) in zip(shared, saved):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(tracked)
    return len(norms)


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
        self.descriptor_dependent = ("weight",)

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
        # Its bias is the base convolution kernel: weight-decay it like a kernel, not like a bias. Everything else
        # carries the descriptor's influence (an optimiser may treat it apart: trainer.hyper_lr_scale).
        self.hidden_to_kernel.bias_is_weight = True
        self.hidden_to_kernel.descriptor_dependent = ("weight",)
        self.embed_to_hidden.descriptor_dependent = ("weight", "bias")
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
