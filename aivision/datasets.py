"""Readers for the official on-disk layouts of the paper's downstream image sets.

Each reader takes the set's root folder as distributed (for CIFAR, Caltech-101, CUB and DTD either the unpacked
folder or the folder that holds it) and, where the set has official splits, a split name; it returns
:class:`LabelledImages`: image files as :class:`~aivision.data.ImageEntry` (or, for CIFAR, uint8 pixels in memory)
with their targets. Every file a split needs is read and checked before anything is returned, so a missing or
malformed file stops the run before any work, with an :class:`~aivision.data.ImageDataError` naming the file and what
was expected there.

The sets (``name``: layout under ``root``; splits):

- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, pickles of ``data`` (N x 3072
  uint8, channel-major 3 x 32 x 32), ``labels`` and ``label_names``; train, test. In memory.
- ``cifar100``: ``cifar-100-python/{train, test, meta}`` with ``fine_labels`` and ``coarse_labels``; ``meta``:
  ``fine_label_names``, ``coarse_label_names`` (option ``label``: fine or coarse); train, test. In memory.
- ``fc100``: CIFAR-100 (its train and test files together) split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20
  classes); train, val, test. In memory.
- ``flowers102``: ``jpg/image_00001.jpg...``, ``imagelabels.mat`` (``labels``, 1-based), ``setid.mat`` (``trnid``,
  ``valid``, ``tstid``); train, val, test, trainval.
- ``dtd``: ``images/<class>/*.jpg``, ``labels/{train,val,test}{1..10}.txt`` of paths relative to ``images/`` (option
  ``fold``); train, val, test, trainval.
- ``pets`` (Oxford-IIIT): ``images/<name>.jpg``, ``annotations/{trainval,test}.txt`` of lines ``name class_id species
  breed_id`` (class_id 1-based; the class name is ``name`` before its last ``_``); trainval, test.
- ``caltech101``: ``101_ObjectCategories/<class>/*.jpg`` without ``BACKGROUND_Google``; a seeded ``train_per_class``
  (30) images of each class train, the rest test; train, test.
- ``cub200``: ``CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
  images/<class>/*.jpg}``; train, test.
- ``300w``: any folder; every image with a ``.pts`` beside it (``version: 1``, ``n_points: 68``, ``{``, 68 lines
  ``x y``, ``}``); targets: 136 coordinates over the image's width and height; all.
- ``lsp`` (Leeds Sports Pose): ``images/im0001.jpg...``, ``joints.mat`` (3 x 14 x N: x, y, visibility; or LSP-extended's
  14 x 3 x N with ``im00001.jpg...``); targets: 28 coordinates over the image size; the first ``train_size`` (1000)
  images train, the rest test; train, test, all.
- ``celeba``: ``img_align_celeba/*.jpg``, ``list_landmarks_align_celeba.txt`` (a count, a header, then ``name x1 y1
  ... x5 y5``), ``list_eval_partition.txt`` (``name 0|1|2``), flat or in the official ``Img/``, ``Anno/``, ``Eval/``;
  targets: 10 coordinates over the aligned size 178 x 218; train, val, test, trainval, all.
- ``plant_village``: one folder per class; a seeded class-stratified ``test_fraction`` is test; all, train, test.

Targets are int64 class indices into ``class_names``, or float32 ``[N, D]`` coordinates ``x1, y1, x2, y2, ...``
normalised by the image's width and height (regression: ``class_names`` is empty and entries carry no labels; the
targets array holds them). CIFAR pickles are read with an unpickler that admits only what plain dicts, lists,
strings and numpy arrays need; anything else in a pickle is refused without being run.
"""

from __future__ import annotations

import inspect
import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from aiaudio.eval.readout import split_off
from aivision.data import IMAGE_EXTENSIONS, ImageDataError, ImageEntry, image_folder_entries

FC100_SUPERCLASSES: dict[str, tuple[int, ...]] = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}
FLOWERS_CLASSES = 102
PETS_CLASSES = 37
DTD_FOLDS = 10
LANDMARKS_300W = 68
CELEBA_SIZE = (178, 218)  # width, height of the aligned images


@dataclass
class LabelledImages:
    """A split of an official set: image files (``entries``) or uint8 pixels ``[N, 3, H, W]`` (``images``), with
    ``targets`` (int64 ``[N]`` class indices into ``class_names``, or float32 ``[N, D]`` with ``class_names`` empty).
    ``split`` names the split read (DTD: with its fold, e.g. ``train1``)."""

    name: str
    split: str
    targets: np.ndarray
    class_names: list[str]
    entries: list[ImageEntry] = field(default_factory=list)
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (not self.entries):
            raise ValueError("a LabelledImages holds either entries or images, not both nor neither")
        if len(self.targets) != len(self):
            raise ValueError(f"{len(self.targets)} targets for {len(self)} images")

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return "classification" if self.class_names else "regression"

    def __len__(self) -> int:
        return len(self.entries) if self.images is None else len(self.images)


# ---------------------------------------------------------------------------------------------------------- helpers


def _folder(root: Path | str, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageDataError(f"{root} is not a directory (expected {what})")
    return root


def _within(root: Path, name: str) -> Path:
    """``root/name`` when that is a folder, else ``root`` (given as the unpacked folder itself)."""
    return root / name if (root / name).is_dir() else root


def _file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ImageDataError(f"{path} does not exist (expected {what})")
    return path


def _first(root: Path, candidates: Sequence[str], what: str, directory: bool = False) -> Path:
    """The first of ``candidates`` under ``root`` that exists (flat layout, then the official sub-folders)."""
    for candidate in candidates:
        path = root / candidate
        if path.is_dir() if directory else path.is_file():
            return path
    raise ImageDataError(f"{root / candidates[0]} does not exist (expected {what})")


def _split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ImageDataError(f"{name} has the splits {list(allowed)}, not {split!r}")


def _listed_image(path: Path, source: Path, line: int | None = None) -> Path:
    if not path.is_file():
        where = f"{source}, line {line}" if line is not None else str(source)
        raise ImageDataError(f"{where}: lists the image {path}, which does not exist")
    return path


def _rows(path: Path, fields: int, what: str, skip: int = 0) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank line (after ``skip`` lines) of ``fields`` whitespace-separated
    fields; lines starting with ``#`` are comments."""
    _file(path, f"lines of {what}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ImageDataError(f"{path} is not readable text ({error})") from None
    rows = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != fields:
            raise ImageDataError(f"{path}, line {number}: expected '{what}', got {line.strip()!r}")
        rows.append((number, parts))
    if not rows:
        raise ImageDataError(f"{path} lists nothing (expected lines of '{what}')")
    return rows


def _integer(text: str, path: Path, line: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ImageDataError(f"{path}, line {line}: {what} must be an integer, got {text!r}") from None


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ImageDataError(f"{path}, line {line}: {what} must be a finite number, got {text!r}")
    return value


def _load_mat(path: Path, keys: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The numeric arrays ``keys`` of a MATLAB file."""
    import scipy.io

    _file(path, what)
    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as error:  # noqa: BLE001 - loadmat fails on a corrupt file with many error types
        raise ImageDataError(f"{path} is not a readable MATLAB file ({error}); expected {what}") from None
    arrays = {}
    for key in keys:
        value = contents.get(key)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.size == 0:
            raise ImageDataError(f"{path} has no numeric array {key!r} (expected {what})")
        arrays[key] = value
    return arrays


def _mat_ids(path: Path, array: np.ndarray, key: str) -> np.ndarray:
    """A MATLAB array of whole numbers as int64 ``[N]``."""
    values = array.ravel()
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ImageDataError(f"{path}: {key!r} must hold whole numbers")
    return values.astype(np.int64)


def _classified(name: str, split: str, entries: list[ImageEntry], targets: Sequence[int],
                class_names: list[str], source: Path) -> LabelledImages:
    if not entries:
        raise ImageDataError(f"{source}: the {split} split of {name} holds no images")
    return LabelledImages(name, split, np.asarray(targets, dtype=np.int64), class_names, entries)


def _regressed(name: str, split: str, entries: list[ImageEntry], targets: list[np.ndarray],
               source: Path) -> LabelledImages:
    if not entries:
        raise ImageDataError(f"{source}: the {split} split of {name} holds no images")
    return LabelledImages(name, split, np.stack(targets).astype(np.float32), [], entries)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image, from its PNG or JPEG header, else by decoding it."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageDataError(f"{path} is not readable ({error})") from None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        if width and height:
            return width, height
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        if size is not None:
            return size
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as error:
        raise ImageDataError(f"{path} is not a readable image ({error})") from None
    return int(image.shape[-1]), int(image.shape[-2])


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's start-of-frame segment, or None."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        if marker in _JPEG_FRAMES and offset + 9 <= len(data):
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return (width, height) if width and height else None
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return None


# ------------------------------------------------------------------------------------------------ CIFAR and FC100


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles of bytes call it, for latin-1 only."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode with the encoding {encoding!r}")
    return text.encode("latin1")


_ARRAY = np.zeros(1, dtype=np.uint8)
# What plain dicts, lists, strings and numpy arrays pickle into (Python 2 and 3, numpy 1 and 2), and nothing else.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"{package}.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0] for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.multiarray", "scalar"): np.uint8(0).__reduce__()[0] for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0] for package in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,
}


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something beyond plain data."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global without loading it."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _load_pickle(path: Path, what: str) -> dict[str, Any]:
    """A CIFAR python pickle (a dict; bytes keys, as Python 2 wrote them, become str)."""
    _file(path, what)
    try:
        with open(path, "rb") as handle:
            record = _PlainUnpickler(handle, encoding="latin1").load()
    except _Refused as error:
        raise ImageDataError(f"{path} asks to load {error}: refused (a CIFAR pickle holds only dicts, lists, strings "
                             "and numpy arrays)") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, LookupError, AttributeError,
            OverflowError, MemoryError, RecursionError) as error:  # the ways a malformed pickle fails
        raise ImageDataError(f"{path} is not a readable pickle ({type(error).__name__}: {error}); expected "
                             f"{what}") from None
    if not isinstance(record, dict):
        raise ImageDataError(f"{path} holds a {type(record).__name__}, not a dict (expected {what})")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in record.items()}


def _cifar_names(path: Path, key: str) -> list[str]:
    names = _load_pickle(path, f"the CIFAR metadata with {key!r}").get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise ImageDataError(f"{path} has no list of class names {key!r}")
    return [name.decode("latin1") if isinstance(name, bytes) else name for name in names]


def _cifar_batch(path: Path, label_counts: dict[str, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``data`` (N x 3072 uint8) and each of ``label_counts``' label lists, checked against its class count."""
    record = _load_pickle(path, f"a CIFAR batch with 'data' and {list(label_counts)}")
    data = record.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and len(data)):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ImageDataError(f"{path}: 'data' must be a uint8 array N x 3072 (3 x 32 x 32, channel-major), got {got}")
    labels = []
    for key, count in label_counts.items():
        raw = record.get(key)
        values = np.asarray(raw) if isinstance(raw, (list, np.ndarray)) else None
        if values is None or values.dtype.kind not in "iu" or values.shape != (len(data),):
            raise ImageDataError(f"{path}: {key!r} must list {len(data)} integer labels")
        bad = np.flatnonzero((values < 0) | (values >= count))
        if len(bad):
            raise ImageDataError(f"{path}: {key}[{bad[0]}] = {values[bad[0]]} lies outside the {count} classes")
        labels.append(values.astype(np.int64))
    return data, labels


def _cifar_images(batches: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(batches)).reshape(-1, 3, 32, 32)


def read_cifar10(root: Path, split: str = "train") -> LabelledImages:
    """CIFAR-10 from ``cifar-10-batches-py``: train (``data_batch_1..5``) or test (``test_batch``), in memory."""
    _split("cifar10", split, ("train", "test"))
    folder = _within(_folder(root, "the CIFAR-10 folder cifar-10-batches-py"), "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [_file(folder / name, "a CIFAR-10 python batch") for name in names]
    class_names = _cifar_names(_file(folder / "batches.meta", "the CIFAR-10 metadata"), "label_names")
    batches = [_cifar_batch(path, {"labels": len(class_names)}) for path in files]
    targets = np.concatenate([labels[0] for _, labels in batches])
    return LabelledImages("cifar10", split, targets, class_names, images=_cifar_images([d for d, _ in batches]))


def _cifar100_files(root: Path, names: Sequence[str]) -> tuple[list[Path], Path]:
    folder = _within(_folder(root, "the CIFAR-100 folder cifar-100-python"), "cifar-100-python")
    files = [_file(folder / name, "a CIFAR-100 python file") for name in names]
    return files, _file(folder / "meta", "the CIFAR-100 metadata")


def read_cifar100(root: Path, split: str = "train", label: str = "fine") -> LabelledImages:
    """CIFAR-100 from ``cifar-100-python``: train or test, labelled by ``fine`` (100) or ``coarse`` (20) class."""
    _split("cifar100", split, ("train", "test"))
    if label not in ("fine", "coarse"):
        raise ImageDataError(f"cifar100 labels are 'fine' or 'coarse', not {label!r}")
    (path,), meta = _cifar100_files(root, [split])
    class_names = _cifar_names(meta, f"{label}_label_names")
    data, (targets,) = _cifar_batch(path, {f"{label}_labels": len(class_names)})
    return LabelledImages("cifar100", split, targets, class_names, images=_cifar_images([data]))


def read_fc100(root: Path, split: str = "train") -> LabelledImages:
    """FC100 (Oreshkin et al. 2018, TADAM; the split learn2learn uses): all 600 images of each CIFAR-100 class (its
    train and test files together), split by superclass: train 1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19; val 8, 11,
    13, 16; test 0, 7, 12, 14 (60 / 20 / 20 classes). Targets index the split's fine classes, in CIFAR order."""
    _split("fc100", split, tuple(FC100_SUPERCLASSES))
    files, meta = _cifar100_files(root, ["train", "test"])
    fine_names = _cifar_names(meta, "fine_label_names")
    coarse_count = len(_cifar_names(meta, "coarse_label_names"))
    batches = [_cifar_batch(path, {"fine_labels": len(fine_names), "coarse_labels": coarse_count}) for path in files]
    fine = np.concatenate([labels[0] for _, labels in batches])
    coarse = np.concatenate([labels[1] for _, labels in batches])
    chosen = np.isin(coarse, FC100_SUPERCLASSES[split])
    if not chosen.any():
        raise ImageDataError(f"{files[0]}: no image lies in the {split} superclasses {FC100_SUPERCLASSES[split]}")
    classes = np.unique(fine[chosen])
    images = _cifar_images([d for d, _ in batches])[torch.from_numpy(chosen)]
    return LabelledImages("fc100", split, np.searchsorted(classes, fine[chosen]).astype(np.int64),
                          [fine_names[c] for c in classes], images=images)


# ------------------------------------------------------------------------------------- classification image files


def read_flowers102(root: Path, split: str = "train") -> LabelledImages:
    """Oxford Flowers-102: ``jpg/``, ``imagelabels.mat``, ``setid.mat``. Class names are the 1-based label numbers
    ("1".."102"): the distribution ships none."""
    parts = {"train": ["trnid"], "val": ["valid"], "test": ["tstid"], "trainval": ["trnid", "valid"]}
    _split("flowers102", split, tuple(parts))
    root = _folder(root, "the Flowers102 folder with jpg/, imagelabels.mat and setid.mat")
    labels_file, setid_file = root / "imagelabels.mat", root / "setid.mat"
    labels = _mat_ids(labels_file, _load_mat(labels_file, ["labels"], "'labels' (1-based classes)")["labels"], "labels")
    ids_by_key = _load_mat(setid_file, parts[split], "'trnid', 'valid' and 'tstid' (1-based image ids)")
    ids = np.sort(np.concatenate([_mat_ids(setid_file, ids_by_key[k], k) for k in parts[split]]))
    outside = ids[(ids < 1) | (ids > len(labels))]
    if len(outside):
        raise ImageDataError(f"{setid_file}: image id {outside[0]} lies outside the {len(labels)} images of "
                             f"{labels_file}")
    bad = np.flatnonzero((labels < 1) | (labels > FLOWERS_CLASSES))
    if len(bad):
        raise ImageDataError(f"{labels_file}: labels[{bad[0]}] = {labels[bad[0]]} lies outside 1..{FLOWERS_CLASSES}")
    class_names = [str(number) for number in range(1, FLOWERS_CLASSES + 1)]
    entries, targets = [], []
    for image_id in ids:
        key = f"jpg/image_{image_id:05d}.jpg"
        target = int(labels[image_id - 1]) - 1
        entries.append(ImageEntry(key, _listed_image(root / key, setid_file), (class_names[target],)))
        targets.append(target)
    return _classified("flowers102", split, entries, targets, class_names, setid_file)


def read_dtd(root: Path, split: str = "train", fold: int = 1) -> LabelledImages:
    """The Describable Textures Dataset: ``images/<class>/``, ``labels/{train,val,test}<fold>.txt`` (fold 1..10)."""
    _split("dtd", split, ("train", "val", "test", "trainval"))
    if not (isinstance(fold, int) and 1 <= fold <= DTD_FOLDS):
        raise ImageDataError(f"dtd folds are 1..{DTD_FOLDS}, not {fold!r}")
    root = _within(_folder(root, "the DTD folder with images/ and labels/"), "dtd")
    images = root / "images"
    if not images.is_dir():
        raise ImageDataError(f"{images} is not a directory (expected DTD's images/<class>/*.jpg)")
    class_names = sorted(path.name for path in images.iterdir() if path.is_dir())
    index = {name: position for position, name in enumerate(class_names)}
    files = [_file(root / "labels" / f"{part}{fold}.txt", "DTD image paths relative to images/")
             for part in (["train", "val"] if split == "trainval" else [split])]
    entries, targets = [], []
    for path in files:
        for line, (relative,) in _rows(path, 1, "<class>/<image>.jpg relative to images/"):
            name = relative.split("/")[0]
            if "/" not in relative or ".." in relative.split("/") or name not in index:
                raise ImageDataError(f"{path}, line {line}: {relative!r} is not <class>/<image> of a class folder "
                                     f"in {images}")
            entries.append(ImageEntry(f"images/{relative}", _listed_image(images / relative, path, line), (name,)))
            targets.append(index[name])
    return _classified("dtd", f"{split}{fold}", entries, targets, class_names, files[0])


def read_pets(root: Path, split: str = "trainval") -> LabelledImages:
    """Oxford-IIIT Pets: ``images/``, ``annotations/{trainval,test}.txt``. Both lists are read and checked so that
    class indices agree between splits; a class is named by its images' names before the last ``_``."""
    _split("pets", split, ("trainval", "test"))
    root = _folder(root, "the Oxford-IIIT Pets folder with images/ and annotations/")
    files = {part: _file(root / "annotations" / f"{part}.txt", "lines 'name class_id species breed_id'")
             for part in ("trainval", "test")}
    names: dict[int, str] = {}
    listed: list[tuple[int, str, int]] = []
    for part, path in files.items():
        for line, (name, class_text, species_text, breed_text) in _rows(path, 4, "name class_id species breed_id"):
            class_id = _integer(class_text, path, line, "class_id")
            species = _integer(species_text, path, line, "species")
            _integer(breed_text, path, line, "breed_id")
            if not 1 <= class_id <= PETS_CLASSES:
                raise ImageDataError(f"{path}, line {line}: class_id {class_id} lies outside 1..{PETS_CLASSES}")
            if species not in (1, 2):
                raise ImageDataError(f"{path}, line {line}: species must be 1 (cat) or 2 (dog), got {species}")
            if "_" not in name:
                raise ImageDataError(f"{path}, line {line}: {name!r} is not <breed>_<number>")
            breed = name.rsplit("_", 1)[0]
            if names.setdefault(class_id, breed) != breed:
                raise ImageDataError(f"{path}, line {line}: class_id {class_id} is {breed!r} here but "
                                     f"{names[class_id]!r} on an earlier line")
            if part == split:
                listed.append((line, name, class_id))
    missing = [number for number in range(1, max(names) + 1) if number not in names]
    if missing:
        raise ImageDataError(f"{files['trainval']} and {files['test']} list no image of class_id {missing}")
    class_names = [names[number] for number in range(1, max(names) + 1)]
    entries = [ImageEntry(f"images/{name}.jpg", _listed_image(root / "images" / f"{name}.jpg", files[split], line),
                          (class_names[class_id - 1],)) for line, name, class_id in listed]
    return _classified("pets", split, entries, [class_id - 1 for _, _, class_id in listed], class_names, files[split])


def read_caltech101(root: Path, split: str = "train", train_per_class: int = 30, seed: int = 0) -> LabelledImages:
    """Caltech-101 (``101_ObjectCategories``, without ``BACKGROUND_Google``): ``train_per_class`` images of each class
    drawn with ``seed`` (classes in sorted order) train, the rest test."""
    _split("caltech101", split, ("train", "test"))
    if train_per_class < 1:
        raise ImageDataError(f"caltech101 needs train_per_class >= 1, got {train_per_class}")
    folder = _within(_folder(root, "the Caltech-101 folder 101_ObjectCategories"), "101_ObjectCategories")
    by_class: dict[str, list[ImageEntry]] = {}
    for entry in image_folder_entries(folder):
        if entry.labels[0] != "BACKGROUND_Google":
            by_class.setdefault(entry.labels[0], []).append(entry)
    if not by_class:
        raise ImageDataError(f"{folder} holds no class folder besides BACKGROUND_Google")
    class_names = sorted(by_class)
    rng = np.random.default_rng(seed)
    entries, targets = [], []
    for target, name in enumerate(class_names):
        images = by_class[name]
        if len(images) <= train_per_class:
            raise ImageDataError(f"{folder / name} holds {len(images)} images; the protocol trains on "
                                 f"{train_per_class} and tests on the rest, so it needs more")
        chosen = set(rng.choice(len(images), train_per_class, replace=False).tolist())
        picked = [entry for i, entry in enumerate(images) if (i in chosen) == (split == "train")]
        entries += picked
        targets += [target] * len(picked)
    return _classified("caltech101", split, entries, targets, class_names, folder)


def _id_table(path: Path, what: str) -> dict[int, tuple[int, str]]:
    """``id -> (line, value)`` of a CUB metadata file of lines ``id value``."""
    table: dict[int, tuple[int, str]] = {}
    for line, (id_text, value) in _rows(path, 2, what):
        key = _integer(id_text, path, line, "the id")
        if key in table:
            raise ImageDataError(f"{path}, line {line}: id {key} is listed again (first on line {table[key][0]})")
        table[key] = (line, value)
    return table


def read_cub200(root: Path, split: str = "train") -> LabelledImages:
    """CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` (1: train, 0: test),
    ``classes.txt`` and ``images/``; class names as in ``classes.txt`` (e.g. ``001.Black_footed_Albatross``)."""
    _split("cub200", split, ("train", "test"))
    folder = _within(_folder(root, "the CUB-200-2011 folder CUB_200_2011"), "CUB_200_2011")
    paths = {name: _file(folder / f"{name}.txt", "CUB metadata")
             for name in ("images", "image_class_labels", "train_test_split", "classes")}
    classes = _id_table(paths["classes"], "class_id class_name")
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise ImageDataError(f"{paths['classes']} must number its classes 1..{len(classes)}")
    class_names = [classes[number][1] for number in range(1, len(classes) + 1)]
    images = _id_table(paths["images"], "image_id path")
    labels = _id_table(paths["image_class_labels"], "image_id class_id")
    splits = _id_table(paths["train_test_split"], "image_id is_training_image")
    entries, targets = [], []
    for image_id, (line, relative) in images.items():
        for table, name in ((labels, "image_class_labels"), (splits, "train_test_split")):
            if image_id not in table:
                raise ImageDataError(f"{paths[name]} has no line for image id {image_id} (of {paths['images']})")
        label_line, label_text = labels[image_id]
        class_id = _integer(label_text, paths["image_class_labels"], label_line, "class_id")
        if not 1 <= class_id <= len(class_names):
            raise ImageDataError(f"{paths['image_class_labels']}, line {label_line}: class_id {class_id} lies outside "
                                 f"1..{len(class_names)} of {paths['classes']}")
        split_line, split_text = splits[image_id]
        is_train = _integer(split_text, paths["train_test_split"], split_line, "is_training_image")
        if is_train not in (0, 1):
            raise ImageDataError(f"{paths['train_test_split']}, line {split_line}: is_training_image must be 0 or 1")
        if ".." in relative.split("/"):
            raise ImageDataError(f"{paths['images']}, line {line}: {relative!r} points outside images/")
        path = _listed_image(folder / "images" / relative, paths["images"], line)
        if (is_train == 1) == (split == "train"):
            entries.append(ImageEntry(f"images/{relative}", path, (class_names[class_id - 1],)))
            targets.append(class_id - 1)
    return _classified("cub200", split, entries, targets, class_names, paths["train_test_split"])


def stratified_test_mask(targets: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """bool ``[N]``: a seeded ``test_fraction`` of each class (round(fraction * n), at most n - 1) is test."""
    if not 0.0 < test_fraction < 1.0:
        raise ImageDataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    targets = np.asarray(targets, dtype=np.int64)
    _, held = split_off(torch.arange(len(targets)), test_fraction, seed, torch.from_numpy(targets))
    mask = np.zeros(len(targets), dtype=bool)
    mask[held.numpy()] = True
    return mask


def read_plant_village(root: Path, split: str = "all", test_fraction: float = 0.2, seed: int = 0) -> LabelledImages:
    """PlantVillage (one folder per class): everything, or a seeded class-stratified train / test split."""
    _split("plant_village", split, ("all", "train", "test"))
    entries = image_folder_entries(Path(root).expanduser())
    class_names = sorted({entry.labels[0] for entry in entries})
    index = {name: position for position, name in enumerate(class_names)}
    targets = np.array([index[entry.labels[0]] for entry in entries], dtype=np.int64)
    if split != "all":
        if len(entries) < 2:
            raise ImageDataError(f"{root} holds {len(entries)} image: too few to split")
        keep = stratified_test_mask(targets, test_fraction, seed) == (split == "test")
        entries, targets = [entry for entry, k in zip(entries, keep) if k], targets[keep]
    return _classified("plant_village", split, entries, targets.tolist(), class_names, Path(root))


# -------------------------------------------------------------------------------------------------------- landmarks


def read_pts(path: Path, count: int = LANDMARKS_300W) -> np.ndarray:
    """float64 ``[count, 2]`` points of an ibug ``.pts`` file (``version: 1``, ``n_points: N``, ``{``, N lines
    ``x y``, ``}``)."""
    try:
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ImageDataError(f"{path} is not readable text ({error})") from None
    expected = ["version: 1", f"n_points: {count}", "{"]
    for position, want in enumerate(expected):
        got = lines[position][1] if position < len(lines) else "the end of the file"
        if " ".join(got.replace(":", ": ").split()) != want:
            raise ImageDataError(f"{path}, line {lines[position][0] if position < len(lines) else len(lines) + 1}: "
                                 f"expected {want!r}, got {got!r} (a .pts file of {count} points)")
    body = lines[3 : 3 + count]
    if len(lines) != count + 4 or lines[-1][1] != "}":
        raise ImageDataError(f"{path}: expected {count} lines 'x y' between '{{' and '}}' and nothing after, got "
                             f"{len(lines) - 3} lines after '{{'")
    points = []
    for line, text in body:
        fields = text.split()
        if len(fields) != 2:
            raise ImageDataError(f"{path}, line {line}: expected 'x y', got {text!r}")
        points.append([_number(value, path, line, "a coordinate") for value in fields])
    return np.array(points)


def _normalised(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``x1, y1, x2, y2, ...`` of ``[K, 2]`` points divided by ``(width, height)``."""
    return (points / np.asarray(size, dtype=np.float64)).reshape(-1)


def read_300w(root: Path, split: str = "all") -> LabelledImages:
    """300W (or any ibug-annotated folder): every image under ``root`` with a 68-point ``.pts`` beside it; targets
    are the 136 coordinates divided by the image's width and height."""
    _split("300w", split, ("all",))
    root = _folder(root, "a folder of images with 68-point .pts files beside them")
    images = sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS
                    and path.with_suffix(".pts").is_file() and path.is_file())
    if not images:
        raise ImageDataError(f"{root} holds no image with a .pts file beside it")
    points = [read_pts(path.with_suffix(".pts")) for path in images]
    targets = [_normalised(p, image_size(path)) for p, path in zip(points, images)]
    entries = [ImageEntry(path.relative_to(root).as_posix(), path) for path in images]
    return _regressed("300w", split, entries, targets, root)


def read_lsp(root: Path, split: str = "train", train_size: int = 1000) -> LabelledImages:
    """Leeds Sports Pose: ``joints.mat`` (3 x 14 x N, or 14 x 3 x N for LSP-extended) and ``images/im0001.jpg...``
    (LSP-extended: ``im00001.jpg...``); targets: 14 joints' x, y divided by the image's width and height.
    The official split: the first ``train_size`` images train, the rest test (LSP-extended, all training: ``all``)."""
    _split("lsp", split, ("train", "test", "all"))
    root = _folder(root, "the LSP folder with images/ and joints.mat")
    path = root / "joints.mat"
    joints = _load_mat(path, ["joints"], "'joints', 3 x 14 x N (LSP) or 14 x 3 x N (LSP-extended)")["joints"]
    if joints.ndim == 3 and joints.shape[:2] == (3, 14):
        xy, digits = joints[:2].transpose(2, 1, 0), 4
    elif joints.ndim == 3 and joints.shape[:2] == (14, 3):
        xy, digits = joints.transpose(2, 0, 1)[:, :, :2], 5
    else:
        raise ImageDataError(f"{path}: 'joints' must be 3 x 14 x N (LSP) or 14 x 3 x N (LSP-extended), got "
                             f"{' x '.join(map(str, joints.shape))}")
    if not np.all(np.isfinite(xy)):
        raise ImageDataError(f"{path}: 'joints' holds non-finite coordinates")
    count = len(xy)
    chosen = {"all": range(count), "train": range(min(train_size, count)), "test": range(train_size, count)}[split]
    entries, targets = [], []
    for i in chosen:
        key = f"images/im{i + 1:0{digits}d}.jpg"
        image = _listed_image(root / key, path)
        entries.append(ImageEntry(key, image))
        targets.append(_normalised(xy[i], image_size(image)))
    return _regressed("lsp", split, entries, targets, path)


def read_celeba(root: Path, split: str = "train") -> LabelledImages:
    """CelebA aligned faces: the 5 landmarks (10 coordinates) divided by the aligned size 178 x 218, split by
    ``list_eval_partition.txt`` (0 train, 1 val, 2 test)."""
    parts = {"train": {0}, "val": {1}, "test": {2}, "trainval": {0, 1}, "all": {0, 1, 2}}
    _split("celeba", split, tuple(parts))
    root = _folder(root, "the CelebA folder with img_align_celeba/ and the landmark and partition lists")
    images = _first(root, ["img_align_celeba", "Img/img_align_celeba"], "the aligned images", directory=True)
    what = "a count, a header, then lines 'name x1 y1 ... x5 y5'"
    landmarks_file = _first(root, ["list_landmarks_align_celeba.txt", "Anno/list_landmarks_align_celeba.txt"], what)
    partition_file = _first(root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"], "lines 'name 0|1|2'")
    head = landmarks_file.read_text(encoding="utf-8", errors="replace").splitlines()[:2]
    if len(head) < 2 or not head[0].strip().isdigit() or len(head[1].split()) != 10:
        raise ImageDataError(f"{landmarks_file}: lines 1 and 2 must be the image count and the 10 column names")
    rows = _rows(landmarks_file, 11, "name x1 y1 ... x5 y5", skip=2)
    if len(rows) != int(head[0]):
        raise ImageDataError(f"{landmarks_file}: line 1 says {int(head[0])} images, but it lists {len(rows)}")
    scale = np.array(CELEBA_SIZE * 5, dtype=np.float64)
    landmarks = {name: np.array([_number(v, landmarks_file, line, "a coordinate") for v in values]) / scale
                 for line, (name, *values) in rows}
    entries, targets = [], []
    for line, (name, part_text) in _rows(partition_file, 2, "name 0|1|2"):
        part = _integer(part_text, partition_file, line, "the partition")
        if part not in (0, 1, 2):
            raise ImageDataError(f"{partition_file}, line {line}: the partition must be 0, 1 or 2, got {part}")
        if name not in landmarks:
            raise ImageDataError(f"{partition_file}, line {line}: {name} has no landmarks in {landmarks_file}")
        if part in parts[split]:
            path = _listed_image(images / name, partition_file, line)
            entries.append(ImageEntry(path.relative_to(root).as_posix(), path))
            targets.append(landmarks[name])
    return _regressed("celeba", split, entries, targets, partition_file)


# ------------------------------------------------------------------------------------------------------- dispatcher

READERS: dict[str, Callable[..., LabelledImages]] = {
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "fc100": read_fc100,
    "flowers102": read_flowers102,
    "dtd": read_dtd,
    "pets": read_pets,
    "caltech101": read_caltech101,
    "cub200": read_cub200,
    "300w": read_300w,
    "lsp": read_lsp,
    "celeba": read_celeba,
    "plant_village": read_plant_village,
}


def read_official(name: str, root: Path, split: str, **options: Any) -> LabelledImages:
    """The ``split`` of the set ``name`` (a key of :data:`READERS`) from its official layout under ``root``; options
    go to the reader (``fold``, ``label``, ``train_per_class``, ``seed``, ``train_size``, ``test_fraction``)."""
    reader = READERS.get(name.lower().replace("-", "_"))
    if reader is None:
        raise ImageDataError(f"unknown data set {name!r}; known: {', '.join(READERS)}")
    try:
        inspect.signature(reader).bind(root, split, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "split")]
        raise ImageDataError(f"{name} takes the options {accepted}, not {sorted(options)}") from None
    return reader(Path(root), split, **options)
