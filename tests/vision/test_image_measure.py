"""aivision measure: each probe against torchvision or a closed form, the magnitude average against separate
measurements, a flip-invariant encoder scoring 1 on hflip, and an end-to-end run on a tiny pretrained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from aiaudio.config import ConfigError, apply_overrides, load_yaml
from aiaudio.eval.measure import InvarianceTable
from aivision.measure import parse_measure_config, probe_table, run_measure
from aivision.pretraining import parse_config, run_pretrain
from aivision.probes import PROBES, ImageProbeConfig, apply_probe, probe_images, to_uint8
from aivision.synthetic import generate_shapes

REPO = Path(__file__).resolve().parents[2]
BILINEAR = InterpolationMode.BILINEAR
TINY = [
    "data.image_size=20", "input.size=16", "model.width=0.125", "model.hyper_hidden=8", "model.projector_hidden=32",
    "model.projector_dim=16", "trainer.steps=2", "trainer.batch_size=8", "trainer.warmup_steps=1",
    "trainer.log_every=1", "trainer.ckpt_every=2", "trainer.num_workers=0", "trainer.progress=false",
    "trainer.device=cpu",
]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Smooth random float images [2, 3, 16, 16] in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(2, 3, 6, 6, generator=generator), size=(16, 16), mode="bilinear")


@pytest.mark.parametrize("angle", [45.0, 90.0, -30.0, 180.0])
def test_rotation_matches_torchvision(images: torch.Tensor, angle: float):
    expected = TF.rotate(images, angle, interpolation=BILINEAR)
    torch.testing.assert_close(apply_probe(images, "rotation", angle, "zeros"), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5, 2.0])
def test_scale_matches_torchvision_affine(images: torch.Tensor, factor: float):
    expected = TF.affine(images, 0.0, [0, 0], factor, [0.0, 0.0], interpolation=BILINEAR)
    torch.testing.assert_close(apply_probe(images, "scale", factor, "zeros"), expected, atol=1e-5, rtol=0)


def test_translation_matches_torchvision_affine(images: torch.Tensor):
    expected = TF.affine(images, 0.0, [4, -2], 1.0, [0.0, 0.0], interpolation=BILINEAR)  # 0.25 and -0.125 of 16 px
    torch.testing.assert_close(apply_probe(images, "translation", (0.25, -0.125), "zeros"), expected, atol=1e-5, rtol=0)


def test_border_padding_repeats_the_edge(images: torch.Tensor):
    shifted = apply_probe(images, "translation", (0.25, 0.0), "border")
    torch.testing.assert_close(shifted[..., :4], images[..., :1].expand(-1, -1, -1, 4))
    torch.testing.assert_close(shifted[..., 4:], images[..., :12], atol=1e-5, rtol=0)
    small = apply_probe(images, "scale", 0.5, "border")
    torch.testing.assert_close(small[..., 0, 0], images[..., 0, 0], atol=1e-5, rtol=0)  # the corner is the image's


def test_resized_crop_matches_centre_crop_and_resize(images: torch.Tensor):
    """Bilinear upsampling of the crop alone clamps at the crop's edge, the probe samples the image around it: equal
    inside, close on the one-pixel rim."""
    expected = TF.resize(TF.center_crop(images, [8, 8]), [16, 16], interpolation=BILINEAR)  # area 0.25
    crop = apply_probe(images, "resized_crop", 0.25)
    torch.testing.assert_close(crop[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    assert float((crop - expected).abs().max()) < 0.1
    torch.testing.assert_close(apply_probe(images, "resized_crop", 1.0), images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,reference,magnitude", [
    ("brightness", TF.adjust_brightness, 0.25), ("brightness", TF.adjust_brightness, 5.0),
    ("contrast", TF.adjust_contrast, 0.5), ("contrast", TF.adjust_contrast, 2.0),
    ("saturation", TF.adjust_saturation, 0.25), ("saturation", TF.adjust_saturation, 5.0),
    ("hue", TF.adjust_hue, -0.4), ("hue", TF.adjust_hue, 0.5),
])
def test_colour_probes_match_torchvision(images: torch.Tensor, name: str, reference, magnitude: float):
    torch.testing.assert_close(apply_probe(images, name, magnitude), reference(images, magnitude), atol=1e-5, rtol=0)


def test_flips_and_grayscale(images: torch.Tensor):
    torch.testing.assert_close(apply_probe(images, "hflip"), TF.horizontal_flip(images))
    torch.testing.assert_close(apply_probe(images, "vflip"), TF.vertical_flip(images))
    torch.testing.assert_close(apply_probe(images, "grayscale"), TF.rgb_to_grayscale(images, 3), atol=1e-6, rtol=0)


def test_probe_images_are_stacked_magnitude_major(images: torch.Tensor):
    config = ImageProbeConfig(names=["rotation", "hflip", "hue"], rotation=[90.0, 180.0, 30.0], hue=[0.25])
    whole = to_uint8(torch.cat([images, images.flip(0)]))  # uint8 input, 4 images
    views = probe_images(whole, config)
    assert list(views) == ["rotation", "hflip", "hue"]
    assert [tuple(v.shape) for v in views.values()] == [(12, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16)]
    unit = whole.float() / 255
    for m, angle in enumerate(config.rotation):
        assert torch.equal(views["rotation"][4 * m : 4 * m + 4], to_uint8(apply_probe(unit, "rotation", angle, "border")))
    assert torch.equal(views["hflip"], whole.flip(-1))
    batched = probe_images(whole, config, batch_size=3)
    assert all(torch.equal(views[name], batched[name]) for name in views)


def test_probe_config_is_checked():
    assert list(ImageProbeConfig().magnitudes()) == list(PROBES)
    with pytest.raises(ValueError, match="distinct probes"):
        ImageProbeConfig(names=["rotation", "shear"])
    with pytest.raises(ValueError, match="hue must hold"):
        ImageProbeConfig(hue=[0.75])
    with pytest.raises(ValueError, match="no magnitudes"):
        ImageProbeConfig(rotation=[])


def _tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3), torch.nn.Flatten())


@torch.no_grad()
def test_magnitudes_are_averaged_and_a_flip_averaged_encoder_scores_one(images: torch.Tensor):
    net = _tiny_encoder()
    clean = to_uint8(torch.cat([images, images.flip(-2), images.roll(3, -1)]))  # 6 images

    def encode(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        unit = x.float() / 255
        return net(unit * (1 + i[0])) + net(unit.flip(-1) * (1 + i[0]))  # exactly hflip-invariant

    descriptors = torch.tensor([[1.0], [0.0]])
    for metric in ("cosine", "centred"):
        both = probe_images(clean, ImageProbeConfig(names=["hflip", "rotation", "hue"], rotation=[30.0, 90.0], hue=[0.2]))
        table = probe_table(encode, clean, both, descriptors, ["one", "zero"], batch_size=4, metric=metric)
        assert table.names == ("hflip", "rotation", "hue") and table.num_inputs == 6
        torch.testing.assert_close(table.values[:, 0], torch.ones(2), atol=1e-5, rtol=0)
        assert bool((table.values[:, 1] < 0.999).all())  # a rotation does change the features
        separate = [
            probe_table(encode, clean, probe_images(clean, ImageProbeConfig(names=["rotation"], rotation=[angle])),
                        descriptors, ["one", "zero"], batch_size=4, metric=metric).values[:, 0]
            for angle in (30.0, 90.0)
        ]
        torch.testing.assert_close(table.values[:, 1], (separate[0] + separate[1]) / 2, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step amortised SimCLR checkpoint on synthetic shapes, and the shapes' image folder."""
    root = tmp_path_factory.mktemp("measure")
    shapes = generate_shapes(root / "shapes", 40, size=24)
    raw = apply_overrides(load_yaml(REPO / "configs" / "vision" / "demo.yaml"),
                          [f"data.root={shapes}", f"run_dir={root / 'run'}", *TINY])
    run_pretrain(parse_config(raw))
    return root / "run", shapes / "train"


def test_measure_end_to_end(tiny_run: tuple[Path, Path], tmp_path: Path):
    run, folder = tiny_run
    linear = tmp_path / "linear_xy" / "results.json"
    linear.parent.mkdir()
    linear.write_text(json.dumps({"readouts": {"learned": {"descriptor": {"appearance": 0.9, "spatial": 0.2}}}}))
    fewshot = tmp_path / "fewshot_shapes"
    fewshot.mkdir()
    (fewshot / "results.json").write_text(json.dumps({
        "factors": ["spatial", "appearance"], "rows": [{"readout": "i = all"}, {"learned_i": [0.7, 0.4]}],
    }))
    raw = apply_overrides(load_yaml(REPO / "configs" / "vision" / "measure.yaml"), [
        f"checkpoint={run}", f"data.root={folder}", f"out_dir={tmp_path / 'out'}", "images=10",
        "device=cpu", "interpolation_steps=3", "probe.translation=[[0.0, 0.0]]",
        f"learned_results=[{linear},{fewshot}]",
    ])
    config = parse_measure_config(raw)
    result = run_measure(config)

    out = tmp_path / "out"
    expected = ["invariance.md", "invariance.csv", "invariance.json", "interpolation.png", "learned_invariance.png",
                *(f"radar_{slug}.png" for slug in ("all", "none", "spatial_1_appearance_0", "spatial_0_appearance_1"))]
    assert all((out / name).stat().st_size > 0 for name in expected)
    assert sorted(Path(p).name for p in result["files"]) == sorted(expected)
    table = InvarianceTable.read_json(out / "invariance.json")
    assert table.labels == tuple(config.descriptors) and table.names == tuple(config.probe.names)
    assert table.values.shape == (4, len(PROBES)) and table.num_inputs == 10
    assert bool(torch.isfinite(table.values).all()) and bool((table.values.abs() <= 1 + 1e-5).all())
    # the translation by (0, 0) is the identity: its copies are the clean images, whatever the descriptor
    torch.testing.assert_close(table.values[:, PROBES.index("translation")], torch.ones(4), atol=1e-5, rtol=0)
    assert [row["descriptor"] for row in result["table"]] == list(config.descriptors)
    assert (out / "invariance.csv").read_text().splitlines()[0].split(",") == ["descriptor", "i", *PROBES, "mean"]


def test_measure_config_errors(tiny_run: tuple[Path, Path], tmp_path: Path):
    run, folder = tiny_run
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        parse_measure_config({"data": {"root": str(folder)}})
    with pytest.raises(ConfigError, match="data.root"):
        parse_measure_config({"checkpoint": str(run), "data": {"root": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="metric"):
        parse_measure_config({"checkpoint": str(run), "data": {"root": str(folder)}, "metric": "euclid"})
    bad = tmp_path / "other" / "results.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"rows": [{"learned_i": [1, 0, 1]}], "factors": ["crop", "flip", "jitter"]}))
    config = parse_measure_config({"checkpoint": str(run), "data": {"root": str(folder)}, "device": "cpu",
                                   "out_dir": str(tmp_path / "out"), "learned_results": [str(bad)]})
    with pytest.raises(ConfigError, match="factors"):
        run_measure(config)
    assert not (tmp_path / "out").exists()  # stopped before any image was read or file written
