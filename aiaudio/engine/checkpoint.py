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
          checksums.json             the SHA-256 of every file above, checked before a resume or a load

A checkpoint is written into a hidden temporary directory, flushed, and renamed into place; only then is ``latest``
replaced (write-then-rename). A crash at any moment leaves the previous checkpoint intact and ``latest`` pointing to a
complete one. A checkpoint whose files no longer match their checksums (a truncated copy, a flipped bit) is passed
over, with a warning, for the newest intact one (:func:`intact_checkpoints`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from aiaudio.engine.files import atomic_write_text, fsync_file, publish_directory

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKSUMS = "checksums.json"
REQUIRED_FILES: tuple[str, ...] = ("model.safetensors", "config.yaml", "state.pt")
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
    try:
        save_weights(model, tmp / "model.safetensors")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        for file_name, text in (extra_files or {}).items():
            (tmp / file_name).write_text(text, encoding="utf-8")
        torch.save({"format": CHECKPOINT_FORMAT, "step": step, **training_state}, tmp / "state.pt")
        write_checksums(tmp)
        for file in tmp.iterdir():
            os.chmod(file, 0o644)  # as readable as the rest of the run, whatever the writer's default
            fsync_file(file)
    except (OSError, RuntimeError) as error:
        written = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free
        full = getattr(error, "errno", None) == errno.ENOSPC or free < max(written, 1 << 26)
        previous = latest_checkpoint(run_dir)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {root}: "
            + (f"the disk is full ({free / 2**20:.0f} MiB free after removing the partial checkpoint)"
               if full else f"{error}")
            + f"; the previous checkpoint ({previous if previous else 'none'}) is intact. Free space (or move the "
            "run) and rerun the same command to resume"
        ) from error
    publish_directory(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    _prune(root, keep)
    return final


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, say); the previous checkpoint is untouched."""


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint directory ``latest`` names (not checked against its checksums: see :func:`intact_checkpoints`),
    or None when the run has none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    return pointer.parent / pointer.read_text(encoding="utf-8").strip()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the SHA-256 of every file of a checkpoint directory in its ``checksums.json``."""
    sums = {p.name: file_sha256(p) for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (Path(directory) / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")


def checkpoint_problem(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be trusted (a missing file, a checksum that does not match), or None.

    A checkpoint written before checksums were recorded is trusted when its files are present.
    """
    directory = Path(directory)
    for required in REQUIRED_FILES:
        if not (directory / required).is_file():
            return f"it lacks {required}"
    listing = directory / CHECKSUMS
    if not listing.is_file():
        return None
    try:
        sums = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its {CHECKSUMS} does not read ({error})"
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            return f"it lacks {name}"
        if file_sha256(path) != expected:
            return f"{name} does not match its checksum (truncated or altered)"
    return None


def intact_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints to resume from, best first: ``latest``, then the others newest first, each checked
    against its checksums; a damaged one is named in a warning and left out."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    named = [root / pointer.read_text(encoding="utf-8").strip()] if pointer.is_file() else []
    others = sorted((p for p in root.glob("step_*") if p.is_dir() and p not in named), reverse=True)
    intact = []
    for candidate in named + others:
        problem = checkpoint_problem(candidate)
        if problem is None:
            intact.append(candidate)
        else:
            log.warning("checkpoint %s is damaged (%s); passing over it", candidate, problem)
    return intact


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory from a run directory (its latest checkpoint) or a checkpoint directory itself."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise FileNotFoundError(f"checkpoint {path} is damaged: {problem}")
        return path
    if latest_checkpoint(path) is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory (with model.safetensors) nor a run directory with checkpoints/latest")
    intact = intact_checkpoints(path)
    if not intact:
        raise FileNotFoundError(f"{path} holds no intact checkpoint (each is damaged; see the warnings)")
    return intact[0]


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The resumable state saved beside a checkpoint's weights."""
    state = torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint}/state.pt has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    return state
