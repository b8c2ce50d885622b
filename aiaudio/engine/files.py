"""Atomic file and folder output: a reader never sees a half-written file, a crash never damages the old one.

One place for the write-then-rename pattern. A file is written to a hidden temporary sibling (same folder, so the
rename stays on one file system), flushed to disk, then renamed over the target with ``os.replace``. A folder is
built under a hidden sibling name and published the same way (an existing one is swapped out first, then deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


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
