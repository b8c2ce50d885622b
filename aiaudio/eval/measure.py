"""Invariance measurement (Ericsson et al., "Why do self-supervised models transfer?").

For N inputs ``x`` and each augmentation ``a`` applied at fixed parameters, the invariance of an encoder ``f`` for
a descriptor ``i`` is the mean over the inputs of the similarity of ``f(x; i)`` and ``f(a(x); i)``:

* ``metric="cosine"``: plain cosine similarity of the two feature vectors.
* ``metric="centred"``: cosine similarity after subtracting the mean clean feature (over the N inputs) from both.
  Post-ReLU features share a large common component that pushes every plain cosine towards 1; centring removes it.
* ``metric="mahalanobis"``: cosine similarity after centring on the mean clean feature and whitening with the clean
  features' covariance, i.e. ``(u - mu)^T S^-1 (v - mu) / (|u - mu|_S |v - mu|_S)``, as in Ericsson et al.'s code.
  The statistics come from the N clean inputs of each descriptor; a small ridge keeps ``S`` invertible. Use
  N well above the feature size, or the directions the clean features do not span dominate.

A value of 1 means that the features ignore the augmentation. The augmented copies are precomputed once (see
``aiaudio.audio.probes`` for audio) and reused for every descriptor, so descriptors are compared on the same inputs.

The caller puts the encoder in eval mode (BatchNorm uses its running statistics, dropout is off); this module only
turns gradients off. Nothing here knows the modality: inputs are tensors and the encoder is a callable.

Example:
    >>> model.eval()
    >>> table = measure_invariance(model, inputs, views, space.table, labels=[space.name_of(i) for i in space.table])
    >>> table.write_markdown(Path("invariance.md"))
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aiaudio.engine.files import atomic_write_text

#: ``encode(x [B, ...], i [K]) -> features [B, F]``: one descriptor for the whole batch.
Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

METRICS: tuple[str, ...] = ("cosine", "centred", "mahalanobis")


# --------------------------------------------------------------------------------------------------------------
# Features and similarities
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_all(
    encode: Encoder,
    inputs: torch.Tensor,
    descriptor: torch.Tensor,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Features ``[N, F]`` (float32, on the encoder's output device) of every input, in batches.

    Args:
        encode: ``encode(x, i) -> [B, F]``.
        inputs: ``[N, ...]``; each batch is moved to ``device`` when given.
        descriptor: ``[K]``, passed to every call (moved to ``device`` when given).
        batch_size: inputs per call.
        device: where the batches go; None leaves them where they are.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        descriptor = descriptor.to(device)
    chunks = []
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start : start + batch_size]
        if device is not None:
            batch = batch.to(device)
        features = encode(batch, descriptor)
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != batch.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"encode must return features of shape [{batch.shape[0]}, F], got {shape}")
        chunks.append(features.float())
    return torch.cat(chunks)


def whitening(features: torch.Tensor, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[F]`` and whitening matrix ``W`` ``[F, F]`` with ``W W^T = (S + r I)^-1`` for the features' covariance S.

    ``r = ridge * trace(S) / F``. Computed in float64 by an eigendecomposition.
    """
    if features.shape[0] < 2:
        raise ValueError(f"the Mahalanobis metric needs at least 2 inputs, got {features.shape[0]}")
    data = features.double()
    mean = data.mean(dim=0)
    centred = data - mean
    covariance = centred.T @ centred / (data.shape[0] - 1)
    num_features = covariance.shape[0]
    scale = float(torch.diagonal(covariance).sum()) / num_features
    covariance = covariance + ridge * max(scale, torch.finfo(torch.float64).tiny) * torch.eye(
        num_features, dtype=torch.float64, device=covariance.device
    )
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return mean.float(), (eigenvectors * eigenvalues.rsqrt()).float()


def pair_similarity(
    clean: torch.Tensor, augmented: torch.Tensor, metric: str = "cosine", ridge: float = 1e-6
) -> torch.Tensor:
    """Similarity ``[N]`` of matching rows of two feature matrices ``[N, F]``.

    For ``"centred"`` and ``"mahalanobis"`` the mean (and covariance) come from ``clean`` (see :func:`whitening`).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if clean.shape != augmented.shape or clean.dim() != 2:
        raise ValueError(f"feature matrices must both be [N, F]; got {tuple(clean.shape)} and {tuple(augmented.shape)}")
    if metric == "centred":
        mean = clean.mean(dim=0)
        clean, augmented = clean - mean, augmented - mean
    elif metric == "mahalanobis":
        mean, transform = whitening(clean, ridge)
        clean = (clean - mean) @ transform
        augmented = (augmented - mean) @ transform
    return F.cosine_similarity(clean, augmented, dim=1)


# --------------------------------------------------------------------------------------------------------------
# Tables and curves
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(inputs: torch.Tensor, views: Mapping[str, torch.Tensor], descriptors: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError("inputs must be a tensor [N, ...] with N >= 1")
    if not views:
        raise ValueError("views must map at least one augmentation name to its augmented inputs")
    for name, view in views.items():
        if not isinstance(view, torch.Tensor) or view.shape != inputs.shape:
            shape = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view).__name__
            raise ValueError(f"view {name!r} has shape {shape}; it must match the inputs' {tuple(inputs.shape)}")
    if not isinstance(descriptors, torch.Tensor) or descriptors.dim() != 2 or descriptors.shape[0] == 0:
        shape = tuple(descriptors.shape) if isinstance(descriptors, torch.Tensor) else type(descriptors).__name__
        raise ValueError(f"descriptors must be a tensor [D, K] with D >= 1, got {shape}")


@torch.no_grad()
def invariance_table(
    encode: Encoder,
    inputs: torch.Tensor,
    views: Mapping[str, torch.Tensor],
    descriptors: torch.Tensor,
    batch_size: int = 64,
    metric: str = "cosine",
    device: torch.device | str | None = None,
    ridge: float = 1e-6,
) -> torch.Tensor:
    """Mean similarity ``[D, A]`` of clean and augmented features, per descriptor and augmentation.

    Args:
        encode: ``encode(x [B, ...], i [K]) -> [B, F]``, already in eval mode.
        inputs: clean model inputs ``[N, ...]``.
        views: augmentation name -> augmented copies of ``inputs`` (same shape); columns follow its order.
        descriptors: ``[D, K]``; each row is passed to ``encode`` for clean and augmented inputs alike.
        batch_size: inputs per encoder call.
        metric: ``"cosine"``, ``"centred"`` or ``"mahalanobis"`` (see the module docstring).
        device: where batches are moved before ``encode`` (None: left where they are).
        ridge: relative ridge of the Mahalanobis covariance.

    Returns:
        float32 tensor on the CPU; entry ``[d, a]`` is the mean over the N inputs.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    _check_inputs(inputs, views, descriptors)
    table = torch.empty(descriptors.shape[0], len(views))
    for row, descriptor in enumerate(descriptors):
        clean = encode_all(encode, inputs, descriptor, batch_size, device)
        for column, view in enumerate(views.values()):
            augmented = encode_all(encode, view, descriptor, batch_size, device)
            similarity = pair_similarity(clean, augmented, metric, ridge)
            table[row, column] = similarity.double().mean().cpu()
    return table


def interpolation_descriptors(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``[steps, K]`` descriptors moving linearly from ``start`` (first row) to ``end`` (last row)."""
    start = torch.as_tensor(start, dtype=torch.float32).flatten()
    end = torch.as_tensor(end, dtype=torch.float32).flatten()
    if start.shape != end.shape:
        raise ValueError(f"start and end descriptors differ in length: {start.numel()} and {end.numel()}")
    if steps < 2:
        raise ValueError(f"an interpolation needs steps >= 2, got {steps}")
    weight = torch.linspace(0.0, 1.0, steps)[:, None]
    return torch.lerp(start[None, :].expand(steps, -1), end[None, :].expand(steps, -1), weight)


def interpolation_curve(
    encode: Encoder,
    inputs: torch.Tensor,
    views: Mapping[str, torch.Tensor],
    start: torch.Tensor,
    end: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    metric: str = "cosine",
    device: torch.device | str | None = None,
    ridge: float = 1e-6,
) -> torch.Tensor:
    """Invariance ``[steps, A]`` along the straight line of descriptors from ``start`` to ``end`` (both ``[K]``).

    Row 0 is the table row of ``start`` and row ``steps - 1`` that of ``end``; see :func:`invariance_table`.
    """
    descriptors = interpolation_descriptors(start, end, steps)
    return invariance_table(encode, inputs, views, descriptors, batch_size, metric, device, ridge)


def descriptor_text(descriptor: torch.Tensor) -> str:
    """A compact text form of a descriptor: ``"1,0,0.5"``."""
    return ",".join(f"{float(v):g}" for v in torch.as_tensor(descriptor).flatten().tolist())


@dataclass
class InvarianceTable:
    """Measured invariance: ``values[d, a]`` for descriptor ``descriptors[d]`` (labelled ``labels[d]``) and augmentation
    ``names[a]``."""

    names: tuple[str, ...]
    labels: tuple[str, ...]
    descriptors: torch.Tensor
    values: torch.Tensor
    metric: str = "cosine"
    num_inputs: int = 0

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        self.labels = tuple(self.labels)
        self.descriptors = torch.as_tensor(self.descriptors, dtype=torch.float32).detach().cpu()
        self.values = torch.as_tensor(self.values, dtype=torch.float32).detach().cpu()
        num_rows = len(self.labels)
        if self.descriptors.dim() != 2 or self.descriptors.shape[0] != num_rows:
            raise ValueError(
                f"InvarianceTable: descriptors must be [{num_rows}, K] (one per label), "
                f"got {tuple(self.descriptors.shape)}"
            )
        if self.values.shape != (num_rows, len(self.names)):
            raise ValueError(
                f"InvarianceTable: values must be [{num_rows}, {len(self.names)}] (labels x names), "
                f"got {tuple(self.values.shape)}"
            )
        if self.metric not in METRICS:
            raise ValueError(f"InvarianceTable: metric must be one of {METRICS}, got {self.metric!r}")

    def to_rows(self) -> list[dict[str, str | float]]:
        """One dict per descriptor: ``{"descriptor": label, "i": "1,0,...", name: value, ..., "mean": value}``."""
        rows: list[dict[str, str | float]] = []
        for label, descriptor, values in zip(self.labels, self.descriptors, self.values.tolist()):
            row: dict[str, str | float] = {"descriptor": label, "i": descriptor_text(descriptor)}
            row.update(zip(self.names, values))
            row["mean"] = sum(values) / len(values) if values else math.nan
            rows.append(row)
        return rows

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table, one row per descriptor, values rounded to ``digits``."""
        header = ["descriptor", "i", *self.names, "mean"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
        for row in self.to_rows():
            cells = [str(row["descriptor"]), f"`{row['i']}`"]
            cells += [f"{float(row[key]):.{digits}f}" for key in (*self.names, "mean")]
            lines.append("| " + " | ".join(cells) + " |")
        caption = f"Mean {self.metric} similarity of clean and augmented features over {self.num_inputs} inputs."
        return caption + "\n\n" + "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV text with a header row: descriptor, i, one column per augmentation, mean (full precision)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["descriptor", "i", *self.names, "mean"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_rows())
        return buffer.getvalue()

    def to_json(self) -> str:
        """JSON text holding every field (read back with :meth:`from_json`)."""
        data = {
            "metric": self.metric,
            "num_inputs": self.num_inputs,
            "names": list(self.names),
            "labels": list(self.labels),
            "descriptors": self.descriptors.tolist(),
            "values": self.values.tolist(),
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> InvarianceTable:
        """The table written by :meth:`to_json`."""
        data = json.loads(text)
        missing = [k for k in ("names", "labels", "descriptors", "values") if k not in data]
        if missing:
            raise ValueError(f"invariance table JSON lacks the keys {missing}")
        descriptors = torch.tensor(data["descriptors"], dtype=torch.float32).reshape(len(data["labels"]), -1)
        values = torch.tensor(data["values"], dtype=torch.float32).reshape(len(data["labels"]), len(data["names"]))
        return cls(
            names=tuple(data["names"]),
            labels=tuple(data["labels"]),
            descriptors=descriptors,
            values=values,
            metric=data.get("metric", "cosine"),
            num_inputs=int(data.get("num_inputs", 0)),
        )

    @classmethod
    def read_json(cls, path: Path) -> InvarianceTable:
        """Load a table written by :meth:`write_json`."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not an invariance table: {error}") from error

    def write_markdown(self, path: Path, digits: int = 3) -> Path:
        """Write :meth:`to_markdown` atomically; returns ``path``."""
        atomic_write_text(Path(path), self.to_markdown(digits))
        return Path(path)

    def write_csv(self, path: Path) -> Path:
        """Write :meth:`to_csv` atomically; returns ``path``."""
        atomic_write_text(Path(path), self.to_csv())
        return Path(path)

    def write_json(self, path: Path) -> Path:
        """Write :meth:`to_json` atomically; returns ``path``."""
        atomic_write_text(Path(path), self.to_json())
        return Path(path)


def measure_invariance(
    encode: Encoder,
    inputs: torch.Tensor,
    views: Mapping[str, torch.Tensor],
    descriptors: torch.Tensor,
    labels: Sequence[str] | None = None,
    batch_size: int = 64,
    metric: str = "cosine",
    device: torch.device | str | None = None,
    ridge: float = 1e-6,
) -> InvarianceTable:
    """:func:`invariance_table` wrapped with its names and labels (default labels: the descriptors as text)."""
    descriptors = torch.as_tensor(descriptors, dtype=torch.float32)
    if labels is None:
        labels = [descriptor_text(d) for d in descriptors] if descriptors.dim() == 2 else []
    labels = tuple(labels)
    if descriptors.dim() == 2 and len(labels) != descriptors.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {descriptors.shape[0]} descriptors")
    values = invariance_table(encode, inputs, views, descriptors, batch_size, metric, device, ridge)
    return InvarianceTable(
        names=tuple(views), labels=labels, descriptors=descriptors, values=values, metric=metric,
        num_inputs=int(inputs.shape[0]),
    )
