"""Build the real-image mini benchmark from Debian packages (``apt-get download`` + ``dpkg-deb -x``, nothing
installed), in the official layouts the real readers read. No image is committed; each package's copyright file is
kept in ``licences/``; ``manifest.json`` records every package's version, ``.deb`` checksum, licences and use, and
the SHA-256 of every source file a set was built from. Rerunning reuses what is built.

The sets built so far:

* ``fashion_cifar/cifar-10-batches-py``: Fashion-MNIST (dataset-fashion-mnist) written as CIFAR-10 python pickles
  (each 28 x 28 grey image padded to 32 x 32 and repeated on three channels; 60,000 train images in five batches,
  10,000 test), so ``aivision linear ... data.format=official data.official=cifar10`` reads it;
* ``units``: Wesnoth unit sprites (wesnoth-1.16-data), one class per unit (a sprite's unit is the longest proper prefix
  of its name that is a base sprite of its folder), classes with at least ``MIN_PER_UNIT`` sprites, split class-disjointly
  into ``train`` / ``val`` / ``test`` folders by a hash of the class name; RGBA composited on mid grey. ``aivision
  fewshot data.root=.../units`` reads it.

* ``landmarks``: a regression set whose targets are known exactly, in the CelebA layout (``img_align_celeba/``,
  ``list_landmarks_align_celeba.txt``, ``list_eval_partition.txt``; 178 x 218 images): a Tux Paint stamp
  (tuxpaint-stamps-default, RGBA cut-outs) pasted onto a crop of an Endless Sky landscape (endless-sky-data) at a
  random position, size and rotation; the five landmarks are the pasted stamp's four corners (top-left, top-right,
  bottom-right, bottom-left) and its centre. ``aivision linear ... data.format=official data.official=celeba
  data.task=regression`` reads it.

* ``scenes``: Endless Sky landscape photos (endless-sky-data) by scene, in the DTD layout (``images/<class>/*.jpg``,
  ``labels/{train,val,test}1.txt``): the class is the file name without its number (``canyon3.jpg``: canyon),
  names that credit a photographer rather than a scene (``NOT_SCENES``) left out, classes with at least
  ``SCENE_MIN`` photos; about half of each class train, a quarter validation, a quarter test. ``aivision linear ...
  data.format=official data.official=dtd data.train_split=train data.test_split=test`` reads it.

* ``materials``: photo-derived game textures (the ``.jpg`` and ``.png`` textures inside the ``.pk3`` archives of
  ufoai-textures, openarena-081-textures and nexuiz-textures; normal, bump, glow and other maps left out, exact and
  same-name copies kept once, images under ``TEXTURE_MIN_SIDE`` pixels left out) by the material keyword in the file
  name (``MATERIALS``: ``wall_brick03.jpg``: brick), classes with at least ``MATERIAL_MIN`` textures, in the DTD
  layout (half train, a quarter validation, a quarter test, by a hash of the name). Noisy by construction: a name
  says what the texture shows only roughly.

* ``clipart``: openclipart-png drawings by their category folder (``animals/mammals``: ``animals_mammals``), folders
  with at least ``CLIPART_MIN`` drawings (at most ``CLIPART_MAX``, chosen by a hash of the name; ``unsorted`` left
  out), composited on white, the longer side at most ``CLIPART_SIDE`` pixels, in the Caltech-101 layout
  (``101_ObjectCategories/<class>/image_NNNN.jpg``): the official reader trains on 30 drawings per class and tests on
  the rest.

* ``pool``: the unlabelled pretraining images in the ImageNet layout (``train/<source>/*.jpg``): square crops of the
  textures that carry no material keyword (so none is a ``materials`` image) and of the wallpapers of
  plasma-workspace-wallpapers (each wallpaper's largest rendering) and mate-backgrounds, each crop resized to a side
  between ``POOL_SIDES``; ``CROPS_PER_TEXTURE`` crops of each texture and ``CROPS_PER_WALLPAPER`` of each wallpaper.
  No pool image comes from an image another set uses: the landscapes (``scenes``, ``landmarks``), the stamps, the
  sprites, the clip-art and Fashion-MNIST are not pool sources, and material textures are not either.

    benchmarks/vision_minibench/build                   # into data/vision_minibench
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import math
import pickle
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, write_jpeg, write_png

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.minibench.build import BuildError, build_set, download_packages, package_facts, unpack

LOG = logging.getLogger("vision_minibench.build")

FASHION_PACKAGE = "dataset-fashion-mnist"
UNITS_PACKAGE = "wesnoth-1.16-data"
STAMPS_PACKAGE = "tuxpaint-stamps-default"
LANDSCAPES_PACKAGE = "endless-sky-data"
SCENE_MIN = 7
NOT_SCENES = frozenset({"nasa", "myrabella", "bwerner"})  # photographers' names, not scenes
LANDMARK_IMAGES = 2000
LANDMARK_SIZE = (218, 178)  # height, width: CelebA's aligned size
LANDMARK_SPLITS = (0.8, 0.1)  # train, val; the rest test
CELEBA_HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
MIN_PER_UNIT = 10
UNIT_SPLITS = (("train", 0.64), ("val", 0.16), ("test", 0.20))
BACKGROUND = 128
TEXTURE_PACKAGES = ("ufoai-textures", "openarena-081-textures", "nexuiz-textures")
WALLPAPER_PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds")
CLIPART_PACKAGE = "openclipart-png"
#: A texture whose name ends so is a map for the renderer (normals, bumps, glow, gloss...), not a picture.
TEXTURE_MAPS = re.compile(r"(_nm|_norm|_normal|_bump|_glow|_gloss|_spec|_ow|_shell|_luma|_blend|_height|_h|_mask|_fx"
                          r"|_add)$")
TEXTURE_MIN_SIDE = 128
#: Material class -> the file-name keywords that name it, in order of precedence (the first class that matches wins).
MATERIALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("wood", ("wood", "plank", "bark", "crate")), ("metal", ("metal", "mtl", "steel", "iron", "plate")),
    ("rust", ("rust", "rst")), ("brick", ("brick",)), ("rock", ("rock", "stone", "cliff", "boulder")),
    ("marble", ("marble",)), ("concrete", ("concrete", "crete", "cement")), ("grass", ("grass",)),
    ("sand", ("sand", "desert")), ("dirt", ("dirt", "mud", "soil")), ("tile", ("tile",)), ("water", ("water",)),
    ("lava", ("lava",)), ("snow", ("snow", "ice")), ("plaster", ("plaster",)), ("carpet", ("carpet", "rug")),
    ("glass", ("glass", "window")), ("fabric", ("fabric", "cloth")),
    ("leaves", ("leaf", "leaves", "foliage", "bush")), ("gravel", ("gravel",)), ("asphalt", ("asphalt",)))
MATERIAL_MIN = 25
CLIPART_MIN = 40
CLIPART_MAX = 100
CLIPART_SIDE = 160
CLIPART_LEFT_OUT = frozenset({"unsorted"})
POOL_SIDES = (64, 96)
CROPS_PER_TEXTURE = 9
CROPS_PER_WALLPAPER = 96
POOL_MINIMUM = 20000


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST format), gzip-compressed: magic ``0 0 8 ndim``, big-endian dims, uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise BuildError(f"{path} is not a uint8 IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise BuildError(f"{path}: the header says {dims}, the file holds {array.size} values")
    return array.reshape(dims)


def fashion_files(unpacked: Path) -> dict[str, Path]:
    folder = unpacked / "usr" / "share" / "datasets" / "fashion-mnist"
    names = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    files = {key: folder / name for key, name in names.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise BuildError(f"{FASHION_PACKAGE} lacks {missing}")
    return files


def as_cifar_rows(images: np.ndarray) -> np.ndarray:
    """``[N, 28, 28]`` grey -> ``[N, 3072]`` CIFAR rows (32 x 32 after a 2-pixel zero border, channel-major RGB)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3 * 32 * 32)


def write_fashion_cifar(files: dict[str, Path], out: Path) -> dict[str, Any]:
    """Fashion-MNIST as ``out/cifar-10-batches-py`` (see the module docstring)."""
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = read_idx(files["train_images"]), read_idx(files["train_labels"])
    test, test_labels = read_idx(files["test_images"]), read_idx(files["test_labels"])
    if len(train) != len(train_labels) or len(test) != len(test_labels):
        raise BuildError("Fashion-MNIST images and labels disagree in number")
    for index, part in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        _dump(folder / f"data_batch_{index}", {"batch_label": f"training batch {index} of 5",
                                               "data": as_cifar_rows(train[part]),
                                               "labels": [int(v) for v in train_labels[part]]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": as_cifar_rows(test),
                                  "labels": [int(v) for v in test_labels]})
    _dump(folder / "batches.meta", {"label_names": list(FASHION_CLASSES), "num_vis": 3072,
                                    "num_cases_per_batch": len(train) // 5})
    return {"train_images": len(train), "test_images": len(test), "classes": len(FASHION_CLASSES),
            "sources": {path.name: sha256_of(path) for path in files.values()}}


def _dump(path: Path, record: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        pickle.dump(record, handle, protocol=2)


def decoded(path: Path, mode: ImageReadMode) -> torch.Tensor | None:
    """The image at ``path`` (uint8 ``[C, H, W]``), or None with a warning naming it when it does not decode."""
    try:
        return decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError) as error:
        LOG.warning("skipping %s: %s", path, error)
        return None


def on_background(rgba: torch.Tensor, value: float) -> torch.Tensor:
    """Float RGB ``[3, H, W]`` of uint8 RGBA composited over a flat background of ``value`` (0-255)."""
    alpha = rgba[3:].float() / 255
    return rgba[:3].float() * alpha + value * (1 - alpha)


def unit_sprites(unpacked: Path) -> dict[str, list[Path]]:
    """Unit class -> its sprites, from ``.../core/images/units/<race>/*.png`` (see the module docstring)."""
    root = next(iter(sorted(unpacked.rglob("core/images/units"))), None)
    if root is None:
        raise BuildError(f"{UNITS_PACKAGE} holds no core/images/units folder")
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        stems = {p.stem for p in folder.glob("*.png")}
        for path in sorted(folder.glob("*.png")):
            parts = path.stem.split("-")
            unit = next(("-".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if "-".join(parts[:n]) in stems),
                        path.stem)  # the longest proper prefix that is a base sprite, else the sprite itself
            classes.setdefault(f"{folder.name}_{unit}", []).append(path)
    return classes


def unit_split(name: str) -> str:
    """The split of a class, from a hash of its name (class-disjoint, stable across rebuilds)."""
    position = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8
    total = 0.0
    for split, share in UNIT_SPLITS:
        total += share
        if position < total:
            return split
    return UNIT_SPLITS[-1][0]


def write_units(classes: dict[str, list[Path]], out: Path, min_per_unit: int = MIN_PER_UNIT) -> dict[str, Any]:
    """The unit sprites as ``out/{train,val,test}/<class>/NNN.png`` (RGB on mid grey)."""
    kept = {name: paths for name, paths in classes.items() if len(paths) >= min_per_unit}
    counts: dict[str, dict[str, int]] = {split: {"classes": 0, "images": 0} for split, _ in UNIT_SPLITS}
    sources: dict[str, str] = {}
    skipped = 0
    for name, paths in sorted(kept.items()):
        split = unit_split(name)
        folder = out / split / name
        folder.mkdir(parents=True)
        written = 0
        for path in paths:
            rgba = decoded(path, ImageReadMode.RGB_ALPHA)
            if rgba is None:
                skipped += 1
                continue
            rgb = on_background(rgba, BACKGROUND).round().to(torch.uint8)
            write_png(rgb, str(folder / f"{written:03d}.png"))
            sources[f"{name}/{path.name}"] = sha256_of(path)
            written += 1
        counts[split]["classes"] += 1
        counts[split]["images"] += written
    return {"splits": counts, "classes": len(kept), "classes_below_minimum": len(classes) - len(kept),
            "skipped_unreadable": skipped, "sources": sources}


def stamp_files(unpacked: Path) -> list[Path]:
    stamps = sorted((unpacked / "usr" / "share" / "tuxpaint" / "stamps").rglob("*.png"))
    if not stamps:
        raise BuildError(f"{STAMPS_PACKAGE} holds no usr/share/tuxpaint/stamps/**/*.png")
    return stamps


def landscape_files(unpacked: Path) -> list[Path]:
    landscapes = sorted((unpacked / "usr" / "share" / "games" / "endless-sky" / "images" / "land").glob("*.jpg"))
    if not landscapes:
        raise BuildError(f"{LANDSCAPES_PACKAGE} holds no usr/share/games/endless-sky/images/land/*.jpg")
    return landscapes


def paste(background: torch.Tensor, stamp: torch.Tensor, centre: tuple[float, float], size: float, angle: float
          ) -> tuple[torch.Tensor, np.ndarray]:
    """Paste RGBA ``stamp`` onto RGB float ``background`` ``[3, H, W]``: its longer side ``size`` pixels, rotated by
    ``angle`` radians about its centre, placed at ``centre`` (x, y). Returns the image and the five landmarks
    ``[5, 2]`` (corners clockwise from top-left, then the centre), in pixels of the background."""
    _, height, width = background.shape
    stamp_h, stamp_w = stamp.shape[-2:]
    scale = size / max(stamp_h, stamp_w)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = np.array([[-stamp_w / 2, -stamp_h / 2], [stamp_w / 2, -stamp_h / 2], [stamp_w / 2, stamp_h / 2],
                        [-stamp_w / 2, stamp_h / 2], [0.0, 0.0]]) * scale
    landmarks = corners @ np.array([[cos, sin], [-sin, cos]]) + np.array(centre)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    dx, dy = xs - centre[0], ys - centre[1]
    u = (cos * dx + sin * dy) / scale  # stamp pixels from its centre
    v = (-sin * dx + cos * dy) / scale
    grid = torch.stack([u / (stamp_w / 2), v / (stamp_h / 2)], dim=-1)[None].float()
    sampled = torch.nn.functional.grid_sample(stamp[None].float() / 255, grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=False)[0]
    alpha = sampled[3:]
    return background * (1 - alpha) + sampled[:3] * alpha, landmarks


def write_landmarks(stamps: list[Path], landscapes: list[Path], out: Path, count: int = LANDMARK_IMAGES,
                    seed: int = 0) -> dict[str, Any]:
    """The landmark set in the CelebA layout (see the module docstring)."""
    rng = np.random.default_rng(seed)
    height, width = LANDMARK_SIZE
    folder = out / "img_align_celeba"
    folder.mkdir(parents=True)
    backgrounds = [decode_image(str(path), mode=ImageReadMode.RGB).float() / 255 for path in landscapes]
    cutouts = [decode_image(str(path), mode=ImageReadMode.RGB_ALPHA) for path in stamps]
    rows, partition = [], []
    for index in range(count):
        landscape = backgrounds[rng.integers(len(backgrounds))]
        crop_h = int(rng.uniform(0.6, 1.0) * landscape.shape[1])
        crop_w = min(landscape.shape[2], int(crop_h * width / height))
        top = int(rng.integers(0, landscape.shape[1] - crop_h + 1))
        left = int(rng.integers(0, landscape.shape[2] - crop_w + 1))
        background = torch.nn.functional.interpolate(landscape[None, :, top : top + crop_h, left : left + crop_w],
                                                     size=(height, width), mode="bilinear", antialias=True)[0]
        size = rng.uniform(0.35, 0.6) * width
        margin = size * 0.75  # the rotated stamp stays inside the image
        centre = (rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
        image, landmarks = paste(background, cutouts[rng.integers(len(cutouts))], centre, size,
                                 math.radians(rng.uniform(-30, 30)))
        name = f"{index + 1:06d}.jpg"
        write_jpeg((image.clamp(0, 1) * 255).round().to(torch.uint8), str(folder / name), quality=92)
        rows.append(f"{name} " + " ".join(f"{value:.0f}" for value in landmarks.flatten()))
        share = index / count
        partition.append(f"{name} {0 if share < LANDMARK_SPLITS[0] else 1 if share < sum(LANDMARK_SPLITS) else 2}")
    (out / "list_landmarks_align_celeba.txt").write_text(f"{count}\n{CELEBA_HEADER}\n" + "\n".join(rows) + "\n")
    (out / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return {"images": count, "stamps": len(stamps), "landscapes": len(landscapes), "size": [height, width],
            "sources": {f"{path.parent.name}/{path.name}": sha256_of(path) for path in [*stamps, *landscapes]}}


def scene_of(path: Path) -> str:
    """``canyon3.jpg`` -> ``canyon``; ``mountain12-alps.jpg`` -> ``mountain``."""
    return path.stem.split("-")[0].rstrip("0123456789").lower()


def write_scenes(landscapes: list[Path], out: Path, minimum: int = SCENE_MIN) -> dict[str, Any]:
    """The scene set in the DTD layout (see the module docstring)."""
    classes: dict[str, list[Path]] = {}
    for path in landscapes:
        if scene_of(path) not in NOT_SCENES:
            classes.setdefault(scene_of(path), []).append(path)
    kept = {name: sorted(paths) for name, paths in sorted(classes.items()) if len(paths) >= minimum}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, paths in kept.items():
        (out / "images" / name).mkdir(parents=True)
        ordered = sorted(paths, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
        quarter = max(1, len(ordered) // 4)
        for position, path in enumerate(ordered):
            relative = f"{name}/{path.name}"
            shutil.copyfile(path, out / "images" / relative)
            split = "test" if position < quarter else "val" if position < 2 * quarter else "train"
            splits[split].append(relative)
    (out / "labels").mkdir()
    for split, rows in splits.items():
        (out / "labels" / f"{split}1.txt").write_text("\n".join(sorted(rows)) + "\n")
    return {"classes": len(kept), "images": {split: len(rows) for split, rows in splits.items()},
            "left_out_classes": sorted(set(classes) - set(kept)),
            "sources": {path.name: sha256_of(path) for paths in kept.values() for path in paths}}


@dataclass(frozen=True)
class Texture:
    """One texture inside a package's ``.pk3`` archive."""

    package: str
    archive: Path
    member: str  # its path inside the archive, e.g. textures/tex_nature/grass001.jpg

    @property
    def stem(self) -> str:
        return Path(self.member).stem.lower()

    def read(self) -> bytes:
        with zipfile.ZipFile(self.archive) as archive:
            return archive.read(self.member)


def texture_files(package: str, unpacked: Path) -> list[Texture]:
    """The picture textures (``.jpg`` / ``.png`` under ``textures/``, maps left out) of every ``.pk3`` in a package."""
    archives = sorted(unpacked.rglob("*.pk3"))
    if not archives:
        raise BuildError(f"{package} holds no .pk3 archive")
    textures = []
    for archive in archives:
        with zipfile.ZipFile(archive) as opened:
            for member in opened.namelist():
                low = member.lower()
                if low.startswith("textures/") and low.endswith((".jpg", ".png")) \
                        and not TEXTURE_MAPS.search(Path(low).stem):
                    textures.append(Texture(package, archive, member))
    return textures


def material_of(stem: str) -> str | None:
    """The material a texture's file name names (see :data:`MATERIALS`), or None."""
    return next((name for name, keys in MATERIALS if any(key in stem.lower() for key in keys)), None)


def decoded_textures(textures: list[Texture]) -> tuple[list[tuple[Texture, torch.Tensor, str]], dict[str, int]]:
    """Decode each texture once (RGB uint8): exact byte copies and same-name copies (the same member path in two
    packages) kept once, images with a side under ``TEXTURE_MIN_SIDE`` or that do not decode left out (counted)."""
    seen_bytes: set[str] = set()
    seen_names: set[str] = set()
    kept, counts = [], {"duplicates": 0, "small": 0, "unreadable": 0}
    for texture in textures:
        data = texture.read()
        digest = hashlib.sha256(data).hexdigest()
        name = texture.member.lower().rsplit(".", 1)[0]
        if digest in seen_bytes or name in seen_names:
            counts["duplicates"] += 1
            continue
        seen_bytes.add(digest)
        seen_names.add(name)
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as error:
            LOG.warning("skipping %s:%s: %s", texture.package, texture.member, error)
            counts["unreadable"] += 1
            continue
        if min(image.shape[-2:]) < TEXTURE_MIN_SIDE:
            counts["small"] += 1
            continue
        kept.append((texture, image, digest))
    return kept, counts


def _hash_order(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def write_materials(textures: list[tuple[Texture, torch.Tensor, str]], out: Path, minimum: int = MATERIAL_MIN
                    ) -> dict[str, Any]:
    """The material set in the DTD layout (see the module docstring); the textures' own bytes are copied."""
    classes: dict[str, list[tuple[Texture, str]]] = {}
    for texture, _, digest in textures:
        material = material_of(texture.stem)
        if material is not None:
            classes.setdefault(material, []).append((texture, digest))
    kept = {name: members for name, members in sorted(classes.items()) if len(members) >= minimum}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    sources: dict[str, str] = {}
    for name, members in kept.items():
        (out / "images" / name).mkdir(parents=True)
        ordered = sorted(members, key=lambda m: _hash_order(f"{m[0].package}:{m[0].member}"))
        quarter = max(1, len(ordered) // 4)
        for position, (texture, digest) in enumerate(ordered):
            relative = f"{name}/{texture.package}-{Path(texture.member).stem}{Path(texture.member).suffix.lower()}"
            (out / "images" / relative).write_bytes(texture.read())
            sources[f"{texture.package}:{texture.member}"] = digest
            split = "test" if position < quarter else "val" if position < 2 * quarter else "train"
            splits[split].append(relative)
    (out / "labels").mkdir(parents=True)
    for split, rows in splits.items():
        (out / "labels" / f"{split}1.txt").write_text("\n".join(sorted(rows)) + "\n")
    return {"classes": len(kept), "images": {split: len(rows) for split, rows in splits.items()},
            "per_class": {name: len(members) for name, members in kept.items()},
            "left_out_classes": {name: len(m) for name, m in classes.items() if name not in kept}, "sources": sources}


def wallpaper_files(package: str, unpacked: Path) -> list[Path]:
    """The wallpapers of a package: for Plasma's ``wallpapers/<name>/contents/images/<W>x<H>.*`` the largest
    rendering of each, for MATE's ``backgrounds/mate/**`` every ``.jpg`` / ``.png``."""
    found: list[Path] = []
    for folder in sorted(unpacked.rglob("contents/images")):
        renderings = [p for p in folder.iterdir() if re.fullmatch(r"\d+x\d+\.(jpg|png)", p.name)]
        if renderings:
            found.append(max(renderings, key=lambda p: math.prod(int(v) for v in p.stem.split("x"))))
    for folder in sorted(unpacked.rglob("backgrounds/mate")):
        found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not found:
        raise BuildError(f"{package} holds no wallpaper (wallpapers/*/contents/images/WxH.* or backgrounds/mate/*)")
    return found


def random_crops(image: torch.Tensor, count: int, rng: np.random.Generator, scale: tuple[float, float]
                 ) -> list[torch.Tensor]:
    """``count`` square crops of uint8 ``[3, H, W]``, each of side ``scale`` x the shorter side at a random place,
    resized (antialiased) to a random side within ``POOL_SIDES``."""
    height, width = image.shape[-2:]
    crops = []
    for _ in range(count):
        side = max(8, int(rng.uniform(*scale) * min(height, width)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        size = int(rng.integers(POOL_SIDES[0], POOL_SIDES[1] + 1))
        crop = torch.nn.functional.interpolate(image[None, :, top : top + side, left : left + side].float(),
                                               size=(size, size), mode="bilinear", antialias=True)[0]
        crops.append(crop.round().clamp(0, 255).to(torch.uint8))
    return crops


def write_pool(textures: list[tuple[Texture, torch.Tensor, str]], wallpapers: list[Path], out: Path, seed: int = 0
               ) -> dict[str, Any]:
    """The unlabelled pretraining pool in the ImageNet layout (see the module docstring)."""
    rng = np.random.default_rng(seed)
    counts = {"textures": 0, "wallpapers": 0}
    sources: dict[str, str] = {}
    skipped = 0

    def write(group: str, stem: str, crops: list[torch.Tensor]) -> None:
        folder = out / "train" / group
        folder.mkdir(parents=True, exist_ok=True)
        for index, crop in enumerate(crops):
            write_jpeg(crop, str(folder / f"{stem}_{index}.jpg"), quality=90)
        counts[group] += len(crops)

    for texture, image, digest in textures:
        if material_of(texture.stem) is None:
            write("textures", f"{texture.package}-{_hash_order(texture.member)[:12]}",
                  random_crops(image, CROPS_PER_TEXTURE, rng, (0.4, 1.0)))
            sources[f"{texture.package}:{texture.member}"] = digest
    for path in wallpapers:
        image = decoded(path, ImageReadMode.RGB)
        if image is None:
            skipped += 1
            continue
        write("wallpapers", f"{path.parent.name}-{path.stem}-{_hash_order(str(path))[:8]}",
              random_crops(image, CROPS_PER_WALLPAPER, rng, (0.1, 0.5)))
        sources[str(path)] = sha256_of(path)
    total = sum(counts.values())
    if total < POOL_MINIMUM:
        raise BuildError(f"the pretraining pool holds {total} images, fewer than {POOL_MINIMUM}: a package holds fewer "
                         "textures or wallpapers than expected")
    return {"images": total, **counts, "skipped_unreadable": skipped, "sides": list(POOL_SIDES), "sources": sources}


def clipart_classes(unpacked: Path) -> dict[str, list[Path]]:
    """Class (the category folder under ``usr/share/openclipart/png``, ``/`` as ``_``) -> its drawings."""
    root = unpacked / "usr" / "share" / "openclipart" / "png"
    if not root.is_dir():
        raise BuildError(f"{CLIPART_PACKAGE} holds no usr/share/openclipart/png folder")
    classes: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.png")):
        folder = path.parent.relative_to(root)
        if folder.parts and not CLIPART_LEFT_OUT & set(folder.parts):
            classes.setdefault("_".join(folder.parts), []).append(path)
    return classes


def write_clipart(classes: dict[str, list[Path]], out: Path, minimum: int = CLIPART_MIN, maximum: int = CLIPART_MAX
                  ) -> dict[str, Any]:
    """The clip-art set in the Caltech-101 layout (see the module docstring)."""
    per_class: dict[str, int] = {}
    sources: dict[str, str] = {}
    skipped = 0
    for name, paths in sorted(classes.items()):
        if len(paths) < minimum:
            continue
        folder = out / "101_ObjectCategories" / name
        folder.mkdir(parents=True)
        written = 0
        for path in sorted(paths, key=lambda p: _hash_order(p.name)):
            if written == maximum:
                break
            rgba = decoded(path, ImageReadMode.RGB_ALPHA)
            if rgba is None:
                skipped += 1
                continue
            image = on_background(rgba, 255)
            scale = CLIPART_SIDE / max(image.shape[-2:])
            if scale < 1:
                size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
                image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
            write_jpeg(image.round().clamp(0, 255).to(torch.uint8), str(folder / f"image_{written + 1:04d}.jpg"),
                       quality=92)
            sources[f"{name}/{path.name}"] = sha256_of(path)
            written += 1
        if written < minimum:  # unreadable drawings took it under the minimum
            shutil.rmtree(folder)
            continue
        per_class[name] = written
    return {"classes": len(per_class), "images": sum(per_class.values()), "per_class": per_class,
            "skipped_unreadable": skipped, "sources": sources}


def build(out: Path) -> dict[str, Any]:
    """Fetch, unpack and convert into ``out``; returns the manifest (also written as ``manifest.json``)."""
    out = Path(out)
    debs = download_packages([FASHION_PACKAGE, UNITS_PACKAGE, STAMPS_PACKAGE, LANDSCAPES_PACKAGE, *TEXTURE_PACKAGES,
                              *WALLPAPER_PACKAGES, CLIPART_PACKAGE], out / "debs")
    unpacked = {package: unpack(deb, out / "packages" / package) for package, deb in debs.items()}
    facts = {package: package_facts(package, debs[package], unpacked[package], out / "licences") for package in debs}
    facts[FASHION_PACKAGE]["used_for"] = "fashion_cifar (many-shot classification, CIFAR-10 layout)"
    facts[UNITS_PACKAGE]["used_for"] = "units (few-shot classification, class-disjoint splits)"
    facts[STAMPS_PACKAGE]["used_for"] = "landmarks (the pasted cut-outs)"
    facts[LANDSCAPES_PACKAGE]["used_for"] = "landmarks (the backgrounds); scenes (classification)"
    for package in TEXTURE_PACKAGES:
        facts[package]["used_for"] = "materials (textures with a material keyword); pool (the others)"
    for package in WALLPAPER_PACKAGES:
        facts[package]["used_for"] = "pool (crops)"
    facts[CLIPART_PACKAGE]["used_for"] = "clipart (classification, Caltech-101 layout)"
    texture_versions = [facts[package]["version"] for package in TEXTURE_PACKAGES]
    textures: list[tuple[Texture, torch.Tensor, str]] | None = None

    def decoded() -> list[tuple[Texture, torch.Tensor, str]]:
        nonlocal textures
        if textures is None:
            textures, skipped = decoded_textures([t for package in TEXTURE_PACKAGES
                                                  for t in texture_files(package, unpacked[package])])
            LOG.info("textures: %d kept, left out: %s", len(textures), skipped)
        return textures
    sets = {
        "fashion_cifar": build_set(out / "fashion_cifar", {"version": facts[FASHION_PACKAGE]["version"], "format": 1},
                                   lambda where: write_fashion_cifar(fashion_files(unpacked[FASHION_PACKAGE]), where)),
        "units": build_set(out / "units", {"version": facts[UNITS_PACKAGE]["version"], "format": 1,
                                           "min_per_unit": MIN_PER_UNIT},
                           lambda where: write_units(unit_sprites(unpacked[UNITS_PACKAGE]), where)),
        "scenes": build_set(out / "scenes", {"version": facts[LANDSCAPES_PACKAGE]["version"], "format": 1,
                                             "minimum": SCENE_MIN},
                            lambda where: write_scenes(landscape_files(unpacked[LANDSCAPES_PACKAGE]), where)),
        "landmarks": build_set(out / "landmarks", {"versions": [facts[STAMPS_PACKAGE]["version"],
                                                                facts[LANDSCAPES_PACKAGE]["version"]],
                                                   "format": 1, "images": LANDMARK_IMAGES},
                               lambda where: write_landmarks(stamp_files(unpacked[STAMPS_PACKAGE]),
                                                             landscape_files(unpacked[LANDSCAPES_PACKAGE]), where)),
        "materials": build_set(out / "materials", {"versions": texture_versions, "format": 1, "minimum": MATERIAL_MIN,
                                                   "materials": MATERIALS},
                               lambda where: write_materials(decoded(), where)),
        "clipart": build_set(out / "clipart", {"version": facts[CLIPART_PACKAGE]["version"], "format": 1,
                                               "minimum": CLIPART_MIN, "maximum": CLIPART_MAX, "side": CLIPART_SIDE},
                             lambda where: write_clipart(clipart_classes(unpacked[CLIPART_PACKAGE]), where)),
        "pool": build_set(out / "pool", {"versions": [*texture_versions,
                                                      *(facts[p]["version"] for p in WALLPAPER_PACKAGES)],
                                         "format": 1, "sides": POOL_SIDES, "crops": [CROPS_PER_TEXTURE,
                                                                                    CROPS_PER_WALLPAPER],
                                         "materials": MATERIALS},
                          lambda where: write_pool(decoded(), [w for package in WALLPAPER_PACKAGES
                                                               for w in wallpaper_files(package, unpacked[package])],
                                                   where)),
    }
    manifest = {"packages": facts, "sets": sets}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "data" / "vision_minibench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        manifest = build(args.out)
    except BuildError as error:
        print(f"vision_minibench build: error: {error}", file=sys.stderr)
        return 2
    for name, counts in manifest["sets"].items():
        print(name, json.dumps({k: v for k, v in counts.items() if k != "sources"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
