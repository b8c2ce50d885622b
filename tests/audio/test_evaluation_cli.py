"""End to end: `aiaudio fewshot`, `aiaudio measure` and `aiaudio embed` on tiny checkpoints trained by the tests."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess

import numpy as np
import pytest

from conftest import aiaudio_command, REPO

FEWSHOT_ARGS = [
    "data.name=synthetic", "data.label=family", "data.segment_seconds=1.0", "data.workers=0", "data.stats_clips=16",
    "episodes.ways=3", "episodes.shots=2", "episodes.queries=1", "episodes.test_episodes=12", "episodes.val_episodes=6",
    "learner.steps=5", "learner.episodes_per_batch=6", "sweep.lrs=[0.01]", "sweep.invariance_lrs=[0.03,0.1]",
    "sklearn=true", "device=cpu", "progress=false", "set_invariance.steps=5",
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(aiaudio_command(*args), capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_fewshot_end_to_end_on_synthetic_data(tiny_checkpoints, synthetic_root, tmp_path):
    out = tmp_path / "fewshot"
    result = _run(
        "fewshot", str(REPO / "configs" / "audio" / "demo_fewshot.yaml"), *FEWSHOT_ARGS,
        f"checkpoint={tiny_checkpoints['amortised']}", f"baseline={tiny_checkpoints['baseline']}",
        f"data.root={synthetic_root}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    readouts = [(row["model"], row["readout"]) for row in report["rows"]]
    assert ("amortised", "learned i") in readouts and ("baseline", "linear") in readouts
    assert ("amortised", "logistic, i = all") in readouts and ("amortised", "i = all") in readouts
    assert ("floor", "MFCC statistics, nearest centroid") in readouts
    for row in report["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["episodes"] == 12 and row["ci95"] >= 0
    learned = next(row for row in report["rows"] if row["readout"] == "learned i")
    assert len(learned["learned_i"]) == 7 and all(0.0 <= v <= 1.0 for v in learned["learned_i"])
    assert learned["invariance_lr"] in (0.03, 0.1)
    assert (out / "results.md").read_text().count("\n") >= 2 + len(report["rows"])
    assert (out / "learned_invariance.png").stat().st_size > 1000
    assert "learned i" in result.stdout

    # a second run reuses the cached log-mels and features and gives the same numbers
    again = _run(
        "fewshot", str(REPO / "configs" / "audio" / "demo_fewshot.yaml"), *FEWSHOT_ARGS,
        f"checkpoint={tiny_checkpoints['amortised']}", f"baseline={tiny_checkpoints['baseline']}",
        f"data.root={synthetic_root}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'again'}",
    )
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [row["accuracy"] for row in rerun["rows"]] == [row["accuracy"] for row in report["rows"]]


def test_fewshot_errors_are_clear(tiny_checkpoints, tmp_path):
    result = _run("fewshot", str(REPO / "configs" / "audio" / "demo_fewshot.yaml"), f"checkpoint={tiny_checkpoints['amortised']}",
                  f"data.root={tmp_path / 'missing'}")
    assert result.returncode == 2 and "is not a directory" in result.stderr
    result = _run("fewshot", str(REPO / "configs" / "audio" / "demo_fewshot.yaml"), "data.name=imagenet")
    assert result.returncode == 2 and "data.name" in result.stderr


@pytest.mark.slow
def test_measure_and_embed_end_to_end(tiny_checkpoints, synthetic_root, tmp_path):
    out = tmp_path / "measure"
    result = _run(
        "measure", str(REPO / "configs" / "audio" / "measure.yaml"), f"checkpoint={tiny_checkpoints['amortised']}",
        f"data.root={synthetic_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.crop_seconds=1.0",
        "clips=8", "interpolation_steps=3", f"out_dir={out}", "device=cpu",
        "descriptors=[all,'pitch_shift=1,fade_in=1,fade_out=0,noise=0,time_mask=0,time_shift=0,time_stretch=0']",
    )
    assert result.returncode == 0, result.stderr
    table = json.loads((out / "invariance.json").read_text())
    assert len(table["values"]) == 2 and len(table["values"][0]) == 7
    assert all(-1.0 <= v <= 1.0 + 1e-6 for row in table["values"] for v in row)
    assert len(list(out.glob("radar_*.png"))) == 2 and (out / "interpolation.png").is_file()

    npz = tmp_path / "features.npz"
    result = _run("embed", str(tiny_checkpoints["amortised"]), str(synthetic_root / "FSD50K.eval_audio"), str(npz),
                  "--invariance", "0,0,1,1,0,0,1", "--seconds", "1.0", "--device", "cpu", "--cache-dir", str(tmp_path / "emb"))
    assert result.returncode == 0, result.stderr
    saved = np.load(npz)
    clips = len(list((synthetic_root / "FSD50K.eval_audio").glob("*.wav")))
    assert saved["features"].shape[0] == clips and np.all(np.isfinite(saved["features"]))
    assert saved["invariance"].tolist() == [0, 0, 1, 1, 0, 0, 1]
    bad = _run("embed", str(tiny_checkpoints["amortised"]), str(synthetic_root / "FSD50K.eval_audio"), str(npz),
               "--invariance", "pitch=1", "--cache-dir", str(tmp_path / "emb"))
    assert bad.returncode == 2 and "pitch" in bad.stderr


def _write_voxceleb1(root, speakers: int = 9, clips: int = 3) -> list[str]:
    """A VoxCeleb1 layout of tones: speaker s speaks at its own pitch; clips of 2.5 to 11 s (1 to 3 segments)."""
    import soundfile

    names = [f"id1{index:04d}" for index in range(speakers)]
    rng = np.random.default_rng(0)
    for index, speaker in enumerate(names):
        for clip in range(clips):
            seconds = 2.5 + 4.2 * clip
            t = np.arange(int(seconds * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * 110 * 2 ** (index / 4) * t) + 0.01 * rng.standard_normal(len(t))
            path = root / "wav" / speaker / f"video{clip}" / "00001.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, wave, 16000, subtype="PCM_16")
    return names


@pytest.mark.slow
def test_fewshot_on_a_metaaudio_layout_with_an_official_split_file(tiny_checkpoints, tmp_path):
    """VoxCeleb1 layout, variable-length clips (segments, majority vote), MetaAudio's split-file format."""
    root = tmp_path / "voxceleb1"
    speakers = _write_voxceleb1(root)
    split = np.empty(3, dtype=object)
    split[0], split[1], split[2] = speakers[:3], speakers[3:6], speakers[6:]
    np.save(tmp_path / "split.npy", split, allow_pickle=True)
    out = tmp_path / "fewshot"
    result = _run(
        "fewshot", str(REPO / "configs" / "audio" / "metaaudio_voxceleb1.yaml"),
        f"checkpoint={tiny_checkpoints['amortised']}", f"data.root={root}", f"data.split_file={tmp_path / 'split.npy'}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.workers=0", f"out_dir={out}", "episodes.ways=3", "episodes.shots=1",
        "episodes.queries=1", "episodes.test_episodes=8", "episodes.val_episodes=4", "learner.steps=3",
        "sweep.lrs=[0.01]", "sweep.invariance_lrs=[0.1]", "sklearn=false", "device=cpu", "progress=false",
        "set_invariance.steps=5",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    store = Path(report["log_mels"])
    manifest = json.loads((store / "manifest.json").read_text())
    assert sorted(manifest["stats_classes"]) == speakers[:3]  # statistics from the training classes only
    assert set(np.load(store / "index.npz")["class_names"].tolist()) == set(speakers[3:])  # val + test classes
    # clips of 2.5, 6.7 and 10.9 s give 1, 2 and 3 five-second segments
    assert np.bincount(np.load(store / "index.npz")["segment_clip"]).tolist() == [1, 2, 3] * 6
    rows = {row["readout"]: row for row in report["rows"]}
    floor = "MFCC statistics, nearest centroid"
    assert set(rows) == {"learned i", "i = all", "i = learned jointly on validation", floor}
    assert all(row["episodes"] == 8 for row in rows.values())
    assert rows[floor]["model"] == "floor"
