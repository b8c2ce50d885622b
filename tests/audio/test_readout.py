"""The many-shot readout: known invariances are recovered, metrics match scikit-learn, splits and the sweep behave,
and ``aiaudio.readout`` runs end to end on tone fixtures with a freshly pretrained tiny checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score as sklearn_r2

from aiaudio.config import ConfigError, apply_overrides, load_yaml
from aiaudio.eval.learner import AmortisedFeatures, FrozenFeatures
from aiaudio.eval.readout import (
    ReadoutData,
    ReadoutLearnerConfig,
    SweepConfig,
    evaluate_readout,
    fit_readout,
    linear_readout,
    r2_score,
    split_off,
    sweep_readout,
    validation_split,
)

from conftest import REPO
from known_answers import NuisanceEncoder


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread avoids contention overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# --------------------------------------------------------------------------------------------------------------
# The modality-agnostic readout
# --------------------------------------------------------------------------------------------------------------


def _nuisance_task(task: str, informative: str, clips: int = 240, seed: int = 0) -> tuple[torch.Tensor, ReadoutData]:
    """Clips on the unit circle (angle ``theta``) in the informative pair of dimensions, noise of a larger scale in
    the other pair. Classification: one of 6 angular sectors; regression: ``cos(theta) + 0.5 sin(theta)``."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.rand(clips, generator=generator) * 2 * math.pi
    circle = torch.stack([theta.cos(), theta.sin()], dim=1)
    noise = 3.0 * torch.randn(clips, 2, generator=generator)
    data = torch.cat([circle, noise] if informative == "signal" else [noise, circle], dim=1)
    if task == "classification":
        targets = (theta / (2 * math.pi / 6)).long().clamp(max=5)
    else:
        targets = circle[:, 0] + 0.5 * circle[:, 1]
    return data, ReadoutData(torch.arange(clips), targets, task)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("informative,expect_high", [("signal", True), ("nuisance", False)])
def test_readout_learns_the_invariance_the_task_needs(task, informative, expect_high):
    data, readout_data = _nuisance_task(task, informative)
    encoder = AmortisedFeatures(NuisanceEncoder(), lambda rows: data[rows])
    config = ReadoutLearnerConfig(epochs=40, batch_size=32, invariance_lr=0.05, patience=40)
    result = linear_readout(
        encoder, readout_data, torch.arange(160), torch.arange(160, 240), config,
        SweepConfig(lrs=[0.05], weight_decays=[0.0]), start=torch.full((2,), 0.5), val_fraction=0.25, seed=1,
    )
    learned = result.descriptor
    if expect_high:
        assert learned[0] > 0.9, learned
    else:
        assert learned[0] < 0.1, learned
    assert learned[1] == 0.5  # factor 1 has no effect on the features: zero gradient, it stays at its start
    assert bool(((learned >= 0) & (learned <= 1)).all())
    assert all(0.0 <= v <= 1.0 for record in result.fit.history for v in record["descriptor"])
    chance = 1 / 6 if task == "classification" else 0.0
    assert result.test_score > chance + 0.3, result.test_score


def test_regression_r2_matches_sklearn_and_a_linear_target_is_fit():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 8, generator=generator)
    targets = features @ torch.linspace(-1, 1, 8) + 3.0 + 0.05 * torch.randn(300, generator=generator)
    data = ReadoutData(torch.arange(300), targets, "regression")
    config = ReadoutLearnerConfig(epochs=150, batch_size=50, patience=20, normalize="none")
    result = linear_readout(
        FrozenFeatures(features), data, torch.arange(200), torch.arange(200, 300), config,
        SweepConfig(lrs=[0.05], weight_decays=[0.0]),
    )
    predictions = result.test.predictions.numpy()
    assert predictions.shape == (100,)
    reference = sklearn_r2(targets[200:].double().numpy(), predictions.astype(np.float64))
    assert result.test_score == pytest.approx(reference, abs=1e-9)
    assert result.test_score > 0.95
    assert result.fit.descriptor is None
    # the metric itself, including several outputs and the constant-target conventions
    y = np.random.default_rng(0).normal(size=(20, 3))
    p = y + np.random.default_rng(1).normal(size=(20, 3))
    assert r2_score(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sklearn_r2(y, p), abs=1e-12)
    constant = np.ones(5)
    for guess in (constant, constant + 0.1):
        assert r2_score(torch.from_numpy(constant), torch.from_numpy(guess)) == sklearn_r2(constant, guess)


def test_fixed_feature_classification_matches_sklearn_logistic_regression():
    generator = torch.Generator().manual_seed(0)
    classes, per_class, dims = 4, 100, 16
    centres = torch.randn(classes, dims, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + 1.6 * torch.randn(len(labels), dims, generator=generator)
    data = ReadoutData(torch.arange(len(labels)), labels, "classification")
    train, test = split_off(torch.arange(len(labels)), 0.3, seed=5, strata=labels)
    train, val = validation_split(data, train, 0.2, seed=0)
    weight_decay = 1e-3
    config = ReadoutLearnerConfig(epochs=300, batch_size=64, lr=0.05, weight_decay=weight_decay, patience=300)
    fit = fit_readout(FrozenFeatures(features), data, train, val, config)
    ours = evaluate_readout(FrozenFeatures(features), data, test, fit.readout)
    normalised = torch.nn.functional.normalize(features, dim=-1).numpy()
    reference = LogisticRegression(C=1 / (weight_decay * len(train)), max_iter=5000)
    reference.fit(normalised[train.numpy()], labels[train].numpy())
    expected = reference.predict(normalised[test.numpy()])
    sklearn_accuracy = float((expected == labels[test].numpy()).mean())
    assert 0.5 < sklearn_accuracy < 0.95  # a task with errors to make, so agreement is informative
    assert abs(ours.score - sklearn_accuracy) <= 0.03
    assert float((ours.predictions.numpy() == expected).mean()) > 0.93


def test_splits_are_disjoint_seeded_and_stratified():
    labels = torch.arange(5).repeat_interleave(20)
    data = ReadoutData(torch.arange(100), labels, "classification")
    train, test = split_off(torch.arange(100), 0.2, seed=3, strata=labels)
    fit, val = validation_split(data, train, 0.25, seed=7)
    assert set(fit.tolist()) | set(val.tolist()) == set(train.tolist())
    assert not set(fit.tolist()) & set(val.tolist())
    assert not (set(fit.tolist()) | set(val.tolist())) & set(test.tolist())
    assert torch.equal(torch.bincount(labels[test], minlength=5), torch.full((5,), 4))
    assert torch.equal(torch.bincount(labels[val], minlength=5), torch.full((5,), 4))
    again_fit, again_val = validation_split(data, train, 0.25, seed=7)
    assert torch.equal(again_fit, fit) and torch.equal(again_val, val)
    other_fit, other_val = validation_split(data, train, 0.25, seed=8)
    assert not torch.equal(other_val, val)
    # segments of one clip stay together: rows follow their clip
    segmented = ReadoutData(torch.arange(10).repeat_interleave(3), torch.rand(10), "regression")
    kept, held = validation_split(segmented, torch.arange(10), 0.3, seed=0)
    assert len(held) == 3 and not set(kept.tolist()) & set(held.tolist())
    rows, positions = segmented.rows_of(held)
    assert torch.equal(segmented.segment_clip[rows], held[positions])
    assert len(rows) == 9


def test_sweep_picks_the_learning_rate_that_works():
    data, readout_data = _nuisance_task("regression", "signal")
    features = data[:, :2]  # the informative pair only: the target is linear in it
    config = ReadoutLearnerConfig(epochs=10, batch_size=32, patience=10)
    train, val = validation_split(readout_data, torch.arange(240), 0.25, seed=0)
    result = sweep_readout(
        FrozenFeatures(features), readout_data, train, val, config, SweepConfig(lrs=[1e-6, 0.1], weight_decays=[0.0])
    )
    scores = {trial["lr"]: trial["val_score"] for trial in result.trials}
    assert scores[0.1] > 0.9 and scores[1e-6] < 0.1, scores  # a step of 1e-6 barely moves the zero-initialised head
    assert result.best.lr == 0.1 and result.best.val.score == scores[0.1]
    reference = sklearn_r2(readout_data.targets[val].double().numpy(), result.best.val.predictions.double().numpy())
    assert result.best.val.score == pytest.approx(reference, abs=1e-9)


def test_sweep_over_invariance_lrs_only_for_a_learned_descriptor():
    data, readout_data = _nuisance_task("regression", "signal")
    train, val = validation_split(readout_data, torch.arange(240), 0.25, seed=0)
    config = ReadoutLearnerConfig(epochs=40, batch_size=32, patience=40)
    sweep = SweepConfig(lrs=[0.05], weight_decays=[0.0], invariance_lrs=[0.0, 0.05])
    amortised = AmortisedFeatures(NuisanceEncoder(), lambda rows: data[rows])
    result = sweep_readout(amortised, readout_data, train, val, config, sweep, start=torch.full((2,), 0.5))
    scores = {trial["invariance_lr"]: trial["val_score"] for trial in result.trials}
    # i stays at 0.5 with invariance_lr 0, so half the nuisance remains in the features; learning i removes it.
    assert set(scores) == {0.0, 0.05} and scores[0.05] > scores[0.0] + 0.1, scores
    assert result.best.invariance_lr == 0.05 and result.best.descriptor[0] > 0.9
    # Features without a descriptor sweep lrs x weight_decays alone and report no invariance lr.
    frozen = sweep_readout(FrozenFeatures(data[:, :2]), readout_data, train, val, config, sweep)
    assert len(frozen.trials) == 1 and "invariance_lr" not in frozen.trials[0]
    assert frozen.best.invariance_lr is None
    for bad in ([], [-0.1]):
        with pytest.raises(ValueError, match="invariance_lrs"):
            SweepConfig(invariance_lrs=bad)


@pytest.mark.parametrize("normalize", ["l2", "batchnorm"])
def test_early_stopping_restores_the_best_epoch(normalize):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 40, generator=generator)
    labels = torch.randint(0, 2, (60,), generator=generator)  # pure noise: validation loss rises as it overfits
    data = ReadoutData(torch.arange(60), labels, "classification")
    config = ReadoutLearnerConfig(epochs=200, batch_size=10, lr=0.1, patience=5, normalize=normalize)
    fit = fit_readout(FrozenFeatures(features), data, torch.arange(40), torch.arange(40, 60), config)
    losses = [record["val_loss"] for record in fit.history]
    assert fit.epochs < 200 and fit.epochs == fit.best_epoch + 5
    assert fit.best_epoch == 1 + int(np.argmin(losses))
    again = evaluate_readout(FrozenFeatures(features), data, torch.arange(40, 60), fit.readout)
    assert again.loss == pytest.approx(min(losses), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# aiaudio.readout end to end
# --------------------------------------------------------------------------------------------------------------

TONE_RATE = 16000
TONE_BANDS = ((200.0, 600.0), (600.0, 1800.0), (1800.0, 5400.0))  # equal widths in log-frequency


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_config_args, tmp_path_factory) -> Path:
    """A two-step amortised pretraining run on the session's synthetic data (the demo config, shrunk; with the
    hypernetwork's learning rate the readout bounds below were measured with over six seeds)."""
    from aiaudio.pretrain import parse_config, run_cache, run_pretrain

    run_dir = tmp_path_factory.mktemp("readout-run") / "run"
    overrides = [*tiny_config_args, "trainer.steps=2", "trainer.ckpt_every=2", "trainer.log_every=1",
                 "trainer.warmup_steps=1", "trainer.hyper_lr_scale=1.0", f"run_dir={run_dir}"]
    config = parse_config(apply_overrides(load_yaml(REPO / "configs" / "audio" / "demo.yaml"), overrides))
    run_cache(config, progress=False)
    run_pretrain(config)
    return run_dir


def write_tones(root: Path, count: int) -> Path:
    """``count`` half-second tones in class folders (the frequency band) and ``tones.csv`` with ``path``, ``band``,
    ``log2_hz`` (the regression target) and ``split`` (every fourth clip is a test clip)."""
    rng = np.random.default_rng(0)
    time_axis = np.arange(TONE_RATE // 2) / TONE_RATE
    rows = ["path,band,log2_hz,split"]
    for index in range(count):
        band = index % 3
        low, high = TONE_BANDS[band]
        hertz = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        wave = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * hertz * time_axis + rng.uniform(0, 2 * np.pi))
        wave = wave + 0.01 * rng.standard_normal(len(time_axis))
        relative = f"band{band}/tone{index:03d}.wav"
        (root / f"band{band}").mkdir(exist_ok=True)
        soundfile.write(root / relative, wave.astype(np.float32), TONE_RATE)
        rows.append(f"{relative},band{band},{np.log2(hertz):.6f},{'test' if index % 4 == 0 else 'train'}")
    (root / "tones.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """60 tones (see :func:`write_tones`)."""
    return write_tones(tmp_path_factory.mktemp("tones"), 60)


@pytest.fixture(scope="module")
def many_tones(tmp_path_factory) -> Path:
    """160 tones: 40 test clips, enough for a stable R2 of a nearly random encoder (see the regression test)."""
    return write_tones(tmp_path_factory.mktemp("many_tones"), 160)


def _readout_config(checkpoint: Path, out_dir: Path, data: dict) -> dict:
    raw = load_yaml(REPO / "configs" / "audio" / "readout_example.yaml")
    return apply_overrides(raw, [
        f"checkpoint={checkpoint}", f"out_dir={out_dir}", "device=cpu", "progress=false",
        "data.segment_seconds=0.5", "data.workers=0", "data.val_fraction=0.25", "learner.epochs=25",
        "learner.patience=10", "learner.batch_size=16", "sweep.lrs=[0.01, 0.1]", "sweep.weight_decays=[0.0]",
        *[f"data.{key}={value}" for key, value in data.items()],
    ])


@pytest.mark.slow
def test_readout_end_to_end_on_tones(tiny_checkpoint, tones, many_tones, tmp_path):
    from aiaudio.readout import parse_readout_config, run_readout

    classification = parse_readout_config(_readout_config(tiny_checkpoint, tmp_path / "bands", {"root": tones}))
    summary = run_readout(classification)
    report = json.loads((tmp_path / "bands" / "results.json").read_text())
    assert set(summary["readouts"]) == {"learned", "fixed:all"} and report["metric"] == "accuracy"
    assert report["data"]["classes"] == ["band0", "band1", "band2"]
    assert report["data"]["used_clips"] == 60 and report["data"]["test_clips"] == 12  # round(0.2 * 20) per class
    learned = report["readouts"]["learned"]
    assert set(learned["descriptor"]) == {"pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift",
                                          "time_stretch"}
    assert all(0.0 <= value <= 1.0 for value in learned["descriptor"].values())
    assert report["readouts"]["fixed:all"]["descriptor"] == {name: 1.0 for name in learned["descriptor"]}
    assert {(t["lr"], t["weight_decay"]) for t in learned["trials"]} == {(0.01, 0.0), (0.1, 0.0)}
    best = max(learned["trials"], key=lambda t: (t["val_score"], -t["val_loss"]))
    assert learned["lr"] == best["lr"]
    assert max(result["test_score"] for result in report["readouts"].values()) >= 0.75
    for result in report["readouts"].values():
        assert result["test_score"] >= 0.5, result  # chance is 1/3
        assert result["clips"]["train"] + result["clips"]["val"] == 48 and result["clips"]["test"] == 12
    markdown = (tmp_path / "bands" / "results.md").read_text()
    assert "| learned |" in markdown and "| fixed:all |" in markdown

    regression = parse_readout_config(_readout_config(tiny_checkpoint, tmp_path / "pitch", {
        "format": "csv", "csv": many_tones / "tones.csv", "task": "regression", "target_columns": "[log2_hz]",
        "split_column": "split", "variable_length": "true",
    }))
    regression.sweep.lrs = [0.1]
    summary = run_readout(regression)
    report = json.loads((tmp_path / "pitch" / "results.json").read_text())
    assert report["metric"] == "r2" and report["data"]["test_clips"] == 40  # the split column's test rows
    # A two-step encoder is nearly random. With 15 test clips (60 tones) the learned readout's test R2 ranged from
    # -0.02 to 0.81 over pretraining seeds 0-5 (-0.02 on an AVX-512 machine at seed 0). With 40 test clips it ranged
    # 0.81-0.96 (learned) and 0.65-0.95 (fixed, all on), validation 0.78-0.95, so the bounds sit well below the
    # lowest measured value.
    assert max(result["test_score"] for result in summary["readouts"].values()) > 0.6
    for name, result in summary["readouts"].items():
        assert result["test_score"] > 0.3 and result["val_score"] > 0.5, (name, result)


def test_readout_config_errors_name_the_key(tmp_path):
    from aiaudio.readout import parse_readout_config

    raw = _readout_config(tmp_path / "ckpt", tmp_path / "out", {"root": tmp_path})
    with pytest.raises(ConfigError, match="learner.lrr"):
        parse_readout_config(apply_overrides(raw, ["learner.lrr=1"]))
    with pytest.raises(ConfigError, match="data.task=regression needs data.format=csv"):
        parse_readout_config(apply_overrides(raw, ["data.task=regression"]))
    with pytest.raises(ConfigError, match="data.csv is not set"):
        parse_readout_config(apply_overrides(raw, ["data.format=csv"]))
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        parse_readout_config(apply_overrides(raw, ["checkpoint=null"]))
    example = yaml.safe_load((REPO / "configs" / "audio" / "readout_example.yaml").read_text())
    assert parse_readout_config({**example, "checkpoint": "run", "data": {**example["data"], "root": str(tmp_path)}})
    with pytest.raises(ConfigError, match="data.root=.*missing is not a directory"):
        parse_readout_config({**example, "checkpoint": "run", "data": {**example["data"], "root": str(tmp_path / "missing")}})
