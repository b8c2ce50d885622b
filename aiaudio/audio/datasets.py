"""Dataset readers: turn a dataset's files and metadata into :class:`~aiaudio.audio.cache.ClipEntry` lists.

Readers only parse metadata; they do not open audio. A listed file that is missing or unreadable is reported by
:func:`~aiaudio.audio.cache.build_cache`, not here: a folder scan lists dangling symbolic links, link loops and
folders named like audio files too, so that the cache names each with its reason instead of leaving it out unseen.
A CSV path that leads outside the data folder is listed with a ``problem`` and never opened.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from aiaudio.audio.cache import ClipEntry
from aiaudio.audio.io import AUDIO_EXTENSIONS
from aiaudio.config import DataError

FSD50K_SPLITS: tuple[str, ...] = ("train", "val", "dev", "eval")
_FSD50K_TRUTH = "FSD50K.ground_truth"


class DatasetError(DataError):
    """Dataset metadata is missing or malformed."""


def _keyed_rows(csv_path: Path, required: Sequence[str], key_column: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """``(where, key, row)`` for every row of a headed CSV whose ``required`` columns exist and whose keys are unique.

    ``where`` names the file and line for error messages; an empty or repeated key is an error.
    """
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} is missing")
    seen: set[str] = set()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [column for column in required if column not in columns]
        if missing:
            raise DatasetError(f"{csv_path} lacks column(s) {', '.join(missing)}; its header is {columns}")
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            key = (row[key_column] or "").strip()
            if not key:
                raise DatasetError(f"{where}: empty {key_column!r}")
            if key in seen:
                raise DatasetError(f"{where}: {key_column} {key!r} appears twice")
            seen.add(key)
            yield where, key, row


def fsd50k_vocabulary(root: str | os.PathLike) -> list[str]:
    """The FSD50K class labels, in vocabulary index order.

    Args:
        root: The FSD50K folder (holding ``FSD50K.ground_truth/vocabulary.csv``, which has no header row and the
            columns ``index,label,mid``).

    Raises:
        DatasetError: The file is missing or a row is malformed.
    """
    path = Path(root) / _FSD50K_TRUTH / "vocabulary.csv"
    if not path.is_file():
        raise DatasetError(f"FSD50K vocabulary not found: {path} is missing")
    by_index: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 3 or not row[0].strip().isdigit():
                raise DatasetError(
                    f"{path} line {line_number}: expected 'index,label,mid' with an integer index and no header "
                    f"row, got {row!r}"
                )
            index, label = int(row[0]), row[1]
            if index in by_index:
                raise DatasetError(f"{path} line {line_number}: index {index} appears twice")
            by_index[index] = label
    if not by_index:
        raise DatasetError(f"FSD50K vocabulary {path} is empty")
    return [by_index[index] for index in sorted(by_index)]


def fsd50k_entries(root: str | os.PathLike, split: str) -> list[ClipEntry]:
    """The clips of one FSD50K split, labelled with their (multi-)labels.

    Args:
        root: The FSD50K folder, laid out as released: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``,
            ``FSD50K.dev_audio/<fname>.wav`` and ``FSD50K.eval_audio/<fname>.wav``.
        split: ``"train"`` or ``"val"`` (rows of ``dev.csv`` with that ``split`` value), ``"dev"`` (both) or
            ``"eval"`` (``eval.csv``).

    Returns:
        Entries in CSV order; ``key`` is the ``fname``. Audio files are not checked for existence.

    Raises:
        DatasetError: A metadata file or column is missing, or a row is malformed or names a label that is not
            in the vocabulary.
    """
    if split not in FSD50K_SPLITS:
        raise DatasetError(f"unknown FSD50K split {split!r}; expected one of {', '.join(FSD50K_SPLITS)}")
    root = Path(root)
    vocabulary = set(fsd50k_vocabulary(root))
    part = "eval" if split == "eval" else "dev"
    csv_path = root / _FSD50K_TRUTH / f"{part}.csv"
    audio_dir = root / f"FSD50K.{part}_audio"
    required = ("fname", "labels") if part == "eval" else ("fname", "labels", "split")
    if not csv_path.is_file():
        raise DatasetError(f"FSD50K ground truth not found: {csv_path} is missing")

    entries: list[ClipEntry] = []
    for where, fname, row in _keyed_rows(csv_path, required, "fname"):
        if part == "dev":
            row_split = (row["split"] or "").strip()
            if row_split not in ("train", "val"):
                raise DatasetError(f"{where}: split is {row_split!r}, expected 'train' or 'val'")
            if split != "dev" and row_split != split:
                continue
        labels = tuple(label for label in (row["labels"] or "").split(",") if label)
        unknown = [label for label in labels if label not in vocabulary]
        if unknown:
            raise DatasetError(
                f"{where} (fname {fname}): label(s) {', '.join(map(repr, unknown))} not in the vocabulary "
                f"{root / _FSD50K_TRUTH / 'vocabulary.csv'}"
            )
        entries.append(ClipEntry(key=fname, path=audio_dir / f"{fname}.wav", labels=labels,
                                 problem=outside_folder(Path(f"{fname}.wav"), audio_dir)))
    return entries


def folder_entries(root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[ClipEntry]:
    """Every audio file under ``root`` (recursively), labelled by its parent folder.

    Args:
        root: The folder to scan.
        extensions: File extensions to include (case-insensitive, with the dot).

    Returns:
        Entries sorted by relative path; ``key`` is the path relative to ``root`` (with ``/``), the single label is
        the name of the file's immediate parent folder, and files directly in ``root`` have no label. Every name
        with a wanted extension is listed, also a dangling symbolic link, a link loop or a folder named like an
        audio file: :func:`~aiaudio.audio.cache.build_cache` records each as a failure, by name and reason.

    Raises:
        DatasetError: ``root`` is not a folder or holds no audio files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"audio folder {root} does not exist or is not a folder")
    wanted = {extension.lower() for extension in extensions}
    files = sorted(
        (path for path in root.rglob("*") if path.suffix.lower() in wanted),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    if not files:
        raise DatasetError(f"no audio files ({', '.join(sorted(wanted))}) found under {root}")
    entries = []
    for path in files:
        relative = path.relative_to(root)
        labels = (relative.parent.name,) if relative.parent != Path(".") else ()
        entries.append(ClipEntry(key=relative.as_posix(), path=path, labels=labels))
    return entries


def csv_entries(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    path_column: str = "path",
    label_columns: Sequence[str] = ("label",),
    label_separator: str | None = None,
) -> list[ClipEntry]:
    """Clips listed in a CSV file with a header row.

    Args:
        csv_path: The CSV file.
        root: Folder that relative paths are resolved against; defaults to the CSV's folder.
        path_column: Column holding each clip's audio path; the path as written is the clip key.
        label_columns: Columns whose non-empty values become the clip's labels (in column order).
        label_separator: If given, each label cell is split on it (e.g. ``","`` for multi-label cells).

    Raises:
        DatasetError: The file or a column is missing, a path is empty, or a path appears twice.

    A path that leads outside ``root`` as written (``../x.wav``, an absolute path elsewhere) is listed with a
    ``problem`` saying so: :func:`~aiaudio.audio.cache.build_cache` records it as a
    failure and never opens it.
    """
    csv_path = Path(csv_path)
    root = csv_path.parent if root is None else Path(root)
    entries: list[ClipEntry] = []
    for _, key, row in _keyed_rows(csv_path, (path_column, *label_columns), path_column):
        labels: list[str] = []
        for column in label_columns:
            cell = (row[column] or "").strip()
            parts = cell.split(label_separator) if label_separator else [cell]
            labels.extend(part.strip() for part in parts if part.strip())
        entries.append(ClipEntry(key=key, path=root / key, labels=tuple(labels), problem=outside_folder(Path(key), root)))
    return entries


def outside_folder(path: Path, root: Path) -> str:
    """Why a listed ``path`` must not be opened as a clip of the data folder ``root``: as written (``..``, an absolute
    path) it leads outside it; empty when it stays inside. Symbolic links inside the folder are followed, as data
    folders often link their files from elsewhere; only the listing's own path is judged."""
    target = Path(os.path.normpath(os.path.join(os.path.abspath(root), path)))
    base = Path(os.path.normpath(os.path.abspath(root)))
    if target == base or base in target.parents:
        return ""
    return (
        f"outside the data folder {base}: the listed path leads to {target}; not opened (move the file into the data "
        "folder or set the data root to a folder that holds it)"
    )
