"""A decode-once waveform cache: every clip of a dataset as int16 samples in one memory-mappable file.

Layout of a cache folder:

- ``waves.int16``: all clips back to back, raw little-endian int16 (``np.memmap``-able).
- ``index.npz``: per clip ``keys``, ``paths``, ``offsets`` and ``lengths`` (in samples), and the labels as a flat
  ``label_values`` array split by ``label_counts``; per entry given to the build (failed ones included, in order)
  ``source_signatures``, the file's ``(size, mtime_ns)`` when the build began (``(-1, -1)``: could not be stat'ed).
- ``meta.json``: sample rate, clip and sample counts, source description, creation time, format version and a
  fingerprint of the entries it was built from.
- ``failures.tsv``: ``path<TAB>reason`` for every file that could not be read (these clips are left out), including
  entries refused without being opened (a dangling symbolic link, a link loop, a folder named like an audio file, a
  path outside the data folder).
- ``warnings.tsv``: ``path<TAB>note`` for every suspicious clip that was kept: a truncated WAV file (its header
  announces more samples than it holds), an all-zero clip, a 1-sample clip, a heavily clipped one.

:func:`build_cache` writes everything into a temporary sibling folder and renames it into place at the end, so an
interrupted build never leaves a folder that opens as a cache. A later build with the same entries is skipped only
while every file still has its recorded size and modification time; a changed, replaced, repaired or deleted file
(or a cache without these records) makes it decode everything again. :class:`WaveformCache` reads it;
:class:`CropDataset` serves reproducible fixed-length random crops from it.

Decoding in worker processes is bounded: a file that takes longer than ``file_timeout`` seconds (a read blocked on a
hung network mount) has its worker killed, and a worker that dies (e.g. killed by the out-of-memory killer) is
replaced; either way the file is recorded as a failure, by name, and the build goes on. A FIFO, socket or device is
refused without being opened, also when decoding in this process.

A build holds a lock beside the cache folder (``.NAME.lock/.lock``, host name and PID, see
:func:`~aiaudio.engine.files.folder_lock`), so a second build of the same folder, from this host or another one on
shared storage, is refused with a message naming the holder. Each temporary build folder records its host and PID; a
later build deletes only those left by a process of its own host that no longer runs.

A build in which every file is unreadable, or every clip is silent (all samples zero), publishes nothing and raises
:class:`CacheError` saying what to fix: such a cache could only fail later, when the log-mel statistics are computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import operator
import os
import shutil
import signal
import socket
import stat
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aiaudio.audio.io import INT16_SCALE, try_read_int16
from aiaudio.engine.files import FolderInUseError, folder_lock, process_alive, publish_directory

FORMAT_VERSION = 1
WAVES_FILE = "waves.int16"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"
FAILURES_FILE = "failures.tsv"
WARNINGS_FILE = "warnings.tsv"
#: File in a temporary build folder naming the host and process building it (JSON, as a folder lock's).
_OWNER_FILE = ".lock"
#: How many unreadable files an error message names.
_NAMED_IN_ERRORS = 3
_PARTIAL_MARKER = ".partial-"
#: Seconds a worker process may spend on one file before it is killed and the file counted as unreadable.
DEFAULT_FILE_TIMEOUT = 60.0
#: Decoded clips a worker pool may hold ahead of the one written next, per worker.
_RESULTS_AHEAD_PER_WORKER = 4


class CacheError(ValueError):
    """A folder is not a usable waveform cache, or a cache cannot be built where asked."""


@dataclasses.dataclass(frozen=True)
class ClipEntry:
    """One audio clip of a dataset.

    Attributes:
        key: Unique name of the clip within the dataset (e.g. the FSD50K ``fname``).
        path: The audio file.
        labels: Class labels of the clip; may be empty.
        problem: Why the clip must not be opened at all (e.g. its path leads outside the data folder), as found by
            the dataset reader; :func:`build_cache` records it as a failure with this reason. Empty for a clip to
            decode. Not part of equality.
    """

    key: str
    path: Path
    labels: tuple[str, ...] = ()
    problem: str = dataclasses.field(default="", compare=False)


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
        rebuilt_because: Why a cache of the same entries was decoded again (files changed); empty otherwise.
        warnings: ``(path, note)`` for every suspicious clip that was kept (truncated, silent, 1 sample, clipped).
    """

    out_dir: Path
    num_entries: int
    num_clips: int
    total_samples: int
    sample_rate: int
    failures: list[tuple[str, str]]
    skipped: bool
    seconds: float
    rebuilt_because: str = ""
    warnings: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def num_failed(self) -> int:
        """Number of entries that could not be read."""
        return len(self.failures)

    @property
    def num_warnings(self) -> int:
        """Number of suspicious clips kept in the cache."""
        return len(self.warnings)

    def summary(self) -> str:
        """One line with the counts."""
        hours = self.total_samples / self.sample_rate / 3600.0
        state = "up to date, nothing decoded" if self.skipped else f"built in {self.seconds:.1f} s"
        if self.rebuilt_because:
            state += f" (rebuilt: {self.rebuilt_because})"
        text = (
            f"waveform cache {self.out_dir}: {self.num_clips} of {self.num_entries} clips "
            f"({hours:.2f} h at {self.sample_rate} Hz), {self.num_failed} unreadable, "
            f"{self.num_warnings} suspicious (kept); {state}"
        )
        if self.failures:
            text += f" (unreadable files listed in {self.out_dir / FAILURES_FILE})"
        if self.warnings:
            text += f" (suspicious clips listed in {self.out_dir / WARNINGS_FILE}, e.g. {self.warnings[0][0]}: "
            text += f"{self.warnings[0][1]})"
        return text


def build_cache(
    entries: Sequence[ClipEntry],
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    source: str = "",
    file_timeout: float | None = DEFAULT_FILE_TIMEOUT,
    follow_entries: bool = False,
) -> CacheReport:
    """Decode ``entries`` once into a waveform cache at ``out_dir``.

    Files are decoded in parallel (order kept) and streamed to disk; unreadable files (including a file whose
    decoding exceeds ``file_timeout`` or kills its worker, and any FIFO, socket or device) are recorded in
    ``failures.tsv`` and the report, not raised. If ``out_dir`` already holds a cache built from the same entries
    (keys and labels) at the same rate, nothing is done unless ``overwrite`` is set or a file's size or modification
    time differs from the one recorded at build time (then the cache is rebuilt).

    Args:
        entries: The clips, with unique keys.
        out_dir: The cache folder to create (or replace).
        sample_rate: Rate to resample every clip to, in Hz.
        workers: Decoding processes; ``None`` uses every CPU, 0 or 1 decodes in this process.
        progress: Show a progress bar (on stderr).
        overwrite: Rebuild even if an up-to-date cache is present, or replace a cache of other entries.
        follow_entries: A cache of other entries is rebuilt rather than refused (a cache that tracks one folder,
            as ``aiaudio embed`` keeps, follows the files added to or removed from it).
        source: Free-text description of the data source, stored in ``meta.json``.
        file_timeout: Seconds a worker process may spend on one file (None: no limit). Decoding in this process
            (``workers`` 0 or 1) cannot be interrupted and has no limit.

    Returns:
        The :class:`CacheReport`; ``report.summary()`` is a one-line account of the counts.

    Raises:
        CacheError: Duplicate keys, ``out_dir`` holds something that is not a cache of these entries, another
            live process (of this or another host) is building it, or every file is unreadable or every clip
            silent (nothing is published then).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    entries = list(entries)
    _check_unique_keys(entries)
    if file_timeout is not None and not file_timeout > 0:
        raise ValueError(f"file_timeout must be positive or None, got {file_timeout}")
    fingerprint = _fingerprint(entries, sample_rate)
    signatures = np.array(
        [(-1, -1) if entry.problem else _file_signature(entry.path) for entry in entries], dtype=np.int64
    ).reshape(-1, 2)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_folder = out_dir.parent / f".{out_dir.name}.lock"
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_empty_folder, lock_folder)  # registered first, so it runs after the lock is released
        for attempt in range(3):
            try:
                stack.enter_context(folder_lock(lock_folder, "waveform cache build"))
                break
            except FolderInUseError as error:
                raise CacheError(f"cannot build the waveform cache {out_dir}: {error}") from None
            except FileNotFoundError:  # another build removed the empty lock folder just now: try again
                if attempt == 2:
                    raise
        return _build_locked(
            entries, out_dir, sample_rate, workers, progress, overwrite, source, file_timeout, follow_entries,
            fingerprint, signatures, started,
        )
    raise AssertionError("unreachable")


def _remove_empty_folder(folder: Path) -> None:
    """Remove ``folder`` if it is empty (a lock folder once its lock is released); leave it otherwise."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _build_locked(
    entries: list[ClipEntry],
    out_dir: Path,
    sample_rate: int,
    workers: int | None,
    progress: bool,
    overwrite: bool,
    source: str,
    file_timeout: float | None,
    follow_entries: bool,
    fingerprint: str,
    signatures: np.ndarray,
    started: float,
) -> CacheReport:
    """:func:`build_cache` once its lock is held."""
    existing = _existing_cache(out_dir, overwrite)
    stale = ""
    if existing is not None and not overwrite:
        if existing.meta.get("entries_fingerprint") != fingerprint:
            if not follow_entries:
                raise CacheError(
                    f"{out_dir} already holds a waveform cache built from other entries or another sample rate; "
                    "rebuild it with `aiaudio cache CONFIG --overwrite` (in Python: overwrite=True), delete the "
                    "folder, or choose another folder"
                )
            stale = "the listed files changed (a file added, removed or renamed)"
        stale = stale or _stale_reason(out_dir, entries, signatures)
        if not stale:
            return CacheReport(
                out_dir=out_dir,
                num_entries=len(entries),
                num_clips=len(existing),
                total_samples=int(existing.meta["total_samples"]),
                sample_rate=existing.sample_rate,
                failures=_read_failures(out_dir / FAILURES_FILE),
                skipped=True,
                seconds=time.perf_counter() - started,
                warnings=_read_failures(out_dir / WARNINGS_FILE),
            )

    _remove_stale_partials(out_dir)
    partial_dir = out_dir.parent / f".{out_dir.name}{_PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial_dir.mkdir()
    owner = partial_dir / _OWNER_FILE
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
    try:
        num_clips, total_samples, failures, warnings, silent = _write_cache_files(
            entries, signatures, partial_dir, sample_rate, workers, file_timeout, progress, source, fingerprint
        )
        _check_usable(out_dir, len(entries), num_clips, silent, failures)
        owner.unlink()
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
        rebuilt_because=stale,
        warnings=warnings,
    )


def _check_usable(
    out_dir: Path, num_entries: int, num_clips: int, silent: int, failures: list[tuple[str, str]]
) -> None:
    """Raise a :class:`CacheError` saying what to fix when a finished build holds nothing to learn from: every file
    unreadable, or every clip silent (a log-mel normalisation over it would fail)."""
    if num_entries and num_clips == 0:
        named = "; ".join(f"{path}: {reason}" for path, reason in failures[:_NAMED_IN_ERRORS])
        more = f" (and {len(failures) - _NAMED_IN_ERRORS} more)" if len(failures) > _NAMED_IN_ERRORS else ""
        raise CacheError(
            f"no waveform cache written to {out_dir}: every one of the {num_entries} listed file(s) is unreadable, "
            f"e.g. {named}{more}; check that data.root points at the audio files and that they are readable audio "
            "(WAV, FLAC, OGG), then run `aiaudio cache` again"
        )
    if num_clips and silent == num_clips:
        raise CacheError(
            f"no waveform cache written to {out_dir}: every one of the {num_clips} readable clip(s) is silent (all "
            "samples zero), so there is nothing to learn from and no log-mel statistics to compute; check the "
            "recordings (a muted microphone, a failed conversion) and point data.root at real audio"
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


def _file_signature(path: str | os.PathLike) -> tuple[int, int]:
    """``(size, mtime_ns)`` of ``path``, or ``(-1, -1)`` when it cannot be stat'ed (e.g. missing)."""
    try:
        status = os.stat(path)
    except OSError:
        return -1, -1
    return status.st_size, status.st_mtime_ns


def _stale_reason(out_dir: Path, entries: list[ClipEntry], signatures: np.ndarray) -> str:
    """Why the cache at ``out_dir`` (built from ``entries``) no longer matches their files; empty when it does."""
    try:
        with np.load(out_dir / INDEX_FILE, allow_pickle=False) as index:
            recorded = index["source_signatures"] if "source_signatures" in index.files else None
    except (OSError, ValueError) as error:
        return f"its {INDEX_FILE} is unreadable ({error})"
    if recorded is None or recorded.shape != signatures.shape:
        return "it records no file sizes and modification times (built by an older version)"
    changed = np.flatnonzero((recorded != signatures).any(axis=1))
    if changed.size == 0:
        return ""
    return f"{changed.size} file(s) changed since it was built, e.g. {entries[int(changed[0])].path}"


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
    """Delete temporary build folders for ``out_dir`` left by builds of this host whose process no longer runs.

    The owner (host, PID) is read from the folder's ``.lock`` record; a folder of another host is never deleted (its
    process cannot be checked from here), nor one of a live process. A folder without a record (left by an older
    version, which built on one host only) is judged by the PID in its name.
    """
    prefix = f".{out_dir.name}{_PARTIAL_MARKER}"
    host = socket.gethostname()
    for candidate in out_dir.parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        owner = _read_owner(candidate / _OWNER_FILE)
        if owner is not None:
            if owner.get("host") != host:
                continue
            pid_text = str(owner.get("pid", ""))
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The ``{"host", "pid"}`` record of a temporary build folder; None when it has none; ``{}`` (never deleted
    as this host's) when it is there but unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _decode_file(path: str, sample_rate: int) -> tuple[np.ndarray | None, str]:
    """:func:`try_read_int16` of ``path``; a FIFO, socket or device is refused without being opened (it could block
    forever)."""
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError:
        mode = None  # missing or not stat-able: try_read_int16 names the problem
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return None, "not a regular file (a FIFO, socket or device), so not an audio file; not opened"
    return try_read_int16(path, sample_rate)


def _decode_worker(connection: Connection, sample_rate: int) -> None:
    """Worker loop: decode each path received on ``connection`` and send the result back; None or EOF ends it.

    An unexpected exception is sent back as its traceback text (the build raises it); Ctrl-C is left to the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):
            return
        if path is None:
            return
        try:
            result: tuple[np.ndarray | None, str] | str = _decode_file(path, sample_rate)
        except Exception:  # noqa: BLE001 - handed to the parent, which raises it
            result = traceback.format_exc()
        connection.send(result)


@dataclasses.dataclass
class _Worker:
    """One decoding process, its end of the pipe, and the entry it is decoding (index, start time)."""

    process: BaseProcess
    connection: Connection
    task: int | None = None
    started: float = 0.0

    def stop(self) -> None:
        """Kill the process (if still running) and release its pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.connection.close()


def _death(exitcode: int | None) -> str:
    """How a worker process ended, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}, e.g. by the out-of-memory killer"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _decoded(
    entries: list[ClipEntry], sample_rate: int, workers: int | None, file_timeout: float | None
) -> Iterator[tuple[np.ndarray | None, str]]:
    """Yield ``try_read_int16`` results for ``entries`` in order, decoding in worker processes when asked.

    Each worker decodes one file at a time; a worker that dies or exceeds ``file_timeout`` on a file is replaced and
    the file yields ``(None, reason)``. At most a few results per worker are held ahead of the next one yielded.
    """
    paths = [str(entry.path) for entry in entries]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = min(workers, len(paths))
    if workers <= 1:
        for path in paths:
            yield _decode_file(path, sample_rate)
        return
    # fork: workers start at once, without re-importing torch; they only run numpy, soundfile and soxr code.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")

    def start() -> _Worker:
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=_decode_worker, args=(theirs, sample_rate), daemon=True)
        process.start()
        theirs.close()  # the worker holds the only other end, so its death reads as EOF here
        return _Worker(process, ours)

    pool: list[_Worker | None] = [None] * workers
    results: dict[int, tuple[np.ndarray | None, str]] = {}
    next_task = next_out = 0
    window = workers * _RESULTS_AHEAD_PER_WORKER
    try:
        while next_out < len(paths):
            if next_out in results:
                yield results.pop(next_out)
                next_out += 1
                continue
            for slot, worker in enumerate(pool):
                if next_task >= min(len(paths), next_out + window):
                    break
                if worker is not None and worker.task is not None:
                    continue
                if worker is None or not worker.process.is_alive():
                    if worker is not None:
                        worker.stop()
                    worker = pool[slot] = start()
                try:
                    worker.connection.send(paths[next_task])
                except OSError:  # died since the check; the next round starts another
                    worker.stop()
                    pool[slot] = None
                    continue
                worker.task, worker.started = next_task, time.monotonic()
                next_task += 1
            busy = [worker for worker in pool if worker is not None and worker.task is not None]
            if not busy:
                continue
            timeout = None
            if file_timeout is not None:
                timeout = max(0.0, min(worker.started + file_timeout for worker in busy) - time.monotonic())
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout))
            for slot, worker in enumerate(pool):
                if worker is None or worker.task is None:
                    continue
                task = worker.task
                if worker.connection in ready or worker.process.sentinel in ready:
                    try:
                        result = worker.connection.recv() if worker.connection.poll() else None
                    except (EOFError, OSError):  # died mid-message
                        result = None
                    if result is None:
                        worker.process.join(timeout=10)
                        death = _death(worker.process.exitcode)
                        results[task] = (None, f"the decoding worker died on this file ({death})")
                        worker.stop()
                        pool[slot] = None
                        continue
                    if isinstance(result, str):
                        raise RuntimeError(f"decoding {paths[task]} raised an unexpected error in a worker:\n{result}")
                    results[task] = result
                    worker.task = None
                elif file_timeout is not None and time.monotonic() - worker.started >= file_timeout:
                    results[task] = (
                        None,
                        f"decoding did not finish within {file_timeout:g} s (a blocked read, e.g. a hung network "
                        "mount?); its worker was stopped",
                    )
                    worker.stop()
                    pool[slot] = None
    finally:
        for worker in pool:
            if worker is not None and worker.task is None:
                try:
                    worker.connection.send(None)
                    worker.process.join(timeout=5)
                except OSError:
                    pass
            if worker is not None:
                worker.stop()


def _write_cache_files(
    entries: list[ClipEntry],
    signatures: np.ndarray,
    folder: Path,
    sample_rate: int,
    workers: int | None,
    file_timeout: float | None,
    progress: bool,
    source: str,
    fingerprint: str,
) -> tuple[int, int, list[tuple[str, str]], list[tuple[str, str]], int]:
    """Decode and write every cache file into ``folder``; ``meta.json`` is written last.

    ``signatures`` (``[len(entries), 2]``: size, mtime_ns, taken before decoding) go into the index, so a later build
    notices files changed since. An entry with a ``problem`` is recorded as a failure without being opened.

    Returns:
        Clips stored, samples stored, failures, warnings (suspicious clips kept) and the number of silent clips.
    """
    keys: list[str] = []
    paths: list[str] = []
    offsets: list[int] = []
    lengths: list[int] = []
    label_values: list[str] = []
    label_counts: list[int] = []
    failures: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    silent = 0
    total = 0
    bar = tqdm(total=len(entries), disable=not progress, unit="clip", desc="decoding", dynamic_ncols=True)
    decoded = _decoded([entry for entry in entries if not entry.problem], sample_rate, workers, file_timeout)
    with open(folder / WAVES_FILE, "wb") as waves:
        for entry in entries:
            wave, reason = (None, entry.problem) if entry.problem else next(decoded)
            bar.update(1)
            if wave is None:
                failures.append((str(entry.path), reason))
                continue
            if reason:
                warnings.append((str(entry.path), reason))
            if not wave.any():
                silent += 1
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
        source_signatures=signatures,
    )
    with open(folder / FAILURES_FILE, "w", encoding="utf-8") as table:
        table.write("path\treason\n")
        for path, reason in failures:
            table.write(f"{_tsv_field(path)}\t{_tsv_field(reason)}\n")
    with open(folder / WARNINGS_FILE, "w", encoding="utf-8") as table:
        table.write("path\tnote\n")
        for path, note in warnings:
            table.write(f"{_tsv_field(path)}\t{_tsv_field(note)}\n")
    meta = {
        "format_version": FORMAT_VERSION,
        "sample_rate": sample_rate,
        "dtype": "int16",
        "num_clips": len(keys),
        "num_failed": len(failures),
        "num_warnings": len(warnings),
        "num_silent": silent,
        "total_samples": total,
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries_fingerprint": fingerprint,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return len(keys), total, failures, warnings, silent


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
