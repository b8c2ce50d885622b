"""`aiaudio embed` checks the invariance before decoding anything, and follows files added to its folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from aiaudio.config import ConfigError
from aiaudio.embed import run_embed


def test_a_bad_invariance_stops_before_any_decoding(tiny_checkpoints, synthetic_root, tmp_path: Path):
    with pytest.raises(ConfigError, match="missing"):
        run_embed(str(tiny_checkpoints["amortised"]), str(synthetic_root), str(tmp_path / "f.npz"),
                  invariance="pitch_shift=0.2", device="cpu", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_a_file_added_to_the_folder_is_embedded_on_the_next_run(tiny_checkpoints, synthetic_root, tmp_path: Path):
    folder = tmp_path / "clips"
    sources = sorted(synthetic_root.rglob("*.wav"))[:3]
    folder.mkdir()
    for source in sources[:2]:
        shutil.copy(source, folder / source.name)
    common = dict(device="cpu", cache_dir=str(tmp_path / "cache"), seconds=0.5)
    first = np.load(run_embed(str(tiny_checkpoints["amortised"]), str(folder), str(tmp_path / "a.npz"), **common))
    shutil.copy(sources[2], folder / sources[2].name)
    second = np.load(run_embed(str(tiny_checkpoints["amortised"]), str(folder), str(tmp_path / "b.npz"), **common))
    assert len(first["keys"]) == 2 and len(second["keys"]) == 3
    np.testing.assert_allclose(second["features"][:2], first["features"], rtol=1e-5, atol=1e-6)
