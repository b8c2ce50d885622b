"""Image augmentations on the device against torchvision: each op's output, and the parameter distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from aivision import augment_native
from aivision.augment import (
    ImageAugment,
    ImageAugmentConfig,
    ImageInput,
    colour_jitter,
    crop_boxes,
    gaussian_blur,
    group_space,
    hsv_to_rgb,
    individual_space,
    rgb_to_hsv,
    sample_boxes,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def colourful(batch: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=generator(seed))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def test_spaces_have_the_papers_descriptor_counts():
    assert len(group_space()) == 3 and len(individual_space()) == 26


@pytest.mark.parametrize("op,reference", [
    (0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation), (3, TF.adjust_hue),
])
def test_each_jitter_adjustment_matches_torchvision_per_example(op, reference):
    x = colourful()
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05], [0.6, 1.4, 0.8, -0.1], [1.0, 1.0, 1.0, 0.0], [1.1, 0.9, 0.5, 0.08]])
    order = torch.tensor([[op, *[o for o in range(4) if o != op]]] * 4)
    only_this = factors.clone()
    for other in range(4):
        if other != op:
            only_this[:, other] = 0.0 if other == 3 else 1.0
    got = colour_jitter(x, only_this, order, torch.ones(4, dtype=torch.bool))
    for b in range(4):
        torch.testing.assert_close(got[b], reference(x[b], float(factors[b, op])), atol=2e-5, rtol=1e-4)


def test_hsv_round_trip_and_torchvision_agreement():
    x = colourful(2, 16, seed=1)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rgb_to_hsv(x), TF._color._rgb_to_hsv(x), atol=1e-5, rtol=1e-5)


def test_jitter_applies_the_four_adjustments_in_each_examples_own_order():
    x = colourful(2, 8, seed=2)
    factors = torch.tensor([[1.3, 0.6, 1.5, 0.1]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    got = colour_jitter(x, factors, order, torch.tensor([True, True]))
    steps = [lambda im: TF.adjust_brightness(im, 1.3), lambda im: TF.adjust_contrast(im, 0.6),
             lambda im: TF.adjust_saturation(im, 1.5), lambda im: TF.adjust_hue(im, 0.1)]
    for b, sequence in enumerate(order.tolist()):
        expected = x[b]
        for op in sequence:
            expected = steps[op](expected)
        torch.testing.assert_close(got[b], expected, atol=3e-5, rtol=1e-4)
    inactive = colour_jitter(x, factors, order, torch.tensor([False, True]))
    torch.testing.assert_close(inactive[0], x[0], rtol=0, atol=0)


def test_blur_matches_torchvision_for_each_examples_sigma():
    x = colourful(3, 32, seed=3)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    got = gaussian_blur(x, sigma, torch.tensor([True, True, False]))
    for b in range(2):
        radius = math.ceil(3 * float(sigma[b]))  # each image's own 3 sigma (the third image is not blurred)
        expected = TF.gaussian_blur(x[b], [2 * radius + 1] * 2, [float(sigma[b])] * 2)
        torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], x[2], rtol=0, atol=0)


def test_crop_box_distribution_matches_torchvision():
    height, width, count = 48, 64, 20000
    ours = crop_boxes(height, width, count, (0.08, 1.0), (3 / 4, 4 / 3), generator(4), torch.device("cpu"))
    torch.manual_seed(4)
    reference = v2.RandomResizedCrop(32)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in
                           (reference.make_params([image]) for _ in range(count))], dtype=torch.float32)
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert bool(((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width)).all())
    area = lambda b: (b[:, 2] * b[:, 3] / (height * width)).numpy()  # noqa: E731
    log_ratio = lambda b: torch.log(b[:, 3] / b[:, 2]).numpy()  # noqa: E731
    centre = lambda b: ((b[:, 1] + b[:, 3] / 2) / width).numpy()  # noqa: E731
    # Two samples of 20,000 from one distribution: the 99.9 % KS critical value is about 0.019.
    for statistic in (area, log_ratio, centre):
        assert ks_statistic(statistic(ours), statistic(theirs)) < 0.02
    # A strip no crop of ratio 3/4-4/3 fits often: both fall back to the same centre crop equally often.
    strip = crop_boxes(8, 200, 4000, (0.5, 1.0), (3 / 4, 4 / 3), generator(5), torch.device("cpu"))
    strip_reference = v2.RandomResizedCrop(8, scale=(0.5, 1.0))
    fallback = [strip_reference.make_params([torch.zeros(3, 8, 200)])["width"] == 11 for _ in range(4000)]
    assert abs(float((strip[:, 3] == 11).float().mean()) - np.mean(fallback)) < 0.03


def test_sample_boxes_crops_resizes_and_flips_like_torchvision():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    boxes = torch.tensor([[2.0, 4.0, 8.0, 8.0], [0.0, 0.0, 16.0, 16.0]])
    got = sample_boxes(x, boxes, torch.tensor([False, True]), 8)
    torch.testing.assert_close(got[0], x[0, :, 2:10, 4:12], atol=1e-4, rtol=0)  # same size: an exact crop
    halved = TF.resize(x[1], [8, 8], antialias=False)
    torch.testing.assert_close(got[1], TF.horizontal_flip(halved), atol=1e-3, rtol=0)


def _augment(space: str = "groups", size: int = 16, **changes) -> ImageAugment:
    config = ImageAugmentConfig(space=space, **changes)
    return ImageAugment(config, config.build_space(), ImageInput(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))


def test_flip_grayscale_and_jitter_rates_and_ranges():
    count = 4000
    gradient = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(count, 3, 16, 16)
    flipped = _augment()(gradient, torch.tensor([1.0, 0.0]), generator(6))  # spatial only, crop and flip
    assert abs(float((flipped[:, 0, 8, -1] < flipped[:, 0, 8, 0]).float().mean()) - 0.5) < 0.03
    colours = colourful(count, 4, seed=7)
    gray = _augment(jitter_p=0.0, blur_p=[0.0, 0.0])(colours, torch.tensor([0.0, 1.0]), generator(8))
    is_gray = (gray.amax(1) - gray.amin(1)).amax(dim=(1, 2)) < 1e-6
    assert abs(float(is_gray.float().mean()) - 0.2) < 0.025
    mid = torch.full((count, 3, 4, 4), 0.5)
    bright = _augment(contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=[0.0, 0.0])
    factors = bright(mid, torch.tensor([0.0, 1.0]), generator(9))[:, 0, 0, 0] / 0.5
    changed = (factors - 1).abs() > 1e-6
    assert abs(float(changed.float().mean()) - 0.8) < 0.03  # jitter p = 0.8
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
    assert ks_statistic(factors[changed].numpy(), np.random.default_rng(0).uniform(0.6, 1.4, 20000)) < 0.05


def test_only_the_switched_on_ops_act():
    images = (colourful(6, 16, seed=10) * 255).to(torch.uint8)
    augment = _augment("individual")
    plain = ImageInput(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(images)
    none = augment(images, torch.zeros(5), generator(11))
    torch.testing.assert_close(none, plain, atol=1e-5, rtol=0)  # nothing on: just the resize and normalisation
    assert augment.active_ops(torch.tensor([1.0, 0, 1.0, 0, 0])) == {"crop", "jitter", "solarize"}
    one = augment(images, torch.tensor([0.0, 0, 0, 1.0, 1.0]), generator(12))
    again = augment(images, torch.tensor([0.0, 0, 0, 1.0, 1.0]), generator(12))
    torch.testing.assert_close(one, again, rtol=0, atol=0)  # a pure function of the generator
    assert not torch.equal(one, plain)
    with pytest.raises(ValueError, match="gates"):
        ImageAugmentConfig(gates={"crop": "spatial"})
    with pytest.raises(ValueError, match="lacks"):
        ImageAugment(ImageAugmentConfig(), individual_space(), ImageInput(16))


def _native_or_skip():
    kernel = augment_native.native_kernel()
    if kernel is None:
        reason = augment_native.native_unavailable_reason()
        pytest.skip(f"the native augmentation kernel cannot be built here: {reason}")
    return kernel


@pytest.mark.parametrize("space,descriptor,view,size,changes", [
    ("groups", (1.0, 1.0), 0, 21, {}),
    ("groups", (1.0, 0.0), 1, 21, {}),
    ("groups", (0.0, 1.0), 0, 21, {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}),
    ("groups", (1.0, 1.0), 1, 21, {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.6], "jitter_p": 1.0}),
    ("groups", (1.0, 1.0), 0, 150, {"blur_p": [1.0, 1.0]}),  # the blur's blocks of 64, whole and cut
    ("individual", (1.0, 0.0, 1.0, 0.0, 1.0), 0, 21, {"blur_sigma": (2.0, 6.0)}),
    ("individual", (0.0, 1.0, 0.0, 1.0, 0.0), 1, 21, {}),
])
def test_native_kernel_makes_the_torch_paths_views(space, descriptor, view, size, changes):
    _native_or_skip()
    blocks = torch.rand(7, 3, 9, 13, generator=generator(13))  # patches of flat colour and sharp edges, not square
    images = (blocks.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3) * 255).to(torch.uint8)
    output = ImageInput(size)  # odd, and cut from a non-square image
    config = ImageAugmentConfig(space=space, **changes)
    native = ImageAugment(config, config.build_space(), output)
    reference = ImageAugment(ImageAugmentConfig(space=space, backend="torch", **changes), config.build_space(), output)
    assert native.native is not None and reference.native is None
    d = torch.tensor(descriptor)
    got, expected = native(images, d, generator(15), view), reference(images, d, generator(15), view)
    assert got.shape == expected.shape == (7, 3, size, size)
    off = (got - expected).abs() > 1e-4
    # Solarisation is a threshold: a pixel within rounding of 0.5 may fall either side; nothing else may differ.
    assert float(off.float().mean()) <= (1e-3 if config.solarize_p[view] > 0 else 0.0)
    torch.testing.assert_close(got[~off], expected[~off], atol=1e-4, rtol=0)


def test_native_kernel_splits_the_batch_over_threads_without_changing_it():
    kernel = _native_or_skip()
    images = (colourful(5, 24, seed=16) * 255).to(torch.uint8)
    augment = ImageAugment(ImageAugmentConfig(), group_space(), ImageInput(16))
    params = augment.draw(5, 24, 24, torch.ones(2), generator(17), 0, torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.views(images, params, 16, augment.output.mean, augment.output.std)
        torch.set_num_threads(3)
        three = kernel.views(images, params, 16, augment.output.mean, augment.output.std)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, three, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        kernel.views(images.float(), params, 16, augment.output.mean, augment.output.std)


def test_backend_choice_and_a_missing_compiler(monkeypatch, tmp_path, caplog):
    with pytest.raises(ValueError, match="augment.backend"):
        ImageAugmentConfig(backend="fast")
    if augment_native.native_kernel() is not None:
        native = _augment(backend="native")
        with pytest.raises(ValueError, match="uint8"):
            native(colourful(2, 16), torch.ones(2), generator(18))
    monkeypatch.setattr(augment_native, "_loaded", False)
    monkeypatch.setattr(augment_native, "_kernel", None)
    monkeypatch.setattr(augment_native, "_reason", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no C compiler .*augment.backend=torch"):
        _augment(backend="native")
    with caplog.at_level("WARNING"):
        fallback = _augment()
    assert fallback.native is None and "no C compiler" in caplog.text
    images = (colourful(2, 16, seed=19) * 255).to(torch.uint8)
    assert fallback(images, torch.ones(2), generator(20)).shape == (2, 3, 16, 16)


def test_a_kernel_that_does_not_compile_is_named(monkeypatch, tmp_path):
    if augment_native.native_kernel() is None:
        pytest.skip(f"no compiler here: {augment_native.native_unavailable_reason()}")
    broken = tmp_path / "augment_native.c"
    broken.write_text("int augment_views( {\n")
    monkeypatch.setattr(augment_native, "SOURCE", broken)
    monkeypatch.setenv("AIVISION_NATIVE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="augment_native.c"):
        augment_native._load()


def test_an_unwritable_kernel_cache_is_named_with_the_fix(monkeypatch, tmp_path):
    if augment_native.native_kernel() is None:
        pytest.skip(f"no compiler here: {augment_native.native_unavailable_reason()}")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AIVISION_NATIVE_CACHE", str(blocker / "cache"))  # a folder below a file cannot be made
    with pytest.raises(RuntimeError, match="AIVISION_NATIVE_CACHE"):
        augment_native._load()
