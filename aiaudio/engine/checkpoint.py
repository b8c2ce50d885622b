"""Atomic checkpoints: weights as safetensors, the resolved config, and a resumable training state.

Layout of a run directory::

    run_dir/
      config.yaml                    the resolved config of the run
      metrics.jsonl                  one JSON object per logged step
      checkpoints/
        latest                       text: name of the newest complete checkpoint
        step_00001000/
          model.safetensors          weights (loadable without unpickling)
          config.yaml                the resolved config
          encoder.json               how to rebuild the encoder and its input transform (see aiaudio.engine.pretrained)
          state.pt                   optimizer, scheduler and step, for exact resume

A checkpoint is written into a hidden temporary directory, flushed, and renamed into place; only then is ``latest``
replaced (write-then-rename). A crash at any moment leaves the previous checkpoint intact and ``latest`` pointing to a
complete one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from aiaudio.engine.files import atomic_write_text, fsync_file, publish_directory

CHECKPOINT_FORMAT = 1
#: The ``format`` entry of every weights file's safetensors metadata.
WEIGHTS_FORMAT_TAG = "amortised-invariance"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_weights(model: nn.Module, path: Path) -> None:
    """Save a module's state dict as safetensors (tensors made contiguous and unshared)."""
    state = {key: value.detach().contiguous().clone() for key, value in unwrap(model).state_dict().items()}
    save_file(state, str(path), metadata={"format": WEIGHTS_FORMAT_TAG, "version": str(CHECKPOINT_FORMAT)})


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights into ``model`` (on its device); missing or unexpected keys are an error when strict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    target = unwrap(model)
    device = next(iter(target.state_dict().values())).device
    state = load_file(str(path), device=str(device))
    result = target.load_state_dict(state, strict=strict)
    if strict and (result.missing_keys or result.unexpected_keys):  # pragma: no cover - load_state_dict raises first
        raise KeyError(f"{path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    config: dict[str, Any],
    training_state: dict[str, Any],
    keep: int = 2,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Atomically write the checkpoint after ``step`` completed steps; keep the newest ``keep`` (>= 1) checkpoints.

    ``extra_files`` maps file names to text written beside the weights (``encoder.json``).
    """
    if keep < 1:
        raise ValueError(f"a run keeps at least its newest checkpoint: keep must be >= 1, got {keep}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for file_name, text in (extra_files or {}).items():
        (tmp / file_name).write_text(text, encoding="utf-8")
    torch.save({"format": CHECKPOINT_FORMAT, "step": step, **training_state}, tmp / "state.pt")
    for file in tmp.iterdir():
        fsync_file(file)
    publish_directory(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None when it has none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    for required in ("model.safetensors", "config.yaml", "state.pt"):
        if not (path / required).is_file():
            raise FileNotFoundError(f"checkpoint {path} named by {pointer} lacks {required}")
    return path


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory from a run directory (its latest checkpoint) or a checkpoint directory itself."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory (with model.safetensors) nor a run directory with checkpoints/latest")
    return found


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The resumable state saved beside a checkpoint's weights."""
    state = torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint}/state.pt has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    return state
