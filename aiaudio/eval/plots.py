"""Figures of measured and learned invariance, written as PNG files with matplotlib's Agg renderer.

Every function takes plain numbers (tensors, arrays or sequences), checks their lengths against the names, writes the
figure atomically (a temporary file in the same directory, then ``os.replace``) and returns the path. No global
pyplot state is used, so the functions are safe in scripts, tests and worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aiaudio.engine.files import atomic_output

ArrayLike = Sequence[float] | np.ndarray

_DPI = 120


def _as_matrix(values: object, what: str) -> np.ndarray:
    """``values`` as a finite float64 array of 1 or 2 dimensions (a torch tensor is detached to the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D or 2-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains non-finite values")
    return array


def _check_names(names: Sequence[str], count: int, what: str) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{what}: got {len(names)} names for {count} values")
    return names


def _png_path(path: Path | str) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: figures are written as PNG; use a .png file name")
    return path


def _save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to ``path`` as PNG via a temporary file in the same directory."""
    with atomic_output(path) as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def radar_chart(
    values: ArrayLike,
    names: Sequence[str],
    path: Path | str,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> Path:
    """Radar chart of invariance per augmentation: one polygon per descriptor.

    Args:
        values: ``[A]`` (one descriptor) or ``[D, A]`` (D descriptors on one chart), e.g. mean similarities.
        names: the A augmentation names (one spoke each).
        path: output ``.png`` file.
        title: figure title.
        labels: D legend entries (required with a legend; default: no legend for one row, "row d" otherwise).

    The radius runs from ``min(0, smallest value)`` to ``max(1, largest value)``.
    """
    path = _png_path(path)
    matrix = _as_matrix(values, "radar_chart values")
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    names = _check_names(names, matrix.shape[1], "radar_chart")
    if len(names) < 3:
        raise ValueError(f"radar_chart needs at least 3 augmentations (spokes), got {len(names)}")
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != matrix.shape[0]:
            raise ValueError(f"radar_chart: got {len(labels)} labels for {matrix.shape[0]} rows of values")
    elif matrix.shape[0] > 1:
        labels = [f"row {d}" for d in range(matrix.shape[0])]

    angles = np.linspace(0.0, 2.0 * math.pi, len(names), endpoint=False)
    closed_angles = np.append(angles, angles[0])
    fig = Figure(figsize=(8.0, 6.4))
    ax = fig.add_axes((0.12, 0.1, 0.62, 0.75), projection="polar")
    ax.set_theta_offset(math.pi / 2.0)
    ax.set_theta_direction(-1)
    for row, values_row in enumerate(matrix):
        closed = np.append(values_row, values_row[0])
        label = labels[row] if labels is not None else None
        line = ax.plot(closed_angles, closed, linewidth=1.8, marker="o", markersize=4, label=label)[0]
        ax.fill(closed_angles, closed, color=line.get_color(), alpha=0.12)
    low, high = min(0.0, float(matrix.min())), max(1.0, float(matrix.max()))
    ax.set_ylim(low, high)
    ax.set_xticks(angles)
    ax.set_xticklabels([_pretty(n) for n in names], fontsize=10)
    ax.tick_params(axis="x", pad=6)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, alpha=0.4)
    if title:
        ax.set_title(title, fontsize=12, pad=20)
    if labels is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.05), fontsize=9, frameon=False)
    return _save(fig, path)


def interpolation_plot(
    curve: ArrayLike,
    names: Sequence[str],
    path: Path | str,
    start_label: str,
    end_label: str,
    title: str = "",
    ylabel: str = "invariance (mean cosine similarity)",
) -> Path:
    """Invariance of each augmentation as the descriptor moves linearly from a start to an end descriptor.

    Args:
        curve: ``[steps, A]`` (``steps >= 2``), e.g. from :func:`aiaudio.eval.measure.interpolation_curve`.
        names: the A augmentation names (one line each).
        path: output ``.png`` file.
        start_label, end_label: what the descriptors at 0 and 1 are (x-axis end labels).
        title: figure title.
        ylabel: y-axis label.
    """
    path = _png_path(path)
    matrix = _as_matrix(curve, "interpolation curve")
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"interpolation curve must be [steps >= 2, A], got shape {matrix.shape}")
    names = _check_names(names, matrix.shape[1], "interpolation_plot")
    position = np.linspace(0.0, 1.0, matrix.shape[0])
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    for column, name in enumerate(names):
        ax.plot(position, matrix[:, column], marker="o", markersize=3, linewidth=1.6, label=_pretty(name))
    ax.set_xlim(0.0, 1.0)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xticklabels([f"{start_label}\n(0)", "0.25", "0.5", "0.75", f"{end_label}\n(1)"])
    ax.set_xlabel("interpolation weight of the end descriptor")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def learned_invariance_bars(
    per_task: Mapping[str, ArrayLike],
    names: Sequence[str],
    path: Path | str,
    title: str = "Learned invariance per task",
) -> Path:
    """Grouped bar chart of a learned descriptor per task, in percent: one group per augmentation, one bar per task.

    Args:
        per_task: task name -> learned strengths ``[A]`` (fractions, 1 = 100 %).
        names: the A augmentation names.
        path: output ``.png`` file.
        title: figure title.
    """
    path = _png_path(path)
    if not per_task:
        raise ValueError("learned_invariance_bars needs at least one task")
    tasks = [str(task) for task in per_task]
    rows = []
    for task, strengths in per_task.items():
        row = _as_matrix(strengths, f"learned invariance of task {task!r}")
        if row.ndim != 1:
            raise ValueError(f"learned invariance of task {task!r} must be 1-D, got shape {row.shape}")
        _check_names(names, row.shape[0], f"learned_invariance_bars (task {task!r})")
        rows.append(row)
    names = [str(n) for n in names]
    percent = 100.0 * np.stack(rows)  # [tasks, A]

    fig = Figure(figsize=(min(16.0, max(7.0, len(names) * (0.6 + 0.25 * len(tasks)) + 2.0)), 4.5))
    ax = fig.add_subplot()
    group = np.arange(len(names), dtype=np.float64)
    width = 0.8 / len(tasks)
    for index, task in enumerate(tasks):
        offset = (index - (len(tasks) - 1) / 2.0) * width
        ax.bar(group + offset, percent[index], width=width, label=task)
    ax.set_xticks(group)
    ax.set_xticklabels([_pretty(n) for n in names], rotation=20, ha="right")
    ax.set_ylabel("learned invariance (%)")
    ax.set_ylim(min(0.0, float(percent.min()) - 5.0), max(100.0, float(percent.max()) + 5.0))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
