"""Atomic file and folder output: a reader never sees a half-written file, a crash never damages the old one.

One place for the write-then-rename pattern. A file is written to a hidden temporary sibling (same folder, so the
rename stays on one file system), flushed to disk, then renamed over the target with ``os.replace``. A folder is
built under a hidden sibling name and published the same way (an existing one is swapped out first, then deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from aiaudio.config import ConfigError


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unique name beside ``path`` (``.NAME.TAG-PID-RANDOM``), keeping ``path``'s suffix."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is flushed and renamed to ``path``, on error removed.

    The temporary name keeps ``path``'s suffix, so writers that add one (``np.save``, ``savefig``) leave it alone.

    Example:
        >>> with atomic_output(out / "features.npy") as tmp:
        ...     np.save(tmp, table)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def publish_directory(partial: Path, final: Path) -> None:
    """Move a finished folder ``partial`` to ``final``; an existing ``final`` is swapped out first, then deleted.

    Every file in ``partial`` should already be flushed (see :func:`fsync_file`).
    """
    partial, final = Path(partial), Path(final)
    if final.exists():
        retired = temporary_sibling(final, "retired")
        os.replace(final, retired)
        os.replace(partial, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(partial, final)


def ensure_writable_folder(folder: Path | str, what: str = "files") -> None:
    """Create ``folder`` if needed and write and delete a probe file in it; a ConfigError naming it when either fails
    (so a run stops at its start, not at its first checkpoint)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(folder / "write-test")
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{what} cannot be written to {folder} ({error}); choose a writable folder") from None


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: Path | str, what: str = "run") -> Iterator[Path]:
    """Hold ``folder/.lock`` (host name, PID) while the block runs; refuse a lock that another live process holds.

    A lock left by a process of this host that no longer runs is taken over. A lock of another host cannot be
    checked from here, so it is refused with the advice to remove it once that process is known to be gone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", -1))):
                lock.unlink(missing_ok=True)  # its holder died without releasing it
                continue
            raise FolderInUseError(
                f"{folder} is in use by the {what} of process {holder.get('pid')} on host {holder.get('host')} "
                f"({lock}); wait for it, choose another folder, or remove {lock} if that process is gone"
            ) from None
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(me, out)
        break
    try:
        yield lock
    finally:
        if _read_lock(lock) == me:
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that PID runs (one of another user's counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
