"""The official-layout readers on tiny fixtures written in each set's layout: entries, targets, class names and splits
match what the fixture wrote; a missing or malformed file stops with an ImageDataError naming it; a CIFAR pickle that
asks for anything beyond plain data is refused without running it."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.io import decode_image, write_jpeg, write_png

from aivision.data import ImageDataError
from aivision.datasets import (
    FC100_SUPERCLASSES,
    READERS,
    image_size,
    read_300w,
    read_caltech101,
    read_celeba,
    read_cifar10,
    read_cifar100,
    read_cub200,
    read_dtd,
    read_fc100,
    read_flowers102,
    read_lsp,
    read_official,
    read_pets,
    read_plant_village,
)


def write_image(path: Path, width: int = 8, height: int = 8, seed: int = 0) -> Path:
    """A small random RGB image, PNG or JPEG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    (write_png if path.suffix == ".png" else write_jpeg)(pixels, str(path))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def raises_naming(path: Path | str, call, *args, **kwargs) -> str:
    """The call raises ImageDataError whose message names ``path`` (a Path: its name; a str: that text)."""
    with pytest.raises(ImageDataError) as caught:
        call(*args, **kwargs)
    text = path.name if isinstance(path, Path) else path
    assert text in str(caught.value), str(caught.value)
    return str(caught.value)


# ----------------------------------------------------------------------------------------------------------- CIFAR


class Python2Pickler(pickle._Pickler):
    """Writes every string as a Python 2 ``str`` (BINSTRING) and numpy's globals under numpy 1's module names: the
    way the official CIFAR python pickles were written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        opcode = pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256 else pickle.BINSTRING + struct.pack(
            "<i", len(data))
        self.write(opcode + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump(path: Path, record: dict, style: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "python3":
        with open(path, "wb") as handle:
            pickle.dump(record, handle)
        return
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(record)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def cifar_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar10(root: Path, style: str = "python2", per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    written = {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = cifar_pixels(per_batch, seed)
        labels = [(seed * per_batch + i) % 10 for i in range(per_batch)]
        dump(folder / name, {"batch_label": f"batch {seed}", "labels": labels, "data": data,
                             "filenames": [f"img_{seed}_{i}.png" for i in range(per_batch)]}, style)
        written[name] = (data, labels)
    dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "num_vis": 3072,
                                   "label_names": [f"class{i}" for i in range(10)]}, style)
    return written


@pytest.mark.parametrize("style", ["python2", "python3"])
def test_cifar10_reads_pixels_channel_major_labels_and_names(tmp_path, style) -> None:
    written = write_cifar10(tmp_path, style)
    if style == "python2":  # the fixture is what Python 2 wrote: byte strings and numpy 1's module names
        operations = {op.name: arg for op, arg, _ in pickletools.genops((tmp_path / "cifar-10-batches-py/test_batch")
                                                                        .read_bytes())}
        assert operations["GLOBAL"] and "BINUNICODE" not in operations and "SHORT_BINUNICODE" not in operations
        assert b"numpy.core.multiarray\n_reconstruct" in (tmp_path / "cifar-10-batches-py/test_batch").read_bytes()
    train = read_cifar10(tmp_path, "train")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8 and train.entries == []
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    for n in (0, 7, 14):  # pixel (c, y, x) is byte c * 1024 + y * 32 + x of its row
        for c, y, x in ((0, 0, 0), (1, 2, 5), (2, 31, 30)):
            assert train.images[n, c, y, x] == data[n, c * 1024 + y * 32 + x]
    assert train.targets.dtype == np.int64
    assert train.targets.tolist() == [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert train.class_names == [f"class{i}" for i in range(10)] and train.task == "classification"
    test = read_cifar10(tmp_path / "cifar-10-batches-py", "test")  # the unpacked folder itself works too
    assert test.split == "test" and test.targets.tolist() == written["test_batch"][1]
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(written["test_batch"][0]))


def test_cifar10_missing_and_malformed_files_name_the_file(tmp_path) -> None:
    raises_naming(tmp_path / "nowhere", read_cifar10, tmp_path / "nowhere")
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    raises_naming("'val'", read_cifar10, tmp_path, "val")
    (folder / "data_batch_3").unlink()
    raises_naming(folder / "data_batch_3", read_cifar10, tmp_path, "train")
    dump(folder / "test_batch", {"data": cifar_pixels(2, 0), "labels": [0, 10]}, "python2")
    assert "labels[1] = 10" in raises_naming(folder / "test_batch", read_cifar10, tmp_path, "test")
    dump(folder / "test_batch", {"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, "python2")
    assert "N x 3072" in raises_naming(folder / "test_batch", read_cifar10, tmp_path, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": cifar_pixels(2, 0), "labels": [0, 1]})[:-40])
    raises_naming(folder / "test_batch", read_cifar10, tmp_path, "test")
    (folder / "test_batch").write_bytes(b"not a pickle")
    raises_naming(folder / "test_batch", read_cifar10, tmp_path, "test")
    (folder / "batches.meta").unlink()
    raises_naming(folder / "batches.meta", read_cifar10, tmp_path, "test")


class Payload:
    """Unpickling this runs ``open(marker, "w")``: a file appears if the pickle is obeyed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_cifar_pickle_asking_for_code_is_refused_and_never_run(tmp_path) -> None:
    control = tmp_path / "control"
    with open(control, "wb") as handle:  # the payload does work when obeyed
        pickle.dump(Payload(tmp_path / "obeyed"), handle)
    pickle.loads(control.read_bytes()).close()
    assert (tmp_path / "obeyed").exists()
    write_cifar10(tmp_path)
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "marker"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(folder / "test_batch", "wb") as handle:
            pickle.dump({"data": cifar_pixels(1, 0), "labels": [Payload(marker)]}, handle, protocol=protocol)
        message = raises_naming(folder / "test_batch", read_cifar10, tmp_path, "test")
        assert "open" in message and "refused" in message
        assert not marker.exists()
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(Payload(marker), handle)
    raises_naming(folder / "batches.meta", read_cifar10, tmp_path, "train")
    assert not marker.exists()


def write_cifar100(root: Path, style: str = "python2") -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    """Two images of each of 100 fine classes in train, one in test; fine class f lies in superclass f // 5."""
    folder = root / "cifar-100-python"
    written = {}
    for seed, (name, repeats) in enumerate((("train", 2), ("test", 1))):
        fine = [f for f in range(100)] * repeats
        fine = fine[::-1] if name == "test" else fine
        data = cifar_pixels(len(fine), seed + 10)
        coarse = [f // 5 for f in fine]
        dump(folder / name, {"filenames": [f"{i}.png" for i in range(len(fine))], "batch_label": name,
                             "fine_labels": fine, "coarse_labels": coarse, "data": data}, style)
        written[name] = (data, fine, coarse)
    dump(folder / "meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                           "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]}, style)
    return written


def test_cifar100_fine_and_coarse_labels(tmp_path) -> None:
    written = write_cifar100(tmp_path, "python3")
    fine = read_cifar100(tmp_path, "test")
    assert fine.targets.tolist() == written["test"][1] and fine.class_names[7] == "fine07"
    assert torch.equal(fine.images.reshape(100, -1), torch.from_numpy(written["test"][0]))
    coarse = read_cifar100(tmp_path, "train", label="coarse")
    assert coarse.targets.tolist() == written["train"][2] and len(coarse.class_names) == 20
    raises_naming("'middle'", read_cifar100, tmp_path, "train", label="middle")
    (tmp_path / "cifar-100-python" / "meta").unlink()
    raises_naming(tmp_path / "cifar-100-python" / "meta", read_cifar100, tmp_path, "train")


def test_fc100_splits_cifar100_by_the_tadam_superclasses(tmp_path) -> None:
    written = write_cifar100(tmp_path)
    expected = {"train": {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19}, "val": {8, 11, 13, 16}, "test": {0, 7, 12, 14}}
    assert {k: set(v) for k, v in FC100_SUPERCLASSES.items()} == expected
    data = np.concatenate([written["train"][0], written["test"][0]])
    fine = written["train"][1] + written["test"][1]
    seen: set[str] = set()
    for split, superclasses in expected.items():
        subset = read_fc100(tmp_path, split)
        rows = [i for i, f in enumerate(fine) if f // 5 in superclasses]  # the fixture's superclass of each image
        assert len(subset.class_names) == 5 * len(superclasses) and len(subset) == 3 * len(subset.class_names)
        assert [subset.class_names[t] for t in subset.targets] == [f"fine{fine[i]:02d}" for i in rows]
        assert torch.equal(subset.images.reshape(len(rows), -1), torch.from_numpy(data[rows]))
        assert not seen & set(subset.class_names)
        seen |= set(subset.class_names)
    assert len(seen) == 100
    raises_naming("'trainval'", read_fc100, tmp_path, "trainval")
    (tmp_path / "cifar-100-python" / "test").unlink()
    raises_naming(tmp_path / "cifar-100-python" / "test", read_fc100, tmp_path, "val")


# ---------------------------------------------------------------------------------------------------- image files


def write_flowers(root: Path, labels: list[int], setid: dict[str, list[int]]) -> None:
    for image_id in range(1, len(labels) + 1):
        write_image(root / "jpg" / f"image_{image_id:05d}.jpg", seed=image_id)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})


def test_flowers102_splits_and_one_based_labels(tmp_path) -> None:
    labels = [3, 1, 102, 2, 3, 1]
    write_flowers(tmp_path, labels, {"trnid": [4, 1], "valid": [2], "tstid": [6, 3, 5]})
    for split, ids in (("train", [1, 4]), ("val", [2]), ("test", [3, 5, 6]), ("trainval", [1, 2, 4])):
        subset = read_flowers102(tmp_path, split)
        assert [e.key for e in subset.entries] == [f"jpg/image_{i:05d}.jpg" for i in ids]
        assert all(e.path == tmp_path / e.key for e in subset.entries)
        assert subset.targets.tolist() == [labels[i - 1] - 1 for i in ids]
        assert [e.labels for e in subset.entries] == [(str(labels[i - 1]),) for i in ids]
    assert len(subset.class_names) == 102 and subset.class_names[101] == "102"


def test_flowers102_bad_files_name_the_file(tmp_path) -> None:
    raises_naming(tmp_path / "missing", read_flowers102, tmp_path / "missing")
    write_flowers(tmp_path, [1, 2, 3], {"trnid": [1], "valid": [2], "tstid": [3, 4]})
    assert "image id 4" in raises_naming(tmp_path / "setid.mat", read_flowers102, tmp_path, "test")
    (tmp_path / "jpg" / "image_00002.jpg").unlink()
    raises_naming("image_00002.jpg", read_flowers102, tmp_path, "val")
    scipy.io.savemat(tmp_path / "imagelabels.mat", {"labels": np.array([[1, 0, 2]])})
    assert "labels[1] = 0" in raises_naming(tmp_path / "imagelabels.mat", read_flowers102, tmp_path, "train")
    scipy.io.savemat(tmp_path / "imagelabels.mat", {"label": np.array([[1, 1, 2]])})
    raises_naming(tmp_path / "imagelabels.mat", read_flowers102, tmp_path, "train")
    scipy.io.savemat(tmp_path / "imagelabels.mat", {"labels": np.array([[1, 1, 2]])})
    (tmp_path / "setid.mat").write_bytes(b"garbage" * 40)
    raises_naming(tmp_path / "setid.mat", read_flowers102, tmp_path, "train")
    (tmp_path / "imagelabels.mat").unlink()
    raises_naming(tmp_path / "imagelabels.mat", read_flowers102, tmp_path, "train")


def write_dtd(root: Path) -> None:
    for name in ("banded", "zigzagged"):
        for i in range(1, 4):
            write_image(root / "dtd" / "images" / name / f"{name}_{i:04d}.jpg", seed=i)
    labels = root / "dtd" / "labels"
    for fold, (train, val, test) in {1: (1, 2, 3), 2: (3, 1, 2)}.items():
        for part, i in (("train", train), ("val", val), ("test", test)):
            write_lines(labels / f"{part}{fold}.txt",
                        [f"zigzagged/zigzagged_{i:04d}.jpg", f"banded/banded_{i:04d}.jpg"])


def test_dtd_folds_and_splits(tmp_path) -> None:
    write_dtd(tmp_path)
    train = read_dtd(tmp_path, "train", fold=2)
    assert train.split == "train2" and train.class_names == ["banded", "zigzagged"]
    assert [e.key for e in train.entries] == ["images/zigzagged/zigzagged_0003.jpg", "images/banded/banded_0003.jpg"]
    assert train.targets.tolist() == [1, 0] and train.entries[0].labels == ("zigzagged",)
    assert train.entries[0].path == tmp_path / "dtd" / "images" / "zigzagged" / "zigzagged_0003.jpg"
    trainval = read_dtd(tmp_path / "dtd", "trainval", fold=1)
    assert [e.key.split("_")[-1] for e in trainval.entries] == ["0001.jpg"] * 2 + ["0002.jpg"] * 2


def test_dtd_bad_files_name_the_file(tmp_path) -> None:
    write_dtd(tmp_path)
    labels = tmp_path / "dtd" / "labels"
    raises_naming("test3.txt", read_dtd, tmp_path, "test", fold=3)
    raises_naming("11", read_dtd, tmp_path, "test", fold=11)
    write_lines(labels / "test1.txt", ["banded/banded_0003.jpg", "banded/banded_0009.jpg"])
    assert "line 2" in raises_naming(labels / "test1.txt", read_dtd, tmp_path, "test")
    write_lines(labels / "test1.txt", ["striped/striped_0001.jpg"])
    raises_naming(labels / "test1.txt", read_dtd, tmp_path, "test")
    write_lines(labels / "test1.txt", ["banded/banded_0001.jpg extra"])
    raises_naming(labels / "test1.txt", read_dtd, tmp_path, "test")


PETS = {"trainval": [("Abyssinian_1", 1, 1, 1), ("american_bulldog_10", 2, 2, 1), ("Abyssinian_2", 1, 1, 1)],
        "test": [("great_pyrenees_3", 3, 2, 2), ("american_bulldog_11", 2, 2, 1)]}


def write_pets(root: Path, annotations: dict[str, list[tuple]] = PETS) -> None:
    for part, rows in annotations.items():
        for seed, (name, *_) in enumerate(rows):
            write_image(root / "images" / f"{name}.jpg", seed=seed)
        write_lines(root / "annotations" / f"{part}.txt", [" ".join(map(str, row)) for row in rows])


def test_pets_class_ids_and_names_from_file_names(tmp_path) -> None:
    write_pets(tmp_path)
    for split, rows in PETS.items():
        subset = read_pets(tmp_path, split)
        assert subset.class_names == ["Abyssinian", "american_bulldog", "great_pyrenees"]
        assert [e.key for e in subset.entries] == [f"images/{row[0]}.jpg" for row in rows]
        assert subset.targets.tolist() == [row[1] - 1 for row in rows]
        assert [e.labels[0] for e in subset.entries] == [row[0].rsplit("_", 1)[0] for row in rows]


def test_pets_bad_files_name_the_file(tmp_path) -> None:
    annotations = tmp_path / "annotations"
    for bad, words in ((("Abyssinian_3", 38, 1, 1), "class_id 38"), (("Abyssinian_3", 2, 1, 1), "class_id 2"),
                       (("Abyssinian_3", 1, 3, 1), "species"), (("Abyssinian_3", "one", 1, 1), "class_id")):
        write_pets(tmp_path, {"trainval": PETS["trainval"] + [bad], "test": PETS["test"]})
        assert words in raises_naming(annotations / "trainval.txt", read_pets, tmp_path, "test")
    write_pets(tmp_path)
    write_lines(annotations / "test.txt", ["great_pyrenees_3 3 2"])
    raises_naming(annotations / "test.txt", read_pets, tmp_path, "trainval")
    write_pets(tmp_path)
    (tmp_path / "images" / "Abyssinian_2.jpg").unlink()
    assert "line 3" in raises_naming(annotations / "trainval.txt", read_pets, tmp_path, "trainval")
    (annotations / "test.txt").unlink()
    raises_naming(annotations / "test.txt", read_pets, tmp_path, "trainval")


def write_caltech(root: Path, sizes: dict[str, int]) -> None:
    for name, count in sizes.items():
        folder = root / "101_ObjectCategories" / name
        folder.mkdir(parents=True)
        source = write_image(folder / "image_0001.jpg")
        for i in range(2, count + 1):
            (folder / f"image_{i:04d}.jpg").write_bytes(source.read_bytes())


def test_caltech101_thirty_seeded_training_images_per_class(tmp_path) -> None:
    sizes = {"Faces": 32, "accordion": 31, "yin_yang": 35, "BACKGROUND_Google": 40}
    write_caltech(tmp_path, sizes)
    train, test = read_caltech101(tmp_path, "train"), read_caltech101(tmp_path, "test", seed=0)
    assert train.class_names == test.class_names == ["Faces", "accordion", "yin_yang"]
    for target, name in enumerate(train.class_names):
        train_keys = {e.key for e, t in zip(train.entries, train.targets) if t == target}
        test_keys = {e.key for e, t in zip(test.entries, test.targets) if t == target}
        assert len(train_keys) == 30 and not train_keys & test_keys
        assert train_keys | test_keys == {f"{name}/image_{i:04d}.jpg" for i in range(1, sizes[name] + 1)}
    assert [e.key for e in read_caltech101(tmp_path / "101_ObjectCategories", "train").entries] == \
        [e.key for e in train.entries]
    assert [e.key for e in read_caltech101(tmp_path, "train", seed=1).entries] != [e.key for e in train.entries]
    assert read_caltech101(tmp_path, "test", train_per_class=5).targets.tolist().count(2) == 30


def test_caltech101_too_small_class_names_the_folder(tmp_path) -> None:
    raises_naming(tmp_path / "nothing", read_caltech101, tmp_path / "nothing")
    write_caltech(tmp_path, {"Faces": 32, "anchor": 30})
    raises_naming(tmp_path / "101_ObjectCategories" / "anchor", read_caltech101, tmp_path, "train")


CUB_IMAGES = [("001.Black_footed_Albatross/a_1.jpg", 1, 1), ("002.Laysan_Albatross/b_1.jpg", 2, 0),
              ("001.Black_footed_Albatross/a_2.jpg", 1, 0), ("002.Laysan_Albatross/b_2.jpg", 2, 1)]


def write_cub(root: Path, images=CUB_IMAGES) -> Path:
    folder = root / "CUB_200_2011"
    for seed, (relative, _, _) in enumerate(images):
        write_image(folder / "images" / relative, seed=seed)
    write_lines(folder / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"])
    write_lines(folder / "images.txt", [f"{i} {row[0]}" for i, row in enumerate(images, 1)])
    write_lines(folder / "image_class_labels.txt", [f"{i} {row[1]}" for i, row in enumerate(images, 1)])
    write_lines(folder / "train_test_split.txt", [f"{i} {row[2]}" for i, row in enumerate(images, 1)])
    return folder


def test_cub200_train_test_from_the_metadata(tmp_path) -> None:
    folder = write_cub(tmp_path)
    for split, flag in (("train", 1), ("test", 0)):
        subset = read_cub200(tmp_path, split)
        rows = [row for row in CUB_IMAGES if row[2] == flag]
        assert subset.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
        assert [e.key for e in subset.entries] == [f"images/{row[0]}" for row in rows]
        assert [e.path for e in subset.entries] == [folder / "images" / row[0] for row in rows]
        assert subset.targets.tolist() == [row[1] - 1 for row in rows]


def test_cub200_bad_files_name_the_file(tmp_path) -> None:
    folder = write_cub(tmp_path, CUB_IMAGES[:3] + [("002.Laysan_Albatross/b_2.jpg", 3, 1)])
    assert "class_id 3" in raises_naming(folder / "image_class_labels.txt", read_cub200, tmp_path, "test")
    folder = write_cub(tmp_path)
    write_lines(folder / "train_test_split.txt", ["1 1", "2 0", "3 0"])
    assert "image id 4" in raises_naming(folder / "train_test_split.txt", read_cub200, tmp_path, "train")
    write_lines(folder / "train_test_split.txt", ["1 1", "2 0", "3 0", "4 2"])
    raises_naming(folder / "train_test_split.txt", read_cub200, tmp_path, "train")
    write_lines(folder / "train_test_split.txt", ["1 1", "2 0", "3 0", "4 1"])
    (folder / "images" / CUB_IMAGES[1][0]).unlink()
    assert "line 2" in raises_naming(folder / "images.txt", read_cub200, tmp_path, "train")
    (folder / "classes.txt").unlink()
    raises_naming(folder / "classes.txt", read_cub200, tmp_path, "train")


def test_plant_village_folders_and_a_stratified_split(tmp_path) -> None:
    for name in ("Apple___scab", "Tomato___healthy", "Corn___rust"):
        for i in range(5):
            write_image(tmp_path / name / f"{i}.JPG", seed=i)
    everything = read_plant_village(tmp_path)
    assert everything.class_names == ["Apple___scab", "Corn___rust", "Tomato___healthy"] and len(everything) == 15
    assert [everything.class_names[t] for t in everything.targets] == [e.key.split("/")[0] for e in everything.entries]
    train, test = (read_plant_village(tmp_path, split, seed=3) for split in ("train", "test"))
    assert sorted(test.targets.tolist()) == [0, 1, 2] and len(train) == 12
    assert {e.key for e in train.entries} | {e.key for e in test.entries} == {e.key for e in everything.entries}
    assert [e.key for e in read_plant_village(tmp_path, "test", seed=3).entries] == [e.key for e in test.entries]
    raises_naming(tmp_path / "absent", read_plant_village, tmp_path / "absent")


# -------------------------------------------------------------------------------------------------------- landmarks


def write_pts(path: Path, points: np.ndarray) -> Path:
    return write_lines(path, ["version: 1", f"n_points: {len(points)}", "{",
                              *(f"{x:.3f} {y:.3f}" for x, y in points), "}"])


def test_image_size_reads_png_and_jpeg_headers(tmp_path) -> None:
    for suffix in (".png", ".jpg"):
        for width, height in ((8, 8), (20, 11), (33, 70)):
            path = write_image(tmp_path / f"{width}x{height}{suffix}", width, height)
            assert image_size(path) == (width, height) == tuple(decode_image(str(path)).shape[:0:-1])


def test_300w_pts_normalised_by_image_size(tmp_path) -> None:
    rng = np.random.default_rng(0)
    points = {name: np.round(rng.uniform(0, 30, (68, 2)), 3) for name in ("lfpw/trainset/a", "helen/b")}
    write_image(tmp_path / "lfpw/trainset/a.png", 20, 10)
    write_image(tmp_path / "helen/b.jpg", 16, 24)
    write_image(tmp_path / "helen/no_points.jpg")  # no .pts: left out
    for name, p in points.items():
        write_pts(tmp_path / f"{name}.pts", p)
    faces = read_300w(tmp_path)
    assert [e.key for e in faces.entries] == ["helen/b.jpg", "lfpw/trainset/a.png"] and faces.task == "regression"
    assert faces.targets.shape == (2, 136) and faces.targets.dtype == np.float32 and faces.class_names == []
    expected = [points["helen/b"] / [16, 24], points["lfpw/trainset/a"] / [20, 10]]
    np.testing.assert_allclose(faces.targets, np.stack([e.reshape(-1) for e in expected]), rtol=1e-6)
    assert faces.targets[0, 1] == pytest.approx(points["helen/b"][0, 1] / 24, rel=1e-6)  # x1, y1, x2, ...


def test_300w_malformed_pts_names_the_file(tmp_path) -> None:
    raises_naming(tmp_path / "void", read_300w, tmp_path / "void")
    write_image(tmp_path / "a.png")
    raises_naming(str(tmp_path), read_300w, tmp_path)
    pts = tmp_path / "a.pts"
    lines = ["version: 1", "n_points: 68", "{", *["1.0 2.0"] * 68, "}"]
    for broken in (lines[:3] + lines[4:], lines[:-1], ["version: 2"] + lines[1:], [lines[0], "n_points: 5"] + lines[2:],
                   lines[:10] + ["1.0 x"] + lines[11:], lines[:10] + ["1.0"] + lines[11:]):
        write_lines(pts, broken)
        raises_naming(pts, read_300w, tmp_path)
    write_lines(pts, lines)
    assert read_300w(tmp_path).targets[0, :2].tolist() == [1 / 8, 2 / 8]


def write_lsp(root: Path, joints: np.ndarray, sizes: list[tuple[int, int]], digits: int = 4) -> None:
    for i, (width, height) in enumerate(sizes, 1):
        write_image(root / "images" / f"im{i:0{digits}d}.jpg", width, height, seed=i)
    scipy.io.savemat(root / "joints.mat", {"joints": joints})


def test_lsp_joints_normalised_and_the_official_split(tmp_path) -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 40, (5, 14, 2))  # image, joint, (x, y)
    joints = np.concatenate([xy, np.ones((5, 14, 1))], axis=2).transpose(2, 1, 0)  # 3 x 14 x N, as LSP ships
    sizes = [(10, 20), (30, 12), (8, 8), (16, 9), (9, 16)]
    write_lsp(tmp_path, joints, sizes)
    train, test = read_lsp(tmp_path, "train", train_size=3), read_lsp(tmp_path, "test", train_size=3)
    assert [e.key for e in train.entries] == ["images/im0001.jpg", "images/im0002.jpg", "images/im0003.jpg"]
    assert [e.key for e in test.entries] == ["images/im0004.jpg", "images/im0005.jpg"]
    expected = np.stack([(xy[i] / sizes[i]).reshape(-1) for i in range(5)])
    np.testing.assert_allclose(np.concatenate([train.targets, test.targets]), expected, rtol=1e-6)
    assert train.targets.shape == (3, 28)
    extended = tmp_path / "extended"  # LSP-extended: 14 x 3 x N and five-digit names
    write_lsp(extended, joints.transpose(1, 0, 2), sizes, digits=5)
    everything = read_lsp(extended, "all")
    assert everything.entries[0].key == "images/im00001.jpg"
    np.testing.assert_allclose(everything.targets, expected, rtol=1e-6)


def test_lsp_default_split_is_the_first_and_last_thousand(tmp_path) -> None:
    source = write_image(tmp_path / "images" / "im0001.jpg", 12, 6)
    for i in range(2, 2001):
        (tmp_path / "images" / f"im{i:04d}.jpg").write_bytes(source.read_bytes())
    joints = np.zeros((3, 14, 2000))
    joints[0, 0] = np.arange(2000) % 12
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    train, test = read_lsp(tmp_path, "train"), read_lsp(tmp_path, "test")
    assert len(train) == len(test) == 1000
    assert (train.entries[-1].key, test.entries[0].key) == ("images/im1000.jpg", "images/im1001.jpg")
    assert test.targets[5, 0] == pytest.approx((1005 % 12) / 12)


def test_lsp_bad_files_name_the_file(tmp_path) -> None:
    write_lsp(tmp_path, np.zeros((2, 14, 3)), [(8, 8)] * 3)
    assert "2 x 14 x 3" in raises_naming(tmp_path / "joints.mat", read_lsp, tmp_path, "all")
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": np.zeros((3, 14, 4))})
    raises_naming("im0004.jpg", read_lsp, tmp_path, "all")
    (tmp_path / "joints.mat").unlink()
    raises_naming(tmp_path / "joints.mat", read_lsp, tmp_path, "all")


CELEBA = {"000001.jpg": ([69, 109, 106, 113, 77, 142, 73, 152, 108, 154], 0),
          "000002.jpg": ([69, 110, 107, 112, 81, 135, 70, 151, 108, 153], 2),
          "000003.jpg": ([76, 112, 104, 106, 108, 128, 74, 156, 98, 158], 1),
          "000004.jpg": ([72, 113, 108, 108, 101, 138, 71, 155, 101, 151], 0)}
HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def write_celeba(root: Path, official: bool = False) -> tuple[Path, Path]:
    images = root / ("Img/img_align_celeba" if official else "img_align_celeba")
    for seed, name in enumerate(CELEBA):
        write_image(images / name, 178, 218, seed)
    rows = [f"{name} " + "  ".join(map(str, values)) for name, (values, _) in CELEBA.items()]
    landmarks = write_lines(root / ("Anno" if official else "") / "list_landmarks_align_celeba.txt",
                            [str(len(CELEBA)), HEADER, *rows])
    partition = write_lines(root / ("Eval" if official else "") / "list_eval_partition.txt",
                            [f"{n} {v[1]}" for n, v in CELEBA.items()])
    return landmarks, partition


@pytest.mark.parametrize("official", [False, True])
def test_celeba_landmarks_over_the_aligned_size_and_partitions(tmp_path, official) -> None:
    write_celeba(tmp_path, official)
    for split, parts in (("train", {0}), ("val", {1}), ("test", {2}), ("trainval", {0, 1}), ("all", {0, 1, 2})):
        subset = read_celeba(tmp_path, split)
        names = [n for n, v in CELEBA.items() if v[1] in parts]
        assert [e.path.name for e in subset.entries] == names
        expected = [np.array(CELEBA[n][0], dtype=float) / ([178, 218] * 5) for n in names]
        np.testing.assert_allclose(subset.targets, np.stack(expected), rtol=1e-6)
    assert subset.entries[0].key == ("Img/" if official else "") + "img_align_celeba/000001.jpg"


def test_celeba_bad_files_name_the_file(tmp_path) -> None:
    landmarks, partition = write_celeba(tmp_path)
    lines = landmarks.read_text().splitlines()
    write_lines(landmarks, ["5"] + lines[1:])
    assert "says 5" in raises_naming(landmarks, read_celeba, tmp_path, "train")
    write_lines(landmarks, lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:])
    assert "line 4" in raises_naming(landmarks, read_celeba, tmp_path, "train")
    write_lines(landmarks, ["3"] + lines[1:5])
    assert "000004.jpg" in raises_naming(partition, read_celeba, tmp_path, "train")
    write_lines(landmarks, lines)
    write_lines(partition, ["000001.jpg 0", "000002.jpg 3"])
    raises_naming(partition, read_celeba, tmp_path, "train")
    write_lines(partition, ["000001.jpg 0", "000005.jpg 0"])
    raises_naming(partition, read_celeba, tmp_path, "test")
    partition.unlink()
    raises_naming(partition, read_celeba, tmp_path, "train")


# ------------------------------------------------------------------------------------------------------- dispatcher


def test_read_official_dispatches_and_names_what_it_knows(tmp_path) -> None:
    write_dtd(tmp_path)
    direct = read_dtd(tmp_path, "val", fold=2)
    routed = read_official("DTD", tmp_path, "val", fold=2)
    assert routed.entries == direct.entries and routed.targets.tolist() == direct.targets.tolist()
    message = raises_naming("unknown data set 'imagenet'", read_official, "imagenet", tmp_path, "train")
    assert all(name in message for name in READERS) and len(READERS) == 12
    assert "fold" in raises_naming("dtd takes the options", read_official, "dtd", tmp_path, "val", folds=2)
