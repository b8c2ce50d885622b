"""aivision end to end on tiny synthetic images: pretrain each method for a few steps on the CPU, then linear,
fewshot and embed on the result; the readers on fixtures in their layouts; bad input stops with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from aiaudio.config import ConfigError, apply_overrides, load_yaml
from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.pretrained import load_encoder
from aivision.data import ImageDataError, ImageSet, csv_image_entries, image_folder_entries, load_image
from aivision.synthetic import COLOURS, SHAPES, generate_shapes, read_factors

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.image_size=20", "input.size=16", "model.width=0.125", "model.hyper_hidden=8", "model.projector_hidden=32",
    "model.projector_dim=16", "model.predictor_hidden=32", "method.queue_size=64", "trainer.steps=4",
    "trainer.batch_size=8", "trainer.warmup_steps=1", "trainer.log_every=2", "trainer.ckpt_every=4",
    "trainer.num_workers=0", "trainer.progress=false", "trainer.device=cpu",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes"), 120, size=24, seed=0)


def vision_command(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aivision", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_synthetic_shapes_have_their_factors(shapes: Path):
    rows = read_factors(shapes)
    assert len(rows) == 120 and {row["shape"] for row in rows} <= set(SHAPES) and {row["colour"] for row in rows} <= set(COLOURS)
    first = rows[0]
    image = load_image(shapes / first["path"], 24).float()
    x, y = round(float(first["x"]) * 24), round(float(first["y"]) * 24)
    centre = image[:, y, x] / 255
    torch.testing.assert_close(centre, torch.tensor(COLOURS[first["colour"]]), atol=0.35, rtol=0)  # the shape's colour
    assert len(image_folder_entries(shapes / "train")) == 120
    assert generate_shapes(shapes, 120, size=24, seed=0) == shapes  # reused, not rewritten


def test_readers_name_the_bad_file(tmp_path: Path):
    with pytest.raises(ImageDataError, match="holds no images"):
        image_folder_entries(tmp_path)
    (tmp_path / "cls").mkdir()
    write_png(torch.zeros(3, 10, 12, dtype=torch.uint8), str(tmp_path / "cls" / "a.png"))
    (tmp_path / "cls" / "b.png").write_bytes(b"not a png")
    (tmp_path / "loose.png").write_bytes((tmp_path / "cls" / "a.png").read_bytes())
    with pytest.raises(ImageDataError, match="loose.png lies directly"):
        image_folder_entries(tmp_path)
    (tmp_path / "loose.png").unlink()
    entries = image_folder_entries(tmp_path)
    assert [e.key for e in entries] == ["cls/a.png", "cls/b.png"] and entries[0].labels == ("cls",)
    with pytest.raises(ImageDataError, match="b.png is not a readable image"):
        ImageSet(entries, 8).load_all()
    assert ImageSet(entries, 8)[(1, 0)].shape == (3, 8, 8)  # in training, the next readable image stands in
    (tmp_path / "labels.csv").write_text("path,y\ncls/a.png,1.5\n../outside.png,2\n")
    with pytest.raises(ImageDataError, match="outside"):
        csv_image_entries(tmp_path / "labels.csv", None, "path", ["y"])
    (tmp_path / "labels.csv").write_text("path,y\ncls/a.png,\n")
    with pytest.raises(ImageDataError, match="line 2: an empty cell"):
        csv_image_entries(tmp_path / "labels.csv", None, "path", ["y"])
    with pytest.raises(ImageDataError, match="lacks column"):
        csv_image_entries(tmp_path / "labels.csv", None, "path", ["z"])


@pytest.mark.slow
@pytest.mark.parametrize("method,encoder", [
    ("simclr", "hyper_resnet18"), ("mocov2", "hyper_resnet50"), ("mocov3", "prompt_vit_tiny_patch16_224"),
])
def test_pretrain_then_linear_fewshot_and_embed(shapes: Path, tmp_path: Path, method: str, encoder: str):
    run = tmp_path / "run"
    extra = ["model.encoder_args={img_size: 16, prompts: 4}"] if encoder.startswith("prompt") else []
    done = vision_command("pretrain", str(REPO / "configs" / "vision" / "demo.yaml"), f"data.root={shapes}",
                          f"run_dir={run}", f"method.name={method}", f"model.encoder={encoder}", *TINY, *extra)
    assert done.returncode == 0, done.stderr
    record = json.loads((latest_checkpoint(run) / "encoder.json").read_text())
    assert record["encoder"]["name"] == encoder and record["input"]["kind"] == "image"
    assert record["space"]["names"] == ["spatial", "appearance"]

    readout = [f"checkpoint={run}", f"out_dir={tmp_path / 'linear'}", "data.format=csv", f"data.csv={shapes / 'factors.csv'}",
               "data.task=regression", "data.target_columns=[x,y]", "learner.epochs=3", "sweep.lrs=[0.1]",
               "sweep.weight_decays=[0.0]", 'fixed=["all","spatial=1,appearance=0"]', "device=cpu"]
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    done = vision_command("linear", str(config), *readout)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "linear" / "results.json").read_text())
    assert set(report["readouts"]) == {"learned", "fixed:all", "fixed:spatial=1,appearance=0"} and report["metric"] == "r2"
    assert set(report["readouts"]["learned"]["descriptor"]) == {"spatial", "appearance"}

    fewshot = [f"checkpoint={run}", f"baseline={run}", f"out_dir={tmp_path / 'fewshot'}", f"data.root={shapes / 'train'}",
               "data.val_classes=0.5", "data.test_classes=0.5", "episodes.ways=2", "episodes.shots=1",
               "episodes.queries=2", "episodes.test_episodes=6", "episodes.val_episodes=4", "learner.steps=3",
               "sweep.lrs=[0.01]", "sweep.invariance_lrs=[0.1]", "device=cpu", "set_invariance.steps=3"]
    done = vision_command("fewshot", str(config), *fewshot)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "fewshot" / "results.json").read_text())["rows"]
    readouts = [row["readout"] for row in rows]
    assert readouts[:3] == ["learned i", "i = all", "i = learned jointly on validation"] and rows[0]["episodes"] == 6
    assert all(0.0 <= value <= 1.0 for value in rows[2]["chosen_i"]) and rows[2]["set_invariance"]["steps"] == 3

    done = vision_command("measure", str(REPO / "configs" / "vision" / "measure.yaml"), f"checkpoint={run}",
                          f"data.root={shapes / 'train'}", f"out_dir={tmp_path / 'measure'}", "images=8", "batch_size=8",
                          "interpolation_steps=3", f"learned_results=[{tmp_path / 'linear'}]", "device=cpu")
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "measure" / "invariance.json").read_text())
    assert (tmp_path / "measure" / "learned_invariance.png").is_file() and "hflip" in json.dumps(table)

    out = tmp_path / "features.npz"
    done = vision_command("embed", str(run), str(shapes / "train"), str(out), "--invariance", "spatial=1,appearance=0.2",
                          "--device", "cpu")
    assert done.returncode == 0, done.stderr
    saved = np.load(out)
    assert saved["features"].shape[0] == 120 and list(saved["factors"]) == ["spatial", "appearance"]
    model = load_encoder(run)
    first = load_image(shapes / "train" / saved["keys"][0], 16, 18)
    expected = model.embed(first[None], "spatial=1,appearance=0.2")
    np.testing.assert_allclose(saved["features"][0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused_before_work(shapes: Path, tmp_path: Path):
    raw = load_yaml(REPO / "configs" / "vision" / "demo.yaml")
    from aivision.pretraining import parse_config

    with pytest.raises(ConfigError, match="min_active=2 leaves 1 descriptor"):
        parse_config(apply_overrides(raw, ["invariance.min_active=2"]))
    with pytest.raises(ConfigError, match="augment.space"):
        parse_config(apply_overrides(raw, ["augment.space=colour"]))
    done = vision_command("pretrain", str(REPO / "configs" / "vision" / "demo.yaml"), f"run_dir={tmp_path / 'r'}",
                          *TINY)
    assert done.returncode == 2 and "data.root is not set" in done.stderr
    done = vision_command("pretrain", str(REPO / "configs" / "vision" / "demo.yaml"), f"data.root={shapes}",
                          f"run_dir={tmp_path / 'r'}", "init=/nonexistent/moco.pth", *TINY)
    assert done.returncode == 2 and "init=/nonexistent/moco.pth" in done.stderr
    done = vision_command("embed", str(tmp_path / "nothing"), str(shapes), str(tmp_path / "f.npz"))
    assert done.returncode == 2 and "nothing" in done.stderr


@pytest.fixture(scope="module")
def tiny_run(shapes: Path, tmp_path_factory) -> Path:
    """A two-step amortised SimCLR run on the shapes (in process)."""
    from aivision.pretraining import parse_config, run_pretrain

    run = tmp_path_factory.mktemp("vision-run") / "run"
    raw = load_yaml(REPO / "configs" / "vision" / "demo.yaml")
    run_pretrain(parse_config(apply_overrides(raw, [f"data.root={shapes}", f"run_dir={run}", *TINY, "trainer.steps=2",
                                                    "trainer.ckpt_every=2"])))
    return run


def test_linear_reads_an_official_layout_with_its_splits(tiny_run: Path, tmp_path: Path):
    """CIFAR-10 in its official python-pickle layout: the official train and test batches are the splits."""
    from test_official_readers import write_cifar10

    from aivision.linear import parse_linear_config, run_linear

    written = write_cifar10(tmp_path / "cifar", per_batch=6)
    config = parse_linear_config(apply_overrides({}, [
        f"checkpoint={tiny_run}", f"out_dir={tmp_path / 'out'}", "data.format=official", "data.official=cifar10",
        f"data.root={tmp_path / 'cifar'}", "learner.epochs=2", "sweep.lrs=[0.1]", "sweep.weight_decays=[0.0]",
        "device=cpu", "learn_invariance=false",
    ]))
    report = run_linear(config)
    train_count = sum(len(labels) for name, (_, labels) in written.items() if name != "test_batch")
    assert report["data"]["train_images"] == train_count and report["data"]["test_images"] == len(written["test_batch"][1])
    assert report["data"]["source"] == "cifar10" and set(report["readouts"]) == {"fixed:all"}
    with pytest.raises(ConfigError, match="data.task=classification"):
        bad = parse_linear_config(apply_overrides({}, [
            f"checkpoint={tiny_run}", "data.format=official", "data.official=cifar10", f"data.root={tmp_path / 'cifar'}",
            "data.task=regression", "data.target_columns=[x]"]))
        run_linear(bad)
    with pytest.raises(ConfigError, match="data.official"):
        parse_linear_config(apply_overrides({}, [f"checkpoint={tiny_run}", "data.format=official", f"data.root={tmp_path}"]))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "vision").glob("*.yaml")
                                        if p.name not in ("measure.yaml", "linear_example.yaml", "fewshot_example.yaml")))
def test_every_shipped_pretraining_config_parses_and_builds_its_space(name: str):
    from aivision.pretraining import parse_config

    config = parse_config(load_yaml(REPO / "configs" / "vision" / name))
    assert len(config.space()) == (26 if config.augment.space == "individual" else 3)
    assert config.method.name in ("simclr", "mocov2", "mocov3")


def test_the_shipped_readout_fewshot_and_measure_configs_parse(tmp_path: Path):
    from aivision.fewshot import parse_fewshot_config
    from aivision.linear import parse_linear_config
    from aivision.measure import parse_measure_config

    linear = parse_linear_config(apply_overrides(load_yaml(REPO / "configs" / "vision" / "linear_example.yaml"),
                                                 ["checkpoint=run", f"data.root={tmp_path}"]))
    assert linear.fixed == ["all", "spatial=1,appearance=0", "spatial=0,appearance=1"]
    assert parse_measure_config(apply_overrides(load_yaml(REPO / "configs" / "vision" / "measure.yaml"),
                                                ["checkpoint=run", f"data.root={tmp_path}"]))
    fewshot = parse_fewshot_config(apply_overrides(load_yaml(REPO / "configs" / "vision" / "fewshot_example.yaml"),
                                                   ["checkpoint=run", f"data.root={tmp_path}"]))
    assert fewshot.episodes.queries == 16 and fewshot.selected == ["jointly"]


def test_lowshot_readouts_average_over_seeded_training_subsets(tiny_run: Path, shapes: Path, tmp_path: Path):
    from aivision.linear import parse_linear_config, run_linear

    config = parse_linear_config(apply_overrides({}, [
        f"checkpoint={tiny_run}", f"out_dir={tmp_path / 'out'}", "data.format=csv", f"data.csv={shapes / 'factors.csv'}",
        "data.task=regression", "data.target_columns=[x,y]", "learner.epochs=2", "sweep.lrs=[0.1]",
        "sweep.weight_decays=[0.0]", "device=cpu", "learn_invariance=false", "lowshot_fractions=[0.25,0.5]",
        "lowshot_splits=3",
    ]))
    report = run_linear(config)
    lowshot = report["lowshot"]["fixed:all"]
    assert set(lowshot) == {"0.25", "0.5"} and all(entry["splits"] == 3 for entry in lowshot.values())
    assert lowshot["0.25"]["train_items"] < lowshot["0.5"]["train_items"] < report["data"]["train_images"]
    assert "Low-shot" in (tmp_path / "out" / "results.md").read_text()
    again = run_linear(config)["lowshot"]["fixed:all"]
    assert again == lowshot  # the subsets are seeded


def test_finetuning_baselines_train_a_copy_of_the_last_blocks_or_all(tiny_run: Path, shapes: Path, tmp_path: Path):
    from aiaudio.eval.finetune import trailing_blocks
    from aivision.linear import parse_linear_config, run_linear

    before = {k: v.clone() for k, v in load_encoder(tiny_run).encoder.state_dict().items()}
    config = parse_linear_config(apply_overrides({}, [
        f"checkpoint={tiny_run}", f"out_dir={tmp_path / 'out'}", "data.format=csv", f"data.csv={shapes / 'factors.csv'}",
        "data.task=classification", "data.label_column=colour", "learner.epochs=2", "sweep.lrs=[0.1]",
        "sweep.weight_decays=[0.0]", "device=cpu", "fixed=[]", "finetune=[0,1]", "finetune_learner.epochs=2",
        "finetune_time_matched=true",
    ]))
    readouts = run_linear(config)["readouts"]
    whole, last = readouts["finetune:all"], readouts["finetune:last1"]
    assert whole["trained_parameters"] > last["trained_parameters"] > 0
    assert whole["seconds"] <= readouts["learned"]["seconds"] + 30  # a budget, checked between batches
    assert set(whole["descriptor"]) == {"spatial", "appearance"} and 0.0 <= whole["test_score"] <= 1.0
    after = load_encoder(tiny_run).encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the checkpoint is untouched
    assert "| finetune:last1 |" in (tmp_path / "out" / "results.md").read_text()
    encoder = load_encoder(tiny_run).encoder
    assert trailing_blocks(encoder, 2) == [encoder.layer4[0], encoder.layer4[1]] and trailing_blocks(encoder, 0) == [encoder]
    with pytest.raises(ValueError, match="cannot fine-tune the last 99"):
        trailing_blocks(encoder, 99)


def test_a_run_with_per_descriptor_statistics_keeps_them_in_its_checkpoint(shapes: Path, tmp_path: Path):
    """model.encoder_args.descriptor_statistics: pretraining fills one row per descriptor drawn, the encoder record
    keeps the option, and the loaded encoder normalises a binary descriptor with that descriptor's own statistics."""
    from aiaudio.engine.pretrained import load_encoder
    from aivision.pretraining import parse_config, run_pretrain

    raw = load_yaml(REPO / "configs" / "vision" / "demo.yaml")
    run_pretrain(parse_config(apply_overrides(raw, [f"data.root={shapes}", f"run_dir={tmp_path / 'run'}", *TINY,
                                                    "trainer.steps=4", "trainer.ckpt_every=4",
                                                    "model.encoder_args.descriptor_statistics=true"])))
    encoder = load_encoder(tmp_path / "run", torch.device("cpu"))
    norm = encoder.encoder.layer1[0].bn1
    assert encoder.encoder.descriptor_statistics and norm.descriptor_seen.sum() == 4  # one update per step
    drawn = int(norm.descriptor_seen.nonzero()[0])
    corner = norm.descriptor_corners[drawn]
    mean, _ = norm._descriptor_statistics(corner[None])
    torch.testing.assert_close(mean[0], norm.descriptor_mean[drawn])
