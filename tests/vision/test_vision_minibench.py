"""The real-image mini benchmark's builders, on small fixtures in the packages' own layouts (no download)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import read_image, write_png

from aivision.datasets import read_official
from aivision.fewshot import FewshotImageDataConfig, class_split
from benchmarks.vision_minibench.build import (
    as_cifar_rows,
    read_idx,
    unit_split,
    unit_sprites,
    write_fashion_cifar,
    write_units,
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())
    return path


def test_fashion_mnist_becomes_cifar10_pickles_the_official_reader_reads(tmp_path: Path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (25, 28, 28)), rng.integers(0, 256, (7, 28, 28))
    train_labels, test_labels = rng.integers(0, 10, 25), rng.integers(0, 10, 7)
    files = {
        "train_images": write_idx(tmp_path / "src" / "train-images-idx3-ubyte.gz", train),
        "train_labels": write_idx(tmp_path / "src" / "train-labels-idx1-ubyte.gz", train_labels),
        "test_images": write_idx(tmp_path / "src" / "t10k-images-idx3-ubyte.gz", test),
        "test_labels": write_idx(tmp_path / "src" / "t10k-labels-idx1-ubyte.gz", test_labels),
    }
    np.testing.assert_array_equal(read_idx(files["train_images"]), train)
    counts = write_fashion_cifar(files, tmp_path / "out")
    assert counts["train_images"] == 25 and counts["test_images"] == 7 and len(counts["sources"]) == 4
    read_train = read_official("cifar10", tmp_path / "out", "train")
    read_test = read_official("cifar10", tmp_path / "out", "test")
    assert read_train.class_names[9] == "ankle boot" and len(read_test) == 7
    np.testing.assert_array_equal(read_train.targets, train_labels)
    for channel in range(3):  # the grey image in the middle of every channel, a 2-pixel black border around it
        np.testing.assert_array_equal(read_train.images[:, channel, 2:30, 2:30].numpy(), train)
    assert int(read_train.images[:, :, :2].max()) == 0
    assert as_cifar_rows(test).shape == (7, 3072)


def sprite(path: Path, colour: int) -> None:
    """An 8 x 8 RGBA sprite (as the game's): a square of ``colour``, transparent around it."""
    from PIL import Image

    image = np.zeros((8, 8, 4), dtype=np.uint8)
    image[..., :3] = colour
    image[2:6, 2:6, 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGBA").save(path)


def test_unit_sprites_group_by_base_unit_and_split_class_disjointly(tmp_path: Path):
    units = tmp_path / "pkg" / "data" / "core" / "images" / "units"
    names = {"elves": ["archer", "archer-attack-1", "archer-bow-2", "archer-defend", "lord", "lord-die-3", "scout"],
             "orcs": ["grunt", "grunt-attack-1", "grunt-idle-2", "grunt-attack-2", "troll-whelp-n-1"]}
    for race, stems in names.items():
        for index, stem in enumerate(stems):
            sprite(units / race / f"{stem}.png", 40 + index)
    classes = unit_sprites(tmp_path / "pkg")
    assert {name: len(paths) for name, paths in classes.items()} == {
        "elves_archer": 4, "elves_lord": 2, "elves_scout": 1, "orcs_grunt": 4, "orcs_troll-whelp-n-1": 1}
    counts = write_units(classes, tmp_path / "units", min_per_unit=2)
    assert counts["classes"] == 3 and counts["classes_below_minimum"] == 2
    written = {path.parent.name: path.parent.parent.name for path in (tmp_path / "units").rglob("*.png")}
    assert written == {name: unit_split(name) for name in ("elves_archer", "elves_lord", "orcs_grunt")}
    image = read_image(str(next((tmp_path / "units").rglob("000.png"))))
    assert image.shape == (3, 8, 8) and int(image[0, 0, 0]) == 128  # transparent pixels: the grey background
    splits = [unit_split(f"class{i}") for i in range(2000)]
    shares = {name: splits.count(name) / 2000 for name in ("train", "val", "test")}
    assert abs(shares["train"] - 0.64) < 0.04 and abs(shares["val"] - 0.16) < 0.03 and abs(shares["test"] - 0.2) < 0.03


def test_the_units_layout_is_what_aivision_fewshot_reads(tmp_path: Path):
    for split, classes in (("train", ["a", "b"]), ("val", ["c", "d"]), ("test", ["e", "f", "g"])):
        for name in classes:
            for index in range(3):
                path = tmp_path / "units" / split / name / f"{index:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(torch.full((3, 8, 8), 50 + index, dtype=torch.uint8), str(path))
    entries, val, test, names = class_split(FewshotImageDataConfig(root=str(tmp_path / "units")), seed=0)
    assert [names[i] for i in val] == ["val/c", "val/d"] and [names[i] for i in test] == ["test/e", "test/f", "test/g"]
    assert len(entries) == 15  # the training classes are not read


def test_pasted_landmarks_sit_on_the_corners_of_the_pasted_stamp():
    import math

    from benchmarks.vision_minibench.build import paste

    stamp = torch.full((4, 20, 30), 255, dtype=torch.uint8)  # an opaque white 30 x 20 card
    image, landmarks = paste(torch.zeros(3, 120, 100), stamp, centre=(52.0, 61.0), size=45.0, angle=math.radians(25))
    centre = landmarks[4]
    np.testing.assert_allclose(centre, [52.0, 61.0])
    for corner in landmarks[:4]:
        inside = centre + 0.85 * (corner - centre)
        outside = centre + 1.15 * (corner - centre)
        assert image[0, int(inside[1]), int(inside[0])] > 0.9, corner  # just inside each corner: the card
        assert image[0, int(outside[1]), int(outside[0])] < 0.1, corner  # just outside: the background
    sides = np.linalg.norm(np.diff(landmarks[[0, 1, 2]], axis=0), axis=1)
    np.testing.assert_allclose(sides, [45.0, 30.0], rtol=1e-6)  # the longer side is `size`, the aspect kept


def test_the_landmark_set_is_what_the_celeba_reader_reads(tmp_path: Path):
    from PIL import Image

    from benchmarks.vision_minibench.build import write_landmarks

    stamp = tmp_path / "stamps" / "card.png"
    stamp.parent.mkdir()
    Image.fromarray(np.full((20, 30, 4), 255, dtype=np.uint8), "RGBA").save(stamp)
    land = tmp_path / "land" / "hills.jpg"
    land.parent.mkdir()
    Image.fromarray(np.zeros((360, 720, 3), dtype=np.uint8), "RGB").save(land)
    counts = write_landmarks([stamp], [land], tmp_path / "landmarks", count=20)
    assert counts["images"] == 20
    train = read_official("celeba", tmp_path / "landmarks", "train")
    test = read_official("celeba", tmp_path / "landmarks", "test")
    assert len(train) == 16 and len(test) == 2 and train.targets.shape == (16, 10)
    assert float(train.targets.min()) > 0.0 and float(train.targets.max()) < 1.0  # every landmark inside the image


def test_the_scene_set_groups_photos_by_scene_in_the_dtd_layout(tmp_path: Path):
    from PIL import Image

    from benchmarks.vision_minibench.build import scene_of, write_scenes

    names = [f"canyon{i}.jpg" for i in range(8)] + [f"city{i}-credit.jpg" for i in range(8)] + \
            [f"nasa{i}.jpg" for i in range(9)] + ["lava0.jpg", "lava1.jpg"]
    paths = []
    for name in names:
        path = tmp_path / "land" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8), "RGB").save(path)
        paths.append(path)
    assert scene_of(paths[8]) == "city" and scene_of(paths[0]) == "canyon"
    counts = write_scenes(paths, tmp_path / "scenes", minimum=7)
    assert counts["classes"] == 2 and counts["left_out_classes"] == ["lava"]  # nasa is a credit, not a scene
    train = read_official("dtd", tmp_path / "scenes", "train", fold=1)
    val = read_official("dtd", tmp_path / "scenes", "val", fold=1)
    test = read_official("dtd", tmp_path / "scenes", "test", fold=1)
    assert train.class_names == ["canyon", "city"] and (len(train), len(val), len(test)) == (8, 4, 4)
    keys = [{e.key for e in part.entries} for part in (train, val, test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def write_pk3(path: Path, members: dict[str, torch.Tensor]) -> Path:
    """A ``.pk3`` (a zip archive) holding each image as PNG bytes under its member name."""
    import io
    import zipfile

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in members.items():
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    return path


def flat(colour: tuple[int, int, int], size: int = 160) -> torch.Tensor:
    image = torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, size, size).clone()
    image[:, : size // 4] = 255 - image[:, : size // 4]  # not flat: so exact copies are the only duplicates
    return image


def test_textures_split_into_a_material_set_and_a_pool_that_shares_no_image(tmp_path: Path):
    from benchmarks.vision_minibench import build
    from benchmarks.vision_minibench.build import (
        decoded_textures,
        material_of,
        texture_files,
        wallpaper_files,
        write_materials,
        write_pool,
    )

    assert material_of("e6_wall_brick03") == "brick" and material_of("wood_plank") == "wood"
    assert material_of("pipez1a") is None
    members = {f"textures/a/brick{i}.png": flat((10 * i, 50, 60)) for i in range(6)}
    members |= {f"textures/a/metal{i}.png": flat((90, 10 * i, 60)) for i in range(6)}
    members |= {f"textures/a/pipe{i}.png": flat((90, 60, 10 * i)) for i in range(3)}
    members["textures/a/pipe0_nm.png"] = flat((1, 2, 3))  # a normal map: never a picture
    members["textures/a/tiny.png"] = flat((5, 5, 5), size=32)  # under the minimum side
    members["models/not_a_texture.png"] = flat((7, 7, 7))
    first = write_pk3(tmp_path / "pkg1" / "base" / "textures.pk3", members)
    copy = write_pk3(tmp_path / "pkg2" / "base" / "more.pk3", {"textures/b/pipe_copy.png": members["textures/a/pipe1.png"],
                                                              "textures/a/pipe2.png": flat((3, 3, 3))})
    textures = texture_files("pkg1", first.parents[1]) + texture_files("pkg2", copy.parents[1])
    assert not any("_nm" in t.member or "models/" in t.member for t in textures)
    kept, counts = decoded_textures(textures)
    assert counts == {"duplicates": 2, "small": 1, "unreadable": 0}  # the byte copy and the same-name copy
    materials = write_materials(kept, tmp_path / "materials", minimum=5)
    assert materials["classes"] == 2 and sum(materials["images"].values()) == 12
    train = read_official("dtd", tmp_path / "materials", "train")
    test = read_official("dtd", tmp_path / "materials", "test")
    assert set(train.class_names) == {"brick", "metal"} and len(test) == 2  # a quarter of each class tests

    wallpaper = tmp_path / "walls" / "usr" / "share" / "wallpapers" / "Hill" / "contents" / "images"
    wallpaper.mkdir(parents=True)
    for size in ("640x360", "1280x720"):
        write_png(flat((200, 100, 0), size=300), str(wallpaper / f"{size}.png"))
    walls = wallpaper_files("walls", tmp_path / "walls")
    assert [p.name for p in walls] == ["1280x720.png"]  # each wallpaper's largest rendering only
    build_minimum, build.POOL_MINIMUM = build.POOL_MINIMUM, 1
    try:
        pool = write_pool(kept, walls, tmp_path / "pool")
    finally:
        build.POOL_MINIMUM = build_minimum
    assert pool["textures"] == 3 * build.CROPS_PER_TEXTURE and pool["wallpapers"] == build.CROPS_PER_WALLPAPER
    assert not set(pool["sources"]) & set(materials["sources"])  # no material texture is a pool source
    crops = sorted((tmp_path / "pool" / "train").rglob("*.jpg"))
    assert len(crops) == pool["images"]
    sides = {read_image(str(path)).shape[-1] for path in crops}
    assert min(sides) >= build.POOL_SIDES[0] and max(sides) <= build.POOL_SIDES[1]
    from aivision.data import image_folder_entries

    assert {e.labels[0] for e in image_folder_entries(tmp_path / "pool" / "train")} == {"textures", "wallpapers"}


def test_clipart_becomes_the_caltech101_layout_the_official_reader_reads(tmp_path: Path):
    from PIL import Image

    from benchmarks.vision_minibench.build import clipart_classes, write_clipart

    root = tmp_path / "usr" / "share" / "openclipart" / "png"
    for folder, count in (("animals/birds", 7), ("food", 6), ("unsorted", 9), ("tools", 2)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            rgba = torch.zeros(4, 300, 200, dtype=torch.uint8)
            rgba[0, 100:200, 50:150], rgba[3, 100:200, 50:150] = 200, 255
            Image.fromarray(rgba.permute(1, 2, 0).numpy(), "RGBA").save(root / folder / f"{index}.png")
    classes = clipart_classes(tmp_path)
    assert set(classes) == {"animals_birds", "food", "tools"}  # "unsorted" names no category
    counts = write_clipart(classes, tmp_path / "out", minimum=5, maximum=6)
    assert counts["per_class"] == {"animals_birds": 6, "food": 6}
    train = read_official("caltech101", tmp_path / "out", "train", train_per_class=4)
    test = read_official("caltech101", tmp_path / "out", "test", train_per_class=4)
    assert train.class_names == ["animals_birds", "food"] and len(train) == 8 and len(test) == 4
    image = read_image(str(tmp_path / "out" / "101_ObjectCategories" / "food" / "image_0001.jpg"))
    assert max(image.shape[-2:]) == 160  # the longer side brought down to CLIPART_SIDE
    assert image[:, 5, 5].min() > 240 and image[0, 80, 53] > 150 and image[1, 80, 53] < 60  # white around red


def _linear_report(metric: str, learned: float, fixed: tuple[float, float, float], plain: float | None,
                   lowshot: dict[str, float] | None = None) -> dict:
    """A report shaped as ``aivision linear`` writes it (amortised, or plain when ``plain`` is given)."""
    if plain is not None:
        readouts = {"plain": {"test_score": plain}}
        low = {"plain": {f: {"test_score": v, "ci95": 0.01} for f, v in (lowshot or {}).items()}}
    else:
        texts = ("all", "spatial=1,appearance=0", "spatial=0,appearance=1")
        readouts = {"learned": {"test_score": learned, "descriptor": {"spatial": 0.25, "appearance": 0.75}},
                    **{f"fixed:{t}": {"test_score": v} for t, v in zip(texts, fixed)}}
        low = {name: {f: {"test_score": v - 0.01 * i, "ci95": 0.02} for f, v in (lowshot or {}).items()}
               for i, name in enumerate(["learned", *(f"fixed:{t}" for t in texts)])}
    return {"metric": metric, "readouts": readouts, "lowshot": low if lowshot else {}}


def test_the_results_table_puts_each_task_of_a_pair_in_the_paper_table_1_layout():
    from benchmarks.vision_minibench.run import results_table, table_rows

    linear = {
        "scenes": {"ai_simclr": _linear_report("accuracy", 0.61, (0.5, 0.55, 0.6), None),
                   "simclr": _linear_report("accuracy", 0, (0, 0, 0), 0.58)},
        "landmarks": {"ai_simclr": _linear_report("r2", 0.4, (0.2, 0.1, 0.45), None, {"0.05": 0.3}),
                      "simclr": _linear_report("r2", 0, (0, 0, 0), 0.35, {"0.05": 0.25})},
    }
    fewshot_rows = [{"model": "amortised", "readout": "learned i", "accuracy": 0.7, "ci95": 0.02, "learned_i": [0.1, 0.9]},
                    {"model": "amortised", "readout": "i = all", "accuracy": 0.6, "ci95": 0.02},
                    {"model": "amortised", "readout": "i = spatial", "accuracy": 0.65, "ci95": 0.02},
                    {"model": "amortised", "readout": "i = appearance", "accuracy": 0.66, "ci95": 0.02},
                    {"model": "amortised", "readout": "i = best on validation (spatial)", "accuracy": 0.67,
                     "ci95": 0.02, "chosen_i": [1.0, 0.0]},
                    {"model": "baseline", "readout": "linear", "accuracy": 0.64, "ci95": 0.03}]
    fewshot = {"ai_simclr-1shot": {"config": {"episodes": {"shots": 1}}, "rows": fewshot_rows},
               "ai_mocov2-1shot": {"config": {"episodes": {"shots": 1}}, "rows": []}}  # the other pair's: not read
    rows = table_rows("ai_simclr", "simclr", linear, fewshot)
    assert [row["set"] for row in rows] == ["scenes", "landmarks", "landmarks@0.05", "ai_simclr-1shot"]
    assert rows[0]["plain"] == 0.58 and rows[0]["learned"] == 0.61 and rows[0]["i = S"] == 0.55
    assert rows[0]["learned_i"] == [0.25, 0.75] and rows[2]["learned_i"] is None
    assert rows[2]["plain"] == 0.25 and rows[2]["learned"] == 0.3 and rows[2]["i = all"] == 0.29
    assert rows[3]["plain"] == 0.64 and rows[3]["i = A"] == 0.66 and rows[3]["learned_i"] == [0.1, 0.9]
    table = results_table("SimCLR", rows).splitlines()
    assert table[0].startswith("| task | SimCLR | AI-SimCLR, learned i | AI-SimCLR, i = all")
    assert table[2] == "| landscape scenes (DTD layout) (accuracy %) | 58.0 | 61.0 | 50.0 | 55.0 | 60.0 | – | – | 25, 75 |"
    assert table[3] == "| stamp landmarks (CelebA layout) (R²) | 0.350 | 0.400 | 0.200 | 0.100 | 0.450 | – | – | 25, 75 |"
    assert table[5].endswith("| 64.0 ± 3.0 | 70.0 ± 2.0 | 60.0 | 65.0 | 66.0 | – | 67.0 | 10, 90 |")
    assert rows[3]["chosen_i"] == {"best i on val": [1.0, 0.0]}


def test_the_run_config_refuses_unknown_sets_and_pairs_and_a_run_without_built_data(tmp_path: Path):
    import pytest

    from aiaudio.config import ConfigError, from_dict
    from benchmarks.vision_minibench.run import VisionMinibenchConfig, run

    with pytest.raises(ConfigError, match="unknown set"):
        from_dict(VisionMinibenchConfig, {"linear": {"sets": ["imagenet"]}})
    with pytest.raises(ConfigError, match="pairs"):
        from_dict(VisionMinibenchConfig, {"pairs": ["ai_byol"]})
    config = from_dict(VisionMinibenchConfig, {"data_dir": str(tmp_path / "nothing"), "out_dir": str(tmp_path / "out"),
                                               "pairs": ["ai_simclr"]})
    assert config.models() == ["ai_simclr", "simclr"]
    with pytest.raises(ConfigError, match="run benchmarks/vision_minibench/build"):
        run(config)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("budget", ["cpu", "gpu"])
def test_the_shipped_vision_budgets_parse_into_every_stage_config(budget: str, tmp_path: Path):
    """Every override in configs/vision_minibench/*.yaml names a real key of the stage config it is applied to, with
    a value that config accepts (as the run applies them)."""
    from aiaudio.config import apply_overrides, from_dict, load_yaml
    from aivision.fewshot import parse_fewshot_config
    from aivision.linear import parse_linear_config
    from aivision.measure import parse_measure_config
    from aivision.pretraining import parse_config
    from benchmarks.pipeline import repo_path
    from benchmarks.vision_minibench.run import FIXED_COLUMNS, SETS, VisionMinibenchConfig

    config = from_dict(VisionMinibenchConfig, load_yaml(repo_path(f"configs/vision_minibench/{budget}.yaml")))
    pairs = ["ai_simclr", "simclr", "ai_mocov2", "mocov2"] + (["ai_mocov3", "mocov3"] if budget == "gpu" else [])
    assert config.models() == pairs
    steps = set()
    for name in config.models():
        pretrain = parse_config(apply_overrides(load_yaml(repo_path(config.pretrain.configs[name])), [
            "data.root=/data", *config.pretrain.overrides, *config.pretrain.model_overrides.get(name, [])]))
        assert pretrain.invariance.mode == ("amortised" if name.startswith("ai_") else "fixed")
        steps.add((pretrain.trainer.steps, pretrain.trainer.batch_size, pretrain.input.size, pretrain.trainer.optimizer))
        if name.endswith("mocov3"):
            assert "vit_tiny" in pretrain.model.encoder
    assert len(steps) == 1  # the same budget for every model
    fixed = "fixed=[" + ",".join(f'"{text}"' for text, _ in FIXED_COLUMNS) + "]"
    for set_name in config.linear.sets:
        linear = parse_linear_config(apply_overrides(load_yaml(repo_path(config.linear.config)), [
            "checkpoint=/runs/x", f"data.root={tmp_path}", *SETS[set_name][1], fixed, *config.linear.overrides,
            *config.linear.set_overrides.get(set_name, [])]))
        assert linear.data.format == "official" and len(linear.fixed) == 3
    fewshot = parse_fewshot_config(apply_overrides(load_yaml(repo_path(config.fewshot.config)), [
        "checkpoint=/runs/x", f"data.root={tmp_path}", fixed, *config.fewshot.overrides]))
    assert fewshot.episodes.ways == 5 and fewshot.selected == ["learned", "binary"]
    measure = parse_measure_config(apply_overrides(load_yaml(repo_path(config.measure.config)), [
        "checkpoint=/runs/x", f"data.root={tmp_path}", *config.measure.overrides]))
    assert measure.images > 0
