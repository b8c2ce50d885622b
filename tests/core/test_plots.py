"""Figures of aiaudio.eval.plots: valid, non-trivial PNG files, written atomically; bad input is refused."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from aiaudio.eval.plots import interpolation_plot, learned_invariance_bars, radar_chart

#: Seven factor names (the audio ones; plots take any).
CLAR_NAMES = ("pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift", "time_stretch")


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    return image


def colourful_fraction(image: np.ndarray) -> float:
    """Fraction of pixels that are clearly coloured (not white, grey or black)."""
    rgb = image[..., :3]
    return float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2))


def only_png_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_radar_chart_one_and_several_descriptors(tmp_path: Path) -> None:
    single = radar_chart(torch.linspace(0.2, 0.9, 7), CLAR_NAMES, tmp_path / "one.png", title="all on")
    several = radar_chart(
        np.array([[0.9] * 7, [0.1, 0.5, 0.3, -0.2, 0.8, 0.4, 0.6]]),
        CLAR_NAMES,
        tmp_path / "two.png",
        title="two descriptors",
        labels=["all", "pitch only"],
    )
    assert single == tmp_path / "one.png" and several == tmp_path / "two.png"
    one, two = read_png(single), read_png(several)
    assert one[..., :3].std() > 0.05 and colourful_fraction(one) > 0.005
    assert colourful_fraction(two) > colourful_fraction(one)  # a second filled polygon and a legend
    assert only_png_files(tmp_path) == ["one.png", "two.png"]


def test_interpolation_plot(tmp_path: Path) -> None:
    curve = torch.stack([torch.linspace(0.3, 0.9, 6) + 0.05 * a for a in range(7)], dim=1)
    path = interpolation_plot(curve, CLAR_NAMES, tmp_path / "curve.png", "none", "all", title="none -> all")
    image = read_png(path)
    assert colourful_fraction(image) > 0.002
    assert only_png_files(tmp_path) == ["curve.png"]


def test_learned_invariance_bars_and_overwrite(tmp_path: Path) -> None:
    per_task = {"ESC-50": [0.9, 0.1, 0.2, 0.7, 0.5, 0.3, 0.4], "NSynth": np.linspace(0.0, 1.0, 7)}
    path = learned_invariance_bars(per_task, CLAR_NAMES, tmp_path / "bars.png")
    first = read_png(path)
    assert colourful_fraction(first) > 0.01
    learned_invariance_bars({"only": [0.5] * 7}, CLAR_NAMES, path, title="overwritten")
    second = read_png(path)
    assert second.shape != first.shape or not np.array_equal(second, first)
    assert only_png_files(tmp_path) == ["bars.png"]


def test_bad_input_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names"):
        radar_chart([0.5] * 6, CLAR_NAMES, tmp_path / "r.png")
    with pytest.raises(ValueError, match="labels"):
        radar_chart(np.ones((2, 7)), CLAR_NAMES, tmp_path / "r.png", labels=["one"])
    with pytest.raises(ValueError, match="non-finite"):
        radar_chart([0.5] * 6 + [float("nan")], CLAR_NAMES, tmp_path / "r.png")
    with pytest.raises(ValueError, match="names"):
        interpolation_plot(np.ones((5, 6)), CLAR_NAMES, tmp_path / "c.png", "a", "b")
    with pytest.raises(ValueError, match="steps"):
        interpolation_plot(np.ones((1, 7)), CLAR_NAMES, tmp_path / "c.png", "a", "b")
    with pytest.raises(ValueError, match="ESC-50"):
        learned_invariance_bars({"ESC-50": [0.5] * 8}, CLAR_NAMES, tmp_path / "b.png")
    with pytest.raises(ValueError, match="at least one task"):
        learned_invariance_bars({}, CLAR_NAMES, tmp_path / "b.png")
    with pytest.raises(ValueError, match=".png"):
        radar_chart([0.5] * 7, CLAR_NAMES, tmp_path / "r.pdf")
    assert list(tmp_path.iterdir()) == []
