"""Metrics as JSON lines (and TensorBoard when it is installed), written by rank 0."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from aiaudio.engine.files import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step to ``run_dir/metrics.jsonl``.

    On resume from step ``s`` the lines of steps after ``s`` (written by the interrupted run past its last
    checkpoint) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                log.debug("tensorboard is not installed; metrics go to %s only", self.path)

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` for ``step`` (the number of completed steps)."""
        if not self.enabled:
            return
        record = {"step": step, **values}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (torn) line is dropped on resume


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
