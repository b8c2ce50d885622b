"""MetaAudio evaluation sets: readers, class splits and a precomputed log-mel store for few-shot evaluation.

Four sets in their released layouts (ESC-50, NSynth, VoxCeleb1, FSDKaggle2018) are read into
:class:`~aiaudio.audio.cache.ClipEntry` lists labelled with one class each. :func:`class_split` splits the classes into
disjoint train/val/test sets, from a MetaAudio split file or seeded. :func:`build_logmel_set` turns the clips of the
requested classes into MetaAudio's log-mel encoding, stored once on disk and reused:

1. decode into a waveform cache (16 kHz mono int16, :func:`~aiaudio.audio.cache.build_cache`);
2. z-normalise every clip over its whole length, ``(x - mean) / std`` (clips with zero std are skipped);
3. fixed-length sets: cut or tile every clip to its length (ESC-50 5 s, NSynth 4 s); variable-length sets
   (VoxCeleb1, FSDKaggle2018): consecutive non-overlapping 5 s segments, a short clip or the last partial segment
   tiled end to end to 5 s;
4. un-normalised log-mel ``10 * log10(mel + 2.22e-16)`` (:class:`~aiaudio.audio.frontend.LogMel`), stored as
   float16 ``[segments, n_mels, frames]``; one scalar mean and std over the log-mels of (a seeded subset of) the
   training-class clips is stored beside it and applied when reading (:meth:`LogMelSet.gather`).

A store folder holds ``segments.npy`` (float16, memory-mapped), ``index.npz`` and ``manifest.json``. Its name ends
in a prefix of a cache key (SHA-1 of the clip list with file sizes and mtimes, the preprocessing settings and the
classes processed), so stores of different settings coexist and a changed file leads to a fresh build. A build is
written to a temporary folder and renamed into place.

Example::

    data = prepare_metaaudio("esc50", "/data/ESC-50", "/cache/metaaudio", seed=0)
    test = data.class_indices("test")                   # indices into data.logmels.class_names
    x = data.logmels.gather(data.logmels.clip_segments(0))   # [n, 1, 128, 157], normalised float32
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aiaudio.audio.cache import (
    _PARTIAL_MARKER,
    ClipEntry,
    WaveformCache,
    _remove_stale_partials,
    build_cache,
    read_versioned_json,
)
from aiaudio.audio.datasets import DatasetError, _keyed_rows
from aiaudio.audio.frontend import LogMel, LogMelConfig, compute_stats
from aiaudio.seeding import mix_seed

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SEGMENTS_FILE = "segments.npy"
INDEX_FILE = "index.npz"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_KEY_PREFIX_CHARS = 16
_STATS_STREAM = 0x57A75  # seeding stream of the statistics subset, apart from the class split's
_MOMENT_CHUNK_SAMPLES = 1 << 24  # samples per chunk when computing per-clip mean and std

# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------


def _require_folder(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} is missing or not a folder")


def _shown(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` names, quoted, and how many more there are."""
    text = ", ".join(map(repr, names[:limit]))
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _class_of(where: str, row: dict[str, str], column: str) -> str:
    value = (row[column] or "").strip()
    if not value:
        raise DatasetError(f"{where}: empty {column!r}")
    return value


def esc50_entries(root: str | os.PathLike) -> list[ClipEntry]:
    """ESC-50 clips labelled with their ``category``.

    Args:
        root: The ESC-50 folder: ``audio/*.wav`` and ``meta/esc50.csv`` (header
            ``filename,fold,target,category,esc10,src_file,take``).

    Returns:
        Entries sorted by key; ``key`` is the ``filename``.

    Raises:
        DatasetError: The CSV or audio folder is missing, a column is missing, or a row is malformed.
    """
    root = Path(root)
    audio_dir = root / "audio"
    csv_path = root / "meta" / "esc50.csv"
    _require_folder(audio_dir, "ESC-50 audio folder")
    entries = [
        ClipEntry(key=filename, path=audio_dir / filename, labels=(_class_of(where, row, "category"),))
        for where, filename, row in _keyed_rows(csv_path, ("filename", "category"), "filename")
    ]
    return sorted(entries, key=lambda entry: entry.key)


NSYNTH_PARTS: tuple[str, ...] = ("nsynth-train", "nsynth-valid", "nsynth-test")


def nsynth_entries(root: str | os.PathLike) -> list[ClipEntry]:
    """NSynth notes labelled with their ``instrument_str``, the three released folders merged.

    Args:
        root: Folder holding ``nsynth-{train,valid,test}/`` (those present; at least one), each with
            ``examples.json`` (a dict keyed by ``note_str``) and ``audio/<note_str>.wav``.

    Returns:
        Entries sorted by key; ``key`` is ``<folder>/<note_str>``.

    Raises:
        DatasetError: No folder is present, or an ``examples.json`` is missing or malformed.
    """
    root = Path(root)
    present = [part for part in NSYNTH_PARTS if (root / part).is_dir()]
    if not present:
        raise DatasetError(f"no NSynth folder found under {root}: expected at least one of {', '.join(NSYNTH_PARTS)}")
    entries: list[ClipEntry] = []
    for part in present:
        json_path = root / part / "examples.json"
        if not json_path.is_file():
            raise DatasetError(f"NSynth metadata not found: {json_path} is missing")
        try:
            examples = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"{json_path} is not readable JSON ({error})") from error
        if not isinstance(examples, dict):
            raise DatasetError(f"{json_path}: expected an object keyed by note_str, got {type(examples).__name__}")
        for note_str, example in examples.items():
            instrument = example.get("instrument_str") if isinstance(example, dict) else None
            if not isinstance(instrument, str) or not instrument.strip():
                raise DatasetError(f"{json_path}: note {note_str!r} has no instrument_str")
            entries.append(
                ClipEntry(
                    key=f"{part}/{note_str}",
                    path=root / part / "audio" / f"{note_str}.wav",
                    labels=(instrument.strip(),),
                )
            )
    return sorted(entries, key=lambda entry: entry.key)


VOX1_META_FILE = "vox1_meta.csv"
_VOX1_ID_COLUMN = "VoxCeleb1 ID"


def _voxceleb1_ids(meta_path: Path) -> set[str]:
    """The speaker ids listed in a tab-separated ``vox1_meta.csv``."""
    ids: set[str] = set()
    with open(meta_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = [column.strip() for column in reader.fieldnames or []]
        if _VOX1_ID_COLUMN not in columns:
            raise DatasetError(
                f"{meta_path} lacks the column {_VOX1_ID_COLUMN!r} (expected a tab-separated header "
                f"'VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender<TAB>Nationality<TAB>Set'); its header is {columns}"
            )
        reader.fieldnames = columns
        for row in reader:
            speaker = (row[_VOX1_ID_COLUMN] or "").strip()
            if not speaker:
                raise DatasetError(f"{meta_path} line {reader.line_num}: empty {_VOX1_ID_COLUMN!r}")
            ids.add(speaker)
    return ids


def voxceleb1_entries(root: str | os.PathLike) -> list[ClipEntry]:
    """VoxCeleb1 utterances labelled with their speaker id.

    Args:
        root: Folder holding ``wav/<speaker id>/<video id>/<utterance>.wav`` (dev and test trees merged) and,
            optionally, the tab-separated ``vox1_meta.csv``; when present, every speaker folder must be listed in it.

    Returns:
        Entries sorted by key; ``key`` is the path relative to ``wav/``.

    Raises:
        DatasetError: ``wav/`` is missing or holds no ``.wav`` files, a file is not at the depth
            ``speaker/video/utterance``, or a speaker id is not in ``vox1_meta.csv``.
    """
    root = Path(root)
    wav_dir = root / "wav"
    _require_folder(wav_dir, "VoxCeleb1 audio folder")
    entries: list[ClipEntry] = []
    for path in wav_dir.rglob("*.wav"):
        relative = path.relative_to(wav_dir)
        if len(relative.parts) != 3:
            raise DatasetError(f"{path}: expected VoxCeleb1 files at wav/<speaker id>/<video id>/<utterance>.wav")
        entries.append(ClipEntry(key=relative.as_posix(), path=path, labels=(relative.parts[0],)))
    if not entries:
        raise DatasetError(f"no .wav files found under {wav_dir}")
    meta_path = root / VOX1_META_FILE
    if meta_path.is_file():
        known = _voxceleb1_ids(meta_path)
        unknown = sorted({entry.labels[0] for entry in entries} - known)
        if unknown:
            raise DatasetError(f"speaker folder(s) under {wav_dir} not listed in {meta_path}: {_shown(unknown)}")
    return sorted(entries, key=lambda entry: entry.key)


FSDKAGGLE18_TRAIN_CSV = "train_post_competition.csv"
FSDKAGGLE18_TEST_CSV = "test_post_competition_scoring_clips.csv"


def fsdkaggle18_entries(root: str | os.PathLike) -> list[ClipEntry]:
    """FSDKaggle2018 clips labelled with their ``label``, train and test merged.

    Args:
        root: Folder holding ``FSDKaggle2018.audio_train/``, ``FSDKaggle2018.audio_test/`` and
            ``FSDKaggle2018.meta/`` with ``train_post_competition.csv`` and
            ``test_post_competition_scoring_clips.csv`` (both with ``fname`` and ``label`` columns).

    Returns:
        Entries sorted by key; ``key`` is ``train/<fname>`` or ``test/<fname>``.

    Raises:
        DatasetError: A folder, CSV file or column is missing, or a row is malformed.
    """
    root = Path(root)
    entries: list[ClipEntry] = []
    for part, csv_name in (("train", FSDKAGGLE18_TRAIN_CSV), ("test", FSDKAGGLE18_TEST_CSV)):
        audio_dir = root / f"FSDKaggle2018.audio_{part}"
        _require_folder(audio_dir, f"FSDKaggle2018 {part} audio folder")
        csv_path = root / "FSDKaggle2018.meta" / csv_name
        for where, fname, row in _keyed_rows(csv_path, ("fname", "label"), "fname"):
            entries.append(
                ClipEntry(key=f"{part}/{fname}", path=audio_dir / fname, labels=(_class_of(where, row, "label"),))
            )
    return sorted(entries, key=lambda entry: entry.key)


@dataclasses.dataclass(frozen=True)
class MetaAudioSpec:
    """One MetaAudio set.

    Attributes:
        name: Registry key.
        reader: ``reader(root) -> list[ClipEntry]`` (one class label per clip).
        class_counts: Official numbers of train, val and test classes.
        clip_seconds: Fixed-length sets: every clip's length (cut or tiled to it). Variable-length sets: the
            segment length.
        variable_length: Split clips into consecutive segments (True) or keep one fixed-length example (False).
    """

    name: str
    reader: Callable[[str | os.PathLike], list[ClipEntry]]
    class_counts: tuple[int, int, int]
    clip_seconds: float
    variable_length: bool


METAAUDIO_SETS: dict[str, MetaAudioSpec] = {
    "esc50": MetaAudioSpec("esc50", esc50_entries, (35, 5, 10), 5.0, False),
    "nsynth": MetaAudioSpec("nsynth", nsynth_entries, (705, 101, 200), 4.0, False),
    "voxceleb1": MetaAudioSpec("voxceleb1", voxceleb1_entries, (876, 126, 249), 5.0, True),
    "fsdkaggle18": MetaAudioSpec("fsdkaggle18", fsdkaggle18_entries, (29, 5, 7), 5.0, True),
}


def metaaudio_spec(name: str) -> MetaAudioSpec:
    """The registry entry ``name``, or a :class:`DatasetError` listing the known names."""
    try:
        return METAAUDIO_SETS[name]
    except KeyError:
        raise DatasetError(f"unknown MetaAudio set {name!r}; expected one of {', '.join(METAAUDIO_SETS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Class splits
# ---------------------------------------------------------------------------------------------------------------


def scaled_counts(counts: Sequence[int], num_classes: int) -> tuple[int, int, int]:
    """Split sizes for ``num_classes`` classes in the proportions of ``counts``, at least 1 each.

    Each size is the floor of its proportional share (at least 1); leftover classes go to the largest remainders.
    When ``num_classes >= sum(counts)`` the counts are returned unchanged.

    Raises:
        ValueError: Fewer than 3 classes, or counts that are not three positive integers.
    """
    if len(counts) != 3 or any(int(count) != count or count < 1 for count in counts):
        raise ValueError(f"class counts must be three positive integers (train, val, test), got {tuple(counts)}")
    if num_classes < 3:
        raise ValueError(f"need at least 3 classes for a train/val/test class split, got {num_classes}")
    total = sum(counts)
    if num_classes >= total:
        return tuple(int(count) for count in counts)  # type: ignore[return-value]
    quotas = [count * num_classes / total for count in counts]
    sizes = [max(1, math.floor(quota)) for quota in quotas]
    while sum(sizes) > num_classes:
        largest = max(range(3), key=lambda k: sizes[k])
        sizes[largest] -= 1
    while sum(sizes) < num_classes:
        furthest = max(range(3), key=lambda k: quotas[k] - sizes[k])
        sizes[furthest] += 1
    return sizes[0], sizes[1], sizes[2]


_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_NUMPY_SCALAR = np.str_().__reduce__()[0]  # numpy.(_)core.multiarray.scalar


def _plain_scalar(dtype: np.dtype, *args: Any) -> Any:
    """numpy's scalar rebuilder, for dtypes without Python objects only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"it pickles a numpy scalar of dtype {dtype!r}; refusing to load it")
    return _NUMPY_SCALAR(dtype, *args)


#: The only globals a split file's pickle may name: what numpy needs to rebuild arrays (object arrays of lists,
#: string arrays, numpy string scalars), under the module names of numpy 1.x and 2.x, and plain builtin types.
_SPLIT_FILE_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        (module, name): value
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, value in (("_reconstruct", _NUMPY_RECONSTRUCT), ("scalar", _plain_scalar))
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{("builtins", kind.__name__): kind for kind in (list, tuple, str, bytes, int, float, bool)},
}


class _SplitFileUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_SPLIT_FILE_GLOBALS` and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SPLIT_FILE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it pickles {module}.{name}, which a class split file never needs (only numpy arrays, lists, "
                "strings and numbers are read); refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent reference; refusing to load it")


def _read_split_array(path: Path) -> Any:
    """The array in the ``.npy`` file ``path``; an object array is unpickled by :class:`_SplitFileUnpickler`.

    Raises:
        DatasetError: The file is not a readable ``.npy`` file, or its pickle names a global not allowed.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if not dtype.hasobject:
                handle.seek(0)
                return np.lib.format.read_array(handle, allow_pickle=False)
            return _SplitFileUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        raise DatasetError(f"class split file {path} is not a plain MetaAudio split file: {error}") from error
    except (OSError, ValueError, EOFError, TypeError, AttributeError, IndexError) as error:
        raise DatasetError(f"{path} is not a readable NumPy file ({error})") from error


def load_split_file(split_file: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """The train, val and test class lists of a MetaAudio split file (an object array of shape (3,)).

    The file's pickled object array is read by a restricted unpickler (see :func:`_read_split_array`): nothing in
    it is executed.

    Raises:
        DatasetError: The file is missing, unreadable, not of shape (3,), holds non-string names, or pickles
            anything but plain arrays, lists, strings and numbers.
    """
    path = Path(split_file)
    if not path.is_file():
        raise DatasetError(f"class split file {path} is missing")
    array = _read_split_array(path)
    if not isinstance(array, np.ndarray) or array.shape != (3,):
        shape = array.shape if isinstance(array, np.ndarray) else type(array).__name__
        raise DatasetError(f"{path}: expected an array of 3 class lists (train, val, test), got shape {shape}")
    lists: list[list[str]] = []
    for split, names in zip(SPLITS, array):
        try:
            values = list(names)
        except TypeError:
            raise DatasetError(f"{path}: the {split} entry is not a list of class names") from None
        if not all(isinstance(value, str) for value in values):
            raise DatasetError(f"{path}: the {split} entry holds non-string class names")
        if len(set(values)) != len(values):
            repeated = sorted(name for name, count in Counter(values).items() if count > 1)
            raise DatasetError(f"{path}: the {split} list repeats class(es) {_shown(repeated)}")
        lists.append(values)
    return lists[0], lists[1], lists[2]


def class_split(
    class_names: Sequence[str],
    counts: Sequence[int],
    seed: int,
    split_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Disjoint train, val and test class lists (each sorted).

    With ``split_file`` (MetaAudio's format, see :func:`load_split_file`) its lists are used after checking that
    every class occurs in ``class_names`` and that the lists are disjoint; ``counts`` and ``seed`` are not used.
    Without it the sorted classes are permuted by ``seed`` and cut into ``counts``; when there are fewer classes
    than ``sum(counts)`` the counts are scaled down proportionally (:func:`scaled_counts`) and a warning is logged.

    Args:
        class_names: The classes present in the data (repeats allowed).
        counts: Numbers of train, val and test classes.
        seed: Seed of the permutation.
        split_file: Optional MetaAudio split file.

    Raises:
        DatasetError: A split-file class is absent from the data or in two lists, or fewer than 3 classes.
    """
    classes = sorted(set(class_names))
    if split_file is not None:
        lists = load_split_file(split_file)
        present = set(classes)
        for split, names in zip(SPLITS, lists):
            absent = sorted(set(names) - present)
            if absent:
                raise DatasetError(f"{split_file}: {split} class(es) not found in the data: {_shown(absent)}")
        for (split_a, names_a), (split_b, names_b) in itertools.combinations(zip(SPLITS, lists), 2):
            shared = sorted(set(names_a) & set(names_b))
            if shared:
                raise DatasetError(f"{split_file}: class(es) in both {split_a} and {split_b}: {_shown(shared)}")
        return sorted(lists[0]), sorted(lists[1]), sorted(lists[2])
    try:
        sizes = scaled_counts(counts, len(classes))
    except ValueError as error:
        raise DatasetError(str(error)) from error
    if sizes != tuple(counts):
        log.warning(
            "only %d classes, fewer than the %d of the official split %s: using %d/%d/%d train/val/test classes",
            len(classes), sum(counts), tuple(counts), *sizes,
        )
    order = np.random.default_rng(seed).permutation(len(classes))
    shuffled = [classes[position] for position in order]
    train_end, val_end = sizes[0], sizes[0] + sizes[1]
    return (
        sorted(shuffled[:train_end]),
        sorted(shuffled[train_end:val_end]),
        sorted(shuffled[val_end : val_end + sizes[2]]),
    )


# ---------------------------------------------------------------------------------------------------------------
# Waveform segments
# ---------------------------------------------------------------------------------------------------------------


def _clip_mean_std(values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip mean and population std (float64) of clips stored back to back in ``values``.

    A constant clip (max equal to min) gets a std of exactly 0.
    """
    if lengths.dim() != 1 or int(lengths.sum()) != values.shape[0] or bool((lengths <= 0).any()):
        raise ValueError(f"clip lengths {lengths.tolist()} must be positive and sum to {values.shape[0]} samples")
    values = values.to(torch.float64)
    mean = torch.segment_reduce(values, "sum", lengths=lengths) / lengths
    variance = torch.segment_reduce(values * values, "sum", lengths=lengths) / lengths - mean * mean
    maximum = torch.segment_reduce(values, "max", lengths=lengths)
    constant = maximum == torch.segment_reduce(values, "min", lengths=lengths)
    std = torch.where(constant, 0.0, variance.clamp(min=0.0).sqrt())
    return mean, std


def normalized_segments(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    segment_samples: int,
    variable_length: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-normalise clips and cut them into fixed-length segments, in one batched pass.

    Every clip is normalised over its whole length, ``(x - mean) / std`` (population std). Fixed-length mode gives
    one segment per clip: its first ``segment_samples`` samples, or the clip tiled end to end when shorter.
    Variable-length mode gives ``ceil(length / segment_samples)`` consecutive non-overlapping segments; the last
    partial segment (or a short clip) is tiled end to end to ``segment_samples``.

    Args:
        waves: The clips back to back, 1-D (any real dtype; mean and std are computed in float64, the segments
            in float32).
        lengths: ``[C]`` clip lengths in samples (positive, summing to ``len(waves)``).
        segment_samples: Segment length in samples.
        variable_length: Segment mode (see above).

    Returns:
        ``(segments [S, segment_samples] float32, segment_clip [S] int64)`` on ``waves``' device.

    Raises:
        ValueError: Lengths that do not cover ``waves``, an empty clip, or a clip with zero std.
    """
    device = waves.device
    lengths = lengths.to(device=device, dtype=torch.int64)
    values = waves.to(torch.float64)
    mean, std = _clip_mean_std(values, lengths)
    if bool((std == 0).any()):
        raise ValueError(f"clip(s) {torch.nonzero(std == 0).flatten().tolist()} have zero std and cannot be normalised")
    num_clips = lengths.shape[0]

    starts = torch.cumsum(lengths, 0) - lengths
    if variable_length:
        counts = torch.div(lengths + segment_samples - 1, segment_samples, rounding_mode="floor")
    else:
        counts = torch.ones_like(lengths)
    segment_clip = torch.repeat_interleave(torch.arange(num_clips, device=device), counts)
    first_segment = torch.cumsum(counts, 0) - counts
    position = torch.arange(segment_clip.shape[0], device=device) - first_segment[segment_clip]
    segment_start = position * segment_samples
    first_sample = starts[segment_clip] + segment_start
    available = torch.clamp(lengths[segment_clip] - segment_start, max=segment_samples)
    phase = torch.arange(segment_samples, device=device)
    index = first_sample[:, None] + phase[None, :]
    partial = torch.nonzero(available < segment_samples).flatten()  # tiled: at most one segment per clip
    index[partial] = first_sample[partial, None] + phase[None, :] % available[partial, None]
    segments = waves.to(torch.float32)[index]
    return (segments - mean.float()[segment_clip, None]) / std.float()[segment_clip, None], segment_clip


# ---------------------------------------------------------------------------------------------------------------
# Log-mel store
# ---------------------------------------------------------------------------------------------------------------


class LogMelSet:
    """A log-mel store written by :func:`build_logmel_set`, read through memory maps.

    Segments of one clip are stored consecutively, clips in the order of ``clip_keys``.

    Attributes:
        directory: The store folder.
        manifest: The contents of ``manifest.json``.
        segment_clip: ``[S]`` int64, the clip of every segment.
        clip_class: ``[C]`` int64, the class (index into ``class_names``) of every clip.
        clip_keys: ``[C]`` clip keys.
        class_names: The classes processed (a clip-less class keeps its index).
        mean: Global mean of the training-class log-mels.
        std: Global std of the training-class log-mels.

    Args:
        directory: The store folder.

    Raises:
        DatasetError: A file is missing or the files disagree.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_FILE
        for name in (MANIFEST_FILE, INDEX_FILE, SEGMENTS_FILE):
            if not (self.directory / name).is_file():
                raise DatasetError(f"{self.directory} is not a log-mel store: {name} is missing")
        self.manifest: dict[str, Any] = read_versioned_json(
            manifest_path, FORMAT_VERSION, DatasetError, "delete the folder to rebuild it"
        )
        with np.load(self.directory / INDEX_FILE, allow_pickle=False) as index:
            self.segment_clip: np.ndarray = index["segment_clip"]
            self.clip_class: np.ndarray = index["clip_class"]
            self.clip_keys: list[str] = index["clip_keys"].tolist()
            self.class_names: list[str] = index["class_names"].tolist()
            self._clip_offsets: np.ndarray = index["clip_offsets"]
        self.mean = float(self.manifest["mean"])
        self.std = float(self.manifest["std"])
        self._shape = tuple(int(size) for size in self.manifest["shape"])
        if (
            self._shape[0] != self.segment_clip.shape[0]
            or len(self.clip_keys) != self.clip_class.shape[0]
            or self._clip_offsets.shape[0] != len(self.clip_keys) + 1
            or int(self._clip_offsets[-1]) != self._shape[0]
        ):
            raise DatasetError(f"{self.directory} is inconsistent: {INDEX_FILE} and {MANIFEST_FILE} disagree")
        self._segments: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of segments."""
        return self._shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_segments"] = None
        return state

    @property
    def num_clips(self) -> int:
        """Number of clips."""
        return len(self.clip_keys)

    @property
    def segments(self) -> np.ndarray:
        """``[S, n_mels, frames]`` float16 un-normalised log-mels, memory-mapped read-only."""
        if self._segments is None:
            self._segments = np.load(self.directory / SEGMENTS_FILE, mmap_mode="r")
            if tuple(self._segments.shape) != self._shape or self._segments.dtype != np.float16:
                raise DatasetError(
                    f"{self.directory / SEGMENTS_FILE} holds {self._segments.dtype} {self._segments.shape}, "
                    f"{MANIFEST_FILE} says float16 {self._shape}"
                )
        return self._segments

    def clip_segments(self, clip_index: int) -> slice:
        """The segments of clip ``clip_index`` (a slice into :attr:`segments`)."""
        if not 0 <= clip_index < self.num_clips:
            raise IndexError(f"clip index {clip_index} out of range for {self.num_clips} clips ({self.directory})")
        return slice(int(self._clip_offsets[clip_index]), int(self._clip_offsets[clip_index + 1]))

    def class_clips(self, class_index: int) -> np.ndarray:
        """Indices of the clips of class ``class_index``."""
        return np.flatnonzero(self.clip_class == class_index)

    def gather(
        self, segment_indices: np.ndarray | Sequence[int] | slice, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Globally normalised float32 log-mels ``[n, 1, n_mels, frames]`` of the given segments."""
        if not isinstance(segment_indices, slice):
            segment_indices = np.asarray(segment_indices, dtype=np.int64)
        values = np.asarray(self.segments[segment_indices])
        if not values.flags.writeable:  # a slice of a read-only memory map: torch wants memory it may write
            values = np.array(values)
        tensor = torch.from_numpy(values).to(device=device).to(torch.float32)
        return ((tensor - self.mean) / self.std).unsqueeze(1)


@dataclasses.dataclass(frozen=True)
class SegmentPolicy:
    """How clips become fixed-length examples (see :func:`normalized_segments`).

    Attributes:
        seconds: Clip length (fixed-length sets) or segment length (variable-length sets).
        variable_length: Segment mode.
        sample_rate: Decoding rate, in Hz.
    """

    seconds: float
    variable_length: bool
    sample_rate: int = 16000

    @property
    def samples(self) -> int:
        """Segment length in samples."""
        return int(round(self.seconds * self.sample_rate))

    def segment_counts(self, lengths: np.ndarray) -> np.ndarray:
        """Number of segments of clips of ``lengths`` samples: ``ceil(length / samples)``, or 1 for fixed length."""
        lengths = np.asarray(lengths, dtype=np.int64)
        return -(-lengths // self.samples) if self.variable_length else np.ones_like(lengths)


def _file_signature(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _cache_key(
    stored: Sequence[ClipEntry], stats: Sequence[ClipEntry], config: dict[str, Any], classes: Sequence[str],
    stats_classes: Sequence[str],
) -> str:
    digest = hashlib.sha1(json.dumps({"format_version": FORMAT_VERSION, "config": config}, sort_keys=True).encode())
    digest.update(json.dumps({"classes": list(classes), "stats_classes": list(stats_classes)}).encode())
    for role, entries in (("stored", stored), ("stats", stats)):
        digest.update(f"\n{role}\n".encode())
        for entry in entries:
            size, mtime = _file_signature(Path(entry.path))
            digest.update(json.dumps([entry.key, str(entry.path), size, mtime, list(entry.labels)]).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _single_label(entry: ClipEntry) -> str:
    if len(entry.labels) != 1:
        raise DatasetError(f"clip {entry.key!r} ({entry.path}) has labels {entry.labels}; expected exactly one class")
    return entry.labels[0]


def _stats_subset(entries: list[ClipEntry], stats_clips: int | None, seed: int) -> list[ClipEntry]:
    """A seeded subset of at most ``stats_clips`` entries (all when None), in the given order."""
    if stats_clips is not None and stats_clips <= 0:
        raise ValueError(f"stats_clips must be positive or None, got {stats_clips}")
    if stats_clips is None or stats_clips >= len(entries):
        return entries
    chosen = np.random.default_rng(mix_seed(seed, _STATS_STREAM)).choice(len(entries), stats_clips, replace=False)
    return [entries[position] for position in np.sort(chosen)]


def _clip_stds(cache: WaveformCache) -> np.ndarray:
    """Per-clip std (float64) of every clip of ``cache``, in chunks of consecutive clips."""
    stds = np.zeros(len(cache), dtype=np.float64)
    ends = cache.offsets + cache.lengths
    first = 0
    while first < len(cache):
        last = max(first + 1, int(np.searchsorted(ends, cache.offsets[first] + _MOMENT_CHUNK_SAMPLES, side="right")))
        lengths = torch.from_numpy(cache.lengths[first:last].astype(np.int64))
        waves = torch.from_numpy(np.array(cache.waves[int(cache.offsets[first]) : int(ends[last - 1])]))
        stds[first:last] = _clip_mean_std(waves, lengths)[1].numpy()
        first = last
    return stds


def _segment_batches(
    cache: WaveformCache,
    clip_indices: np.ndarray,
    policy: SegmentPolicy,
    batch_segments: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Normalised segments ``[n, samples]`` float32 of the clips ``clip_indices`` of ``cache``, in order.

    Clips are grouped so that a batch holds at most ``batch_segments`` segments (or a single clip).
    """
    lengths = cache.lengths[clip_indices].astype(np.int64)
    ends = np.cumsum(policy.segment_counts(lengths))
    first = 0
    while first < len(clip_indices):
        budget = (ends[first - 1] if first else 0) + batch_segments
        last = max(first + 1, int(np.searchsorted(ends, budget, side="right")))
        chosen = clip_indices[first:last]
        waves = np.concatenate([cache.clip(int(index)) for index in chosen])
        waves = torch.from_numpy(waves).to(device)
        clip_lengths = torch.from_numpy(lengths[first:last])
        yield normalized_segments(waves, clip_lengths, policy.samples, policy.variable_length)[0]
        first = last


def _open_existing(directory: Path, key: str) -> LogMelSet | None:
    """The store at ``directory`` if it was built with ``key``; None if there is none."""
    if not directory.exists():
        return None
    try:
        existing = LogMelSet(directory)
    except DatasetError as error:
        raise DatasetError(
            f"{directory} exists but is not a usable log-mel store ({error}); delete it to rebuild"
        ) from error
    if existing.manifest.get("cache_key") != key:
        raise DatasetError(
            f"{directory} holds a log-mel store with another cache key ({existing.manifest.get('cache_key')}); "
            "delete it to rebuild"
        )
    return existing


def build_logmel_set(
    entries: Sequence[ClipEntry],
    classes: Sequence[str],
    stats_classes: Sequence[str],
    cache_dir: str | os.PathLike,
    policy: SegmentPolicy,
    *,
    name: str = "logmel",
    seed: int = 0,
    stats_clips: int | None = 2000,
    logmel_config: LogMelConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    batch_segments: int = 64,
    device: torch.device | str = "cpu",
) -> LogMelSet:
    """Compute (or reuse) the log-mel store of the clips of ``classes``, normalised by ``stats_classes``.

    The store goes to ``cache_dir/<name>-<cache key prefix>``; if it exists with the same cache key it is opened
    and nothing is computed. The global mean and std come from the log-mels of a seeded subset of at most
    ``stats_clips`` clips of ``stats_classes`` (all of them when None); those clips are decoded but not stored.
    Unreadable clips and clips with zero std are left out, counted in the manifest and logged.

    Args:
        entries: The data set's clips, one class label each (other classes are ignored).
        classes: Classes to store (e.g. val + test); their order gives the class indices.
        stats_classes: Classes whose clips give the normalisation statistics (the training classes).
        cache_dir: Parent folder of the store.
        policy: Clip length and segment mode.
        name: Prefix of the store folder's name.
        seed: Seed of the statistics subset.
        stats_clips: Most clips used for the statistics; None uses all.
        logmel_config: Log-mel parameters (MetaAudio's when omitted); its sample rate must match the policy's.
        workers: Decoding processes (see :func:`~aiaudio.audio.cache.build_cache`).
        progress: Show progress bars.
        batch_segments: Segments per log-mel batch.
        device: Where the log-mels are computed.

    Returns:
        The opened :class:`LogMelSet`.

    Raises:
        DatasetError: A class without clips in ``entries``, a clip without exactly one label, no usable statistics
            clip, or a folder in the way.
    """
    config = logmel_config if logmel_config is not None else LogMelConfig(sample_rate=policy.sample_rate)
    if config.sample_rate != policy.sample_rate:
        raise ValueError(f"log-mel rate {config.sample_rate} differs from the decoding rate {policy.sample_rate}")
    class_list = list(classes)
    if len(set(class_list)) != len(class_list):
        raise ValueError(f"classes to store repeat a name: {class_list}")
    class_index = {class_name: position for position, class_name in enumerate(class_list)}
    stats_set = set(stats_classes)
    by_label = [(entry, _single_label(entry)) for entry in entries]
    stored = [entry for entry, label in by_label if label in class_index]
    present = {label for _, label in by_label}
    absent = sorted((set(class_list) | stats_set) - present)
    if absent:
        raise DatasetError(f"class(es) without clips in the data: {_shown(absent)}")
    stats_entries = _stats_subset([entry for entry, label in by_label if label in stats_set], stats_clips, seed)
    settings = {
        "sample_rate": policy.sample_rate,
        "segment_seconds": policy.seconds,
        "variable_length": policy.variable_length,
        "logmel": dataclasses.asdict(config),
    }
    key = _cache_key(stored, stats_entries, settings, class_list, sorted(stats_set))
    cache_dir = Path(cache_dir)
    directory = cache_dir / f"{name}-{key[:_KEY_PREFIX_CHARS]}"
    existing = _open_existing(directory, key)
    if existing is not None:
        log.info("log-mel store %s is up to date (%d segments, %d clips)", directory, len(existing), existing.num_clips)
        return existing

    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(directory)
    partial = cache_dir / f".{directory.name}{_PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        _write_store(
            partial, stored, stats_entries, class_index, policy, config, settings, key,
            workers=workers, progress=progress, batch_segments=batch_segments, device=torch.device(device), name=name,
        )
        try:
            os.replace(partial, directory)
        except OSError:
            concurrent = _open_existing(directory, key)  # built meanwhile by another process
            if concurrent is None:
                raise
            return concurrent
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    built = LogMelSet(directory)
    log.info("log-mel store %s: %d segments of %d clips", directory, len(built), built.num_clips)
    return built


def _write_store(
    folder: Path,
    stored: list[ClipEntry],
    stats_entries: list[ClipEntry],
    class_index: dict[str, int],
    policy: SegmentPolicy,
    config: LogMelConfig,
    settings: dict[str, Any],
    key: str,
    *,
    workers: int | None,
    progress: bool,
    batch_segments: int,
    device: torch.device,
    name: str,
) -> None:
    """Decode, segment and encode into ``folder``; ``manifest.json`` is written last."""
    stored_keys = {entry.key for entry in stored}
    to_decode = stored + [entry for entry in stats_entries if entry.key not in stored_keys]
    report = build_cache(
        to_decode, folder / "waves", sample_rate=policy.sample_rate, workers=workers, progress=progress,
        source=f"MetaAudio {name}",
    )
    if report.failures:
        log.warning("%d unreadable clip(s) left out, e.g. %s: %s", report.num_failed, *report.failures[0])
    cache = WaveformCache(folder / "waves")
    stds = _clip_stds(cache)
    silent = [cache.keys[position] for position in np.flatnonzero(stds == 0)]
    if silent:
        log.warning("%d clip(s) have zero std (constant signal) and are skipped, e.g. %s", len(silent), silent[0])
    usable = stds > 0
    position_of = {clip_key: position for position, clip_key in enumerate(cache.keys)}
    stored_clips = np.array(
        [position_of[entry.key] for entry in stored if entry.key in position_of and usable[position_of[entry.key]]],
        dtype=np.int64,
    )
    stats_clip_positions = np.array(
        [position_of[e.key] for e in stats_entries if e.key in position_of and usable[position_of[e.key]]],
        dtype=np.int64,
    )
    if stored_clips.size == 0:
        raise DatasetError(f"no readable clip with non-zero std in the classes to store ({', '.join(class_index)})")
    if stats_clip_positions.size == 0:
        raise DatasetError("no readable statistics clip (training class with non-zero std) to normalise with")

    frontend = LogMel(config).to(device)
    counts = policy.segment_counts(cache.lengths[stored_clips].astype(np.int64))
    num_segments = int(counts.sum())
    shape = (num_segments, config.n_mels, frontend.num_frames(policy.samples))
    store = np.lib.format.open_memmap(folder / SEGMENTS_FILE, mode="w+", dtype=np.float16, shape=shape)
    segment_clip = np.repeat(np.arange(len(stored_clips), dtype=np.int64), counts)
    bar = tqdm(total=num_segments, disable=not progress, unit="segment", desc="log-mel", dynamic_ncols=True)
    written = 0
    with torch.no_grad():
        for segments in _segment_batches(cache, stored_clips, policy, batch_segments, device):
            log_mel = frontend.log(frontend.mel_power(segments))
            store[written : written + log_mel.shape[0]] = log_mel.to(torch.float16).cpu().numpy()
            written += log_mel.shape[0]
            bar.update(log_mel.shape[0])
    bar.close()
    store.flush()
    del store
    mean, std = compute_stats(
        frontend, _segment_batches(cache, stats_clip_positions, policy, batch_segments, device)
    )
    if not std > 0:
        raise DatasetError(f"the statistics clips give a log-mel std of {std}; cannot normalise")

    clip_keys = [cache.keys[int(position)] for position in stored_clips]
    clip_class = np.array([class_index[cache.labels[int(position)][0]] for position in stored_clips], dtype=np.int64)
    clips_per_class = np.bincount(clip_class, minlength=len(class_index))
    thin = [class_name for class_name, count in zip(class_index, clips_per_class) if count < 2]
    if thin:
        log.warning("%d class(es) have fewer than 2 usable clips, e.g. %r", len(thin), thin[0])
    np.savez(
        folder / INDEX_FILE,
        segment_clip=segment_clip,
        clip_class=clip_class,
        clip_keys=np.array(clip_keys, dtype=str),
        class_names=np.array(list(class_index), dtype=str),
        clip_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )
    shutil.rmtree(folder / "waves")
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "cache_key": key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "shape": list(shape),
        "dtype": "float16",
        "num_clips": len(clip_keys),
        "num_segments": num_segments,
        "class_names": list(class_index),
        "mean": mean,
        "std": std,
        "stats_clip_keys": [cache.keys[int(position)] for position in stats_clip_positions],
        "stats_classes": sorted({cache.labels[int(position)][0] for position in stats_clip_positions}),
        "skipped_zero_std": silent,
        "unreadable": [list(failure) for failure in report.failures],
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MetaAudioData:
    """A MetaAudio set ready for few-shot evaluation.

    Attributes:
        spec: The registry entry.
        train_classes: Training classes (only their statistics are in ``logmels``).
        val_classes: Validation classes.
        test_classes: Test classes.
        logmels: The log-mels of the val and test classes.
    """

    spec: MetaAudioSpec
    train_classes: list[str]
    val_classes: list[str]
    test_classes: list[str]
    logmels: LogMelSet

    def class_indices(self, split: str) -> np.ndarray:
        """Indices into ``logmels.class_names`` of the ``"val"`` or ``"test"`` classes."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test' (the stored classes), got {split!r}")
        names = self.val_classes if split == "val" else self.test_classes
        position = {class_name: index for index, class_name in enumerate(self.logmels.class_names)}
        return np.array([position[class_name] for class_name in names], dtype=np.int64)


def prepare_metaaudio(
    name: str,
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    seed: int,
    split_file: str | os.PathLike | None = None,
    stats_clips: int | None = 2000,
    workers: int | None = None,
    progress: bool = True,
    batch_segments: int = 64,
    device: torch.device | str = "cpu",
) -> MetaAudioData:
    """Read a MetaAudio set, split its classes and compute (or reuse) the log-mels of its val and test classes.

    Args:
        name: A key of :data:`METAAUDIO_SETS`.
        root: The data set's folder, in its released layout.
        cache_dir: Parent folder of the log-mel stores.
        seed: Seed of the class split (without ``split_file``) and of the statistics subset.
        split_file: Optional MetaAudio split file (see :func:`class_split`).
        stats_clips: Most training-class clips used for the normalisation statistics; None uses all.
        workers: Decoding processes.
        progress: Show progress bars.
        batch_segments: Segments per log-mel batch.
        device: Where the log-mels are computed.

    Raises:
        DatasetError: Unknown set, missing or malformed files, or a bad split.
    """
    spec = metaaudio_spec(name)
    entries = spec.reader(root)
    train, val, test = class_split([_single_label(entry) for entry in entries], spec.class_counts, seed, split_file)
    logmels = build_logmel_set(
        entries, val + test, train, cache_dir, SegmentPolicy(spec.clip_seconds, spec.variable_length),
        name=name, seed=seed, stats_clips=stats_clips, workers=workers, progress=progress,
        batch_segments=batch_segments, device=device,
    )
    return MetaAudioData(spec, train, val, test, logmels)
