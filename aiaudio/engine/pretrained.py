"""Checkpoints that describe their encoder, and the frozen encoder that evaluation loads from them.

Every checkpoint holds ``encoder.json`` beside its weights, a record of how to rebuild the encoder and its input
transform from nothing but the record and the weights file::

    {"format": 1,
     "encoder": {"name": "hyper_resnet18", "kwargs": {"inv_dim": 7, "in_chans": 1, "width": 0.5, ...},
                 "module": "aiaudio.nn", "weights_prefix": "method.encoder."},
     "amortised": true,
     "space": {"names": ["pitch_shift", ...], "min_active": 2},
     "input": {"kind": "logmel", "module": "aiaudio.audio.frontend", "config": {...},
               "weights_prefix": "views.augment.frontend."}}

The encoder is ``timm.create_model(name, **kwargs)``; ``module`` is imported first when the name is not yet
registered. The input transform is built by the builder registered for ``kind`` (:func:`register_input_transform`)
from ``config``, and its buffers (normalisation statistics) are loaded from the weights under ``weights_prefix``.
Only modules of this toolkit (``aiaudio.*``, ``aivision.*``) or modules already imported are ever imported on a
record's say-so.

Example:
    >>> encoder = load_encoder("runs/ai_simclr")            # a run directory or a checkpoint directory
    >>> features = encoder.embed(raw_inputs, {"spatial": 1, "appearance": 0.2})
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import resolve_checkpoint
from aiaudio.invariance import InvarianceSpace
from aiaudio.nn.registry import create_encoder

ENCODER_RECORD = "encoder.json"
RECORD_FORMAT = 1
_REFERENCE_CACHE_SIZE = 256  # descriptors whose reference statistics are kept
_BATCH_STATISTICS_ROWS = 64  # a batch with a descriptor to learn normalises with its own statistics from this size
_TRUSTED_PACKAGES = ("aiaudio", "aivision")

#: ``kind -> builder(config mapping) -> nn.Module``: how each input transform is rebuilt from a record.
_INPUT_TRANSFORMS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {}

Invariance = Mapping[str, float] | Sequence[float] | torch.Tensor | str | None


def register_input_transform(kind: str) -> Callable[[Callable[[Mapping[str, Any]], nn.Module]], Callable]:
    """Register ``builder(config) -> nn.Module`` as the input transform of records of ``kind`` (a decorator)."""

    def decorate(builder: Callable[[Mapping[str, Any]], nn.Module]) -> Callable[[Mapping[str, Any]], nn.Module]:
        _INPUT_TRANSFORMS[kind] = builder
        return builder

    return decorate


@register_input_transform("identity")
def _identity_transform(config: Mapping[str, Any]) -> nn.Module:
    return nn.Identity()


def module_path(root: nn.Module, part: nn.Module) -> str:
    """The dotted name of submodule ``part`` inside ``root`` plus a trailing dot (its state-dict key prefix)."""
    for name, module in root.named_modules():
        if module is part:
            return f"{name}." if name else ""
    raise ValueError(f"{type(part).__name__} is not a submodule of {type(root).__name__}")


def encoder_record(
    model: nn.Module, encoder: nn.Module, name: str, kwargs: Mapping[str, Any], space: InvarianceSpace,
    transform: nn.Module | None = None, transform_kind: str = "identity", transform_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of ``encoder`` (built as ``name(**kwargs)``) and its input ``transform``, both inside ``model``
    (the module whose state dict the checkpoint saves)."""
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "encoder": {
            "name": name, "kwargs": dict(kwargs), "module": type(encoder).__module__,
            "weights_prefix": module_path(model, encoder),
        },
        "amortised": bool(encoder.amortised),
        "space": {"names": list(space.names), "min_active": space.min_active},
        "input": {"kind": transform_kind, "config": dict(transform_config or {})},
    }
    if transform is not None:
        record["input"]["module"] = type(transform).__module__
        record["input"]["weights_prefix"] = module_path(model, transform)
    return record


def _import_trusted(module: str | None, where: Path, what: str) -> None:
    if not module or module in sys.modules:
        return
    if module.split(".")[0] not in _TRUSTED_PACKAGES:
        raise ConfigError(
            f"{where}: the {what} comes from module {module!r}, which is neither imported nor part of this toolkit; "
            "import it yourself before loading if you trust it"
        )
    importlib.import_module(module)


def read_record(checkpoint: Path) -> dict[str, Any] | None:
    """The encoder record of a checkpoint directory, or None when it has none (written before records existed)."""
    path = Path(checkpoint) / ENCODER_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a readable encoder record ({error})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ConfigError(f"{path}: unknown encoder record format {record.get('format') if isinstance(record, dict) else record!r}")
    return record


def _load_prefixed(module: nn.Module, weights: Path, prefix: str, device: torch.device) -> None:
    with safe_open(str(weights), framework="pt", device=str(device)) as handle:
        state = {key[len(prefix):]: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}
    if not state and list(module.state_dict()):
        raise ConfigError(f"{weights} holds no weights under {prefix!r}, which the encoder record names")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights} under {prefix!r} does not fit the recorded model: missing {missing}, unexpected {unexpected}")


def load_encoder(
    path: str | Path, device: str | torch.device = "cpu", record: Mapping[str, Any] | None = None
) -> PretrainedEncoder:
    """The frozen encoder of a pretraining run directory (its latest checkpoint) or of a checkpoint directory.

    ``record`` replaces the checkpoint's ``encoder.json`` (a modality derives one for checkpoints that predate it).
    """
    checkpoint = resolve_checkpoint(Path(path))
    record = record if record is not None else read_record(checkpoint)
    if record is None:
        raise ConfigError(
            f"{checkpoint} has no {ENCODER_RECORD} (it was written before checkpoints described their encoder); "
            "load it with the command of its modality (aiaudio), which rebuilds the record from config.yaml"
        )
    device = torch.device(device)
    where = checkpoint / ENCODER_RECORD
    spec, input_spec = record["encoder"], record["input"]
    _import_trusted(spec.get("module"), where, "encoder")
    _import_trusted(input_spec.get("module"), where, "input transform")
    encoder = create_encoder(spec["name"], spec["kwargs"])
    weights = checkpoint / "model.safetensors"
    _load_prefixed(encoder, weights, spec["weights_prefix"], torch.device("cpu"))
    kind = input_spec["kind"]
    if kind not in _INPUT_TRANSFORMS:
        raise ConfigError(f"{where}: no input transform of kind {kind!r} is registered (known: {sorted(_INPUT_TRANSFORMS)})")
    transform = _INPUT_TRANSFORMS[kind](input_spec.get("config", {}))
    if "weights_prefix" in input_spec:
        _load_prefixed(transform, weights, input_spec["weights_prefix"], torch.device("cpu"))
    space = InvarianceSpace(record["space"]["names"], min_active=record["space"]["min_active"])
    return PretrainedEncoder(encoder, transform, space, record["amortised"], checkpoint).to(device)


class PretrainedEncoder(nn.Module):
    """A frozen encoder ``h(x; i)`` in eval mode, its input transform and its invariance space.

    Args:
        encoder: an invariance encoder (``forward(x, i)``; ``forward_stem`` / ``forward_after_stem`` when it has a
            descriptor-independent stem worth caching).
        transform: raw inputs (waveforms, images) -> model inputs, with the pretraining statistics.
        space: the invariance space of the descriptor.
        amortised: whether the encoder depends on the descriptor (a plain baseline ignores it).
        source: the checkpoint directory it came from.
    """

    def __init__(
        self, encoder: nn.Module, transform: nn.Module, space: InvarianceSpace, amortised: bool, source: Path | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.transform = transform.eval()
        self.space = space
        self.amortised = amortised
        self.source = source
        self.num_features: int = encoder.num_features
        self.reference: torch.Tensor | None = None  # stem outputs of the reference batch (measured_statistics)
        self._reference_cache: dict[tuple, object] = {}

    @property
    def measures_statistics(self) -> bool:
        """Whether the encoder's normalisation statistics can be measured at a descriptor (a Hyper-ResNet's can)."""
        return self.amortised and hasattr(self.encoder, "reference_statistics")

    @contextlib.contextmanager
    def measured_statistics(self, inputs: torch.Tensor | None) -> Iterator[None]:
        """Within the block, normalise at every descriptor with BatchNorm statistics measured on ``inputs`` (a batch
        of model inputs as :meth:`forward` takes them, e.g. 256 training examples; :meth:`inputs` makes them from raw
        ones) at that very descriptor, instead of the running statistics, which
        pretraining averaged over every descriptor it drew and which fit none of them. None, or an encoder without
        such statistics (plain encoders, Prompt-ViTs), changes nothing. While a descriptor is learned (it needs a gradient), a batch
        of at least 64 examples normalises with its own statistics at that descriptor, as a training pass does (exact
        and free); a smaller one with the reference's, measured with a gradient. Other descriptors use the
        reference's, measured once per descriptor and cached."""
        if inputs is None or not self.measures_statistics:
            yield
            return
        if len(inputs) < 2:
            raise ValueError(f"a reference batch needs at least 2 examples, got {len(inputs)}")
        previous = self.reference, self._reference_cache
        with torch.no_grad():
            self.reference = self.forward_stem(inputs.to(self.device))
        self._reference_cache = {}
        try:
            yield
        finally:
            self.reference, self._reference_cache = previous

    def _using(self, i: torch.Tensor | None, rows: int) -> Any:
        """How a forward pass of ``rows`` examples at ``i`` normalises: the running statistics (no reference); the
        batch's own statistics at ``i``, when ``i`` needs a gradient and the batch is large enough to measure them
        (a training pass's normalisation, exact and free); else the reference's statistics at ``i`` (measured with
        a gradient when ``i`` needs one, otherwise once per descriptor and cached)."""
        if self.reference is None or i is None:
            return contextlib.nullcontext()
        if i.requires_grad and torch.is_grad_enabled():
            if rows >= _BATCH_STATISTICS_ROWS:
                return self.encoder.batch_statistics()
            return self.encoder.using_statistics(self.encoder.reference_statistics(self.reference, i))
        key = (tuple(i.shape), tuple(i.detach().flatten().tolist()))
        if key not in self._reference_cache:
            if len(self._reference_cache) >= _REFERENCE_CACHE_SIZE:
                self._reference_cache.clear()
            with torch.no_grad():
                self._reference_cache[key] = self.encoder.reference_statistics(self.reference, i.detach())
        return self.encoder.using_statistics(self._reference_cache[key])

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Always eval: BatchNorm statistics and the weights stay frozen."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def descriptor(self, invariance: Invariance = None) -> torch.Tensor:
        """A descriptor ``[K]`` from a mapping naming every factor, K numbers, text (``"name=0.2,..."``, ``"all"`` or
        ``"none"``) or None (all on)."""
        if invariance is None or (isinstance(invariance, str) and invariance.strip() == "all"):
            return self.space.all_on()
        if isinstance(invariance, str) and invariance.strip() == "none":
            return torch.zeros(self.space.dim)
        try:
            if isinstance(invariance, str):
                return self.space.parse(invariance)
            return self.space.to_vector(invariance)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"invariance {invariance!r}: {error.args[0] if error.args else error}") from error

    def inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """Model inputs from raw inputs, through the input transform, on the encoder's device."""
        return self.transform(raw.to(self.device))

    @torch.no_grad()
    def embed(self, raw: torch.Tensor, invariance: Invariance = None, batch_size: int = 64) -> torch.Tensor:
        """Features ``[B, num_features]`` of raw inputs at one invariance, in batches."""
        descriptor = self.descriptor(invariance).to(self.device)
        chunks = [self(self.inputs(raw[start : start + batch_size]), descriptor)
                  for start in range(0, max(len(raw), 1), batch_size)]
        return torch.cat(chunks).float()

    def forward(self, x: torch.Tensor, i: torch.Tensor | None) -> torch.Tensor:
        """Features of model inputs ``x`` for descriptor(s) ``i`` (``[K]``, or ``[G, K]`` for G groups of examples)."""
        with self._using(i, x.shape[0]):
            return self.encoder(x, i)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The descriptor-independent part (the identity for an encoder without a separable stem)."""
        stem = getattr(self.encoder, "forward_stem", None)
        return stem(x) if stem is not None else x

    def forward_after_stem(self, stem: torch.Tensor, i: torch.Tensor | None) -> torch.Tensor:
        after = getattr(self.encoder, "forward_after_stem", None)
        with self._using(i, stem.shape[0]):
            return after(stem, i) if after is not None else self.encoder(stem, i)

    def fingerprint(self) -> str:
        """A short hash of the weights file: cached features are keyed by it."""
        if self.source is None:
            raise ValueError("this encoder was not loaded from a checkpoint, so it has no fingerprint")
        return file_digest(self.source / "model.safetensors")


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
