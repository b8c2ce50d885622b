"""A decode-once waveform cache: every clip of a dataset as int16 samples in one memory-mappable file.

Layout of a cache folder:

- ``waves.int16``: all clips back to back, raw little-endian int16 (``np.memmap``-able).
- ``index.npz``: per clip ``keys``, ``paths``, ``offsets`` and ``lengths`` (in samples), and the labels as a flat
  ``label_values`` array split by ``label_counts``.
- ``meta.json``: sample rate, clip and sample counts, source description, creation time, format version and a
  fingerprint of the entries it was built from.
- ``failures.tsv``: ``path<TAB>reason`` for every file that could not be read (these clips are left out).

:func:`build_cache` writes everything into a temporary sibling folder and renames it into place at the end, so an
interrupted build never leaves a folder that opens as a cache. :class:`WaveformCache` reads it;
:class:`CropDataset` serves reproducible fixed-length random crops from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import operator
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aiaudio.audio.io import INT16_SCALE, try_read_int16
from aiaudio.engine.files import publish_directory

FORMAT_VERSION = 1
WAVES_FILE = "waves.int16"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"
FAILURES_FILE = "failures.tsv"
_PARTIAL_MARKER = ".partial-"


class CacheError(ValueError):
    """A folder is not a usable waveform cache, or a cache cannot be built where asked."""


@dataclasses.dataclass(frozen=True)
class ClipEntry:
    """One audio clip of a dataset.

    Attributes:
        key: Unique name of the clip within the dataset (e.g. the FSD50K ``fname``).
        path: The audio file.
        labels: Class labels of the clip; may be empty.
    """

    key: str
    path: Path
    labels: tuple[str, ...] = ()


@dataclasses.dataclass
class CacheReport:
    """What :func:`build_cache` did.

    Attributes:
        out_dir: The cache folder.
        num_entries: Entries given to the build.
        num_clips: Clips stored in the cache.
        total_samples: Samples stored, over all clips.
        sample_rate: Sample rate of the cache, in Hz.
        failures: ``(path, reason)`` for every entry that could not be read.
        skipped: True when an up-to-date cache was already there and nothing was decoded.
        seconds: Wall time of the call.
    """

    out_dir: Path
    num_entries: int
    num_clips: int
    total_samples: int
    sample_rate: int
    failures: list[tuple[str, str]]
    skipped: bool
    seconds: float

    @property
    def num_failed(self) -> int:
        """Number of entries that could not be read."""
        return len(self.failures)

    def summary(self) -> str:
        """One line with the counts."""
        hours = self.total_samples / self.sample_rate / 3600.0
        state = "up to date, nothing decoded" if self.skipped else f"built in {self.seconds:.1f} s"
        text = (
            f"waveform cache {self.out_dir}: {self.num_clips} of {self.num_entries} clips "
            f"({hours:.2f} h at {self.sample_rate} Hz), {self.num_failed} unreadable; {state}"
        )
        if self.failures:
            text += f" (unreadable files listed in {self.out_dir / FAILURES_FILE})"
        return text


def build_cache(
    entries: Sequence[ClipEntry],
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    source: str = "",
) -> CacheReport:
    """Decode ``entries`` once into a waveform cache at ``out_dir``.

    Files are decoded in parallel (order kept) and streamed to disk; unreadable files are recorded in
    ``failures.tsv`` and the report, not raised. If ``out_dir`` already holds a cache built from the same entries
    (keys and labels) at the same rate, nothing is done unless ``overwrite`` is set.

    Args:
        entries: The clips, with unique keys.
        out_dir: The cache folder to create (or replace).
        sample_rate: Rate to resample every clip to, in Hz.
        workers: Decoding processes; ``None`` uses every CPU, 0 or 1 decodes in this process.
        progress: Show a progress bar (on stderr).
        overwrite: Rebuild even if an up-to-date cache is present, or replace a cache of other entries.
        source: Free-text description of the data source, stored in ``meta.json``.

    Returns:
        The :class:`CacheReport`; ``report.summary()`` is a one-line account of the counts.

    Raises:
        CacheError: Duplicate keys, or ``out_dir`` holds something that is not a cache of these entries.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    entries = list(entries)
    _check_unique_keys(entries)
    fingerprint = _fingerprint(entries, sample_rate)

    existing = _existing_cache(out_dir, overwrite)
    if existing is not None and not overwrite:
        if existing.meta.get("entries_fingerprint") == fingerprint:
            return CacheReport(
                out_dir=out_dir,
                num_entries=len(entries),
                num_clips=len(existing),
                total_samples=int(existing.meta["total_samples"]),
                sample_rate=existing.sample_rate,
                failures=_read_failures(out_dir / FAILURES_FILE),
                skipped=True,
                seconds=time.perf_counter() - started,
            )
        raise CacheError(
            f"{out_dir} already holds a waveform cache built from other entries or another sample rate; "
            "pass overwrite=True to replace it (or delete the folder and run `aiaudio cache` again), "
            "or choose another folder"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    partial_dir = out_dir.parent / f".{out_dir.name}{_PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial_dir.mkdir()
    try:
        num_clips, total_samples, failures = _write_cache_files(
            entries, partial_dir, sample_rate, workers, progress, source, fingerprint
        )
        publish_directory(partial_dir, out_dir)
    finally:
        if partial_dir.exists():
            shutil.rmtree(partial_dir, ignore_errors=True)

    return CacheReport(
        out_dir=out_dir,
        num_entries=len(entries),
        num_clips=num_clips,
        total_samples=total_samples,
        sample_rate=sample_rate,
        failures=failures,
        skipped=False,
        seconds=time.perf_counter() - started,
    )


def _check_unique_keys(entries: list[ClipEntry]) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.key in seen:
            raise CacheError(f"duplicate clip key {entry.key!r}: used by {seen[entry.key]} and {entry.path}")
        seen[entry.key] = Path(entry.path)


def _fingerprint(entries: list[ClipEntry], sample_rate: int) -> str:
    """SHA-256 over the sample rate and every entry's key and labels (paths are left out so a moved dataset
    still matches its cache)."""
    digest = hashlib.sha256(f"rate={sample_rate}\n".encode())
    for entry in entries:
        digest.update(json.dumps([entry.key, list(entry.labels)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _existing_cache(out_dir: Path, overwrite: bool) -> WaveformCache | None:
    """The cache at ``out_dir``; None if the folder is absent or empty, or holds a damaged or outdated cache
    (one with a ``meta.json``) that ``overwrite`` allows replacing. Raises if it holds anything else."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return None
    try:
        return WaveformCache(out_dir)
    except CacheError as error:
        if overwrite and (out_dir / META_FILE).is_file():
            return None
        raise CacheError(
            f"{out_dir} exists but is not a valid waveform cache ({error}); refusing to replace it: remove it, "
            "choose another folder, or (if it is a damaged or outdated cache) pass overwrite=True"
        ) from error


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete temporary build folders for ``out_dir`` left by builds whose process no longer runs."""
    prefix = f".{out_dir.name}{_PARTIAL_MARKER}"
    for candidate in out_dir.parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _decoded(
    entries: list[ClipEntry], sample_rate: int, workers: int | None
) -> Iterator[tuple[np.ndarray | None, str]]:
    """Yield ``try_read_int16`` results for ``entries`` in order, decoding in a process pool when asked."""
    paths = [str(entry.path) for entry in entries]
    decode = functools.partial(try_read_int16, sample_rate=sample_rate)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = min(workers, len(paths))
    if workers <= 1:
        yield from map(decode, paths)
        return
    chunksize = max(1, min(32, len(paths) // (workers * 8)))
    # fork: workers start at once, without re-importing torch; they only run numpy, soundfile and soxr code.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(decode, paths, chunksize=chunksize)


def _write_cache_files(
    entries: list[ClipEntry],
    folder: Path,
    sample_rate: int,
    workers: int | None,
    progress: bool,
    source: str,
    fingerprint: str,
) -> tuple[int, int, list[tuple[str, str]]]:
    """Decode and write every cache file into ``folder``; ``meta.json`` is written last."""
    keys: list[str] = []
    paths: list[str] = []
    offsets: list[int] = []
    lengths: list[int] = []
    label_values: list[str] = []
    label_counts: list[int] = []
    failures: list[tuple[str, str]] = []
    total = 0
    bar = tqdm(total=len(entries), disable=not progress, unit="clip", desc="decoding", dynamic_ncols=True)
    with open(folder / WAVES_FILE, "wb") as waves:
        for entry, (wave, reason) in zip(entries, _decoded(entries, sample_rate, workers)):
            bar.update(1)
            if wave is None:
                failures.append((str(entry.path), reason))
                continue
            waves.write(wave.astype("<i2", copy=False).tobytes())
            keys.append(entry.key)
            paths.append(str(entry.path))
            offsets.append(total)
            lengths.append(int(wave.shape[0]))
            label_values.extend(entry.labels)
            label_counts.append(len(entry.labels))
            total += int(wave.shape[0])
        waves.flush()
        os.fsync(waves.fileno())
    bar.close()

    np.savez(
        folder / INDEX_FILE,
        keys=np.array(keys, dtype=str),
        paths=np.array(paths, dtype=str),
        offsets=np.array(offsets, dtype=np.int64),
        lengths=np.array(lengths, dtype=np.int64),
        label_values=np.array(label_values, dtype=str),
        label_counts=np.array(label_counts, dtype=np.int64),
    )
    with open(folder / FAILURES_FILE, "w", encoding="utf-8") as table:
        table.write("path\treason\n")
        for path, reason in failures:
            table.write(f"{_tsv_field(path)}\t{_tsv_field(reason)}\n")
    meta = {
        "format_version": FORMAT_VERSION,
        "sample_rate": sample_rate,
        "dtype": "int16",
        "num_clips": len(keys),
        "num_failed": len(failures),
        "total_samples": total,
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries_fingerprint": fingerprint,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return len(keys), total, failures


def _tsv_field(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _read_failures(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(row.split("\t", 1)) for row in rows if row]  # type: ignore[misc]


def read_versioned_json(path: Path, version: int, error: type[Exception], remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` naming the file when it is unreadable or its format_version differs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as failure:
        raise error(f"{path} is not readable JSON ({failure})") from failure
    if not isinstance(data, dict) or data.get("format_version") != version:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise error(f"{path} has format_version {found!r}, expected {version}; {remedy}")
    return data


class WaveformCache:
    """Read-only access to a cache written by :func:`build_cache`.

    The sample file is memory-mapped lazily, on first access in each process; pickling drops the map, so a cache
    can be handed to ``DataLoader`` workers cheaply.

    Args:
        directory: The cache folder.

    Raises:
        CacheError: The folder is missing, lacks a cache file, or its files disagree.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CacheError(f"waveform cache folder {self.directory} does not exist; run `aiaudio cache` to build it")
        for name in (META_FILE, INDEX_FILE, WAVES_FILE):
            if not (self.directory / name).is_file():
                raise CacheError(
                    f"{self.directory} is not a waveform cache: {name} is missing; run `aiaudio cache` to build it"
                )
        self.meta: dict[str, Any] = read_versioned_json(
            self.directory / META_FILE, FORMAT_VERSION, CacheError, "delete the folder and run `aiaudio cache` again"
        )
        with np.load(self.directory / INDEX_FILE, allow_pickle=False) as index:
            self._keys = index["keys"]
            self.paths: list[str] = index["paths"].tolist()
            self.offsets: np.ndarray = index["offsets"]
            self.lengths: np.ndarray = index["lengths"]
            label_values = index["label_values"].tolist()
            label_counts = index["label_counts"]
        bounds = np.concatenate([[0], np.cumsum(label_counts)])
        self.labels: list[tuple[str, ...]] = [
            tuple(label_values[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])
        ]
        self.keys: list[str] = self._keys.tolist()
        self.sample_rate: int = int(self.meta["sample_rate"])
        self._total = int(self.meta["total_samples"])
        waves_bytes = (self.directory / WAVES_FILE).stat().st_size
        if waves_bytes != 2 * self._total or len(self.keys) != int(self.meta["num_clips"]):
            raise CacheError(
                f"{self.directory} is inconsistent: {WAVES_FILE} holds {waves_bytes // 2} samples and the index "
                f"{len(self.keys)} clips, meta.json says {self._total} samples and {self.meta['num_clips']} clips; "
                "delete the folder and run `aiaudio cache` again"
            )
        if len(self.keys) and int(self.offsets[-1] + self.lengths[-1]) != self._total:
            raise CacheError(
                f"{self.directory / INDEX_FILE} offsets do not cover {WAVES_FILE}; delete the folder and run "
                "`aiaudio cache` again"
            )
        self._waves: np.ndarray | None = None
        self._positions: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_waves"] = None
        return state

    @property
    def waves(self) -> np.ndarray:
        """All samples, memory-mapped read-only (opened on first use in this process)."""
        if self._waves is None:
            if self._total == 0:
                self._waves = np.zeros(0, dtype=np.int16)
            else:
                self._waves = np.memmap(self.directory / WAVES_FILE, dtype="<i2", mode="r", shape=(self._total,))
        return self._waves

    def clip(self, index: int) -> np.ndarray:
        """The int16 samples of clip ``index`` (a read-only view into the map)."""
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip index {index} out of range for a cache of {len(self)} clips ({self.directory})")
        start = int(self.offsets[index])
        return self.waves[start : start + int(self.lengths[index])]

    def index_of(self, key: str) -> int:
        """Position of the clip named ``key``."""
        if self._positions is None:
            self._positions = {name: position for position, name in enumerate(self.keys)}
        try:
            return self._positions[key]
        except KeyError:
            raise KeyError(f"clip key {key!r} is not in the waveform cache {self.directory}") from None


class CropDataset(torch.utils.data.Dataset):
    """Fixed-length random crops of cached clips, reproducible from the item key.

    An item key is ``(index, seed)`` with ``0 <= index < len(cache)`` and ``seed >= 0``. The crop position is
    drawn from ``np.random.default_rng((seed, index))``, so the same key always gives the same crop, in any worker
    and after a resume, and one seed shared by a whole batch still gives independent crops. Clips shorter than
    ``crop_samples`` are tiled (repeated end to end) starting at a random phase, never zero-padded.

    Args:
        cache: The waveform cache.
        crop_samples: Length of every crop, in samples.
    """

    def __init__(self, cache: WaveformCache, crop_samples: int) -> None:
        if crop_samples <= 0:
            raise ValueError(f"crop_samples must be positive, got {crop_samples}")
        self.cache = cache
        self.crop_samples = int(crop_samples)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        if not isinstance(key, tuple) or len(key) != 2:
            raise TypeError(f"CropDataset items are addressed by (index, seed) tuples, got {key!r}")
        index, seed = operator.index(key[0]), operator.index(key[1])
        if not 0 <= index < len(self.cache):
            raise IndexError(f"clip index {index} out of range for a cache of {len(self.cache)} clips")
        if seed < 0:
            raise ValueError(f"crop seed must be non-negative, got {seed} for clip {index}")
        clip = np.asarray(self.cache.clip(index))
        length = clip.shape[0]
        if length == 0:
            raise ValueError(f"clip {self.cache.keys[index]!r} in {self.cache.directory} is empty")
        rng = np.random.default_rng((seed, index))
        if length >= self.crop_samples:
            start = int(rng.integers(0, length - self.crop_samples + 1))
            crop = np.array(clip[start : start + self.crop_samples])
        else:
            phase = int(rng.integers(0, length))
            crop = np.take(clip, np.arange(phase, phase + self.crop_samples), mode="wrap")
        return torch.from_numpy(crop)


def int16_to_float(samples: torch.Tensor) -> torch.Tensor:
    """Convert int16 samples (any shape, any device) to float32 in [-1, 1], the inverse of the cache's scaling."""
    if samples.dtype != torch.int16:
        raise TypeError(f"int16_to_float expects an int16 tensor, got {samples.dtype}")
    return samples.to(torch.float32) / INT16_SCALE
