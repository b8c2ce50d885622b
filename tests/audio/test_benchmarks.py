"""The benchmark scripts run end to end at tiny sizes and print the JSON that RESULTS.md reads (timings unchecked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> dict:
    """Run ``benchmarks/<script>`` in its own process (each sets torch's threads and allocator) and parse its JSON."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["0", "2"])
def test_augment_throughput_reports_both_sides(processes: str) -> None:
    report = run_benchmark(
        "augment_throughput.py", "--device", "cpu", "--seconds", "0.2", "--rounds", "1", "--clips", "4",
        "--clip-seconds", "0.5", "--batch-size", "4", "--workers", "1", "--pitch-domain", "spectrogram",
        "--batched-processes", processes,
    )
    batched, reference = report["batched"], report["reference"]
    assert batched["views"] > 0 and reference["views"] > 0
    # Every batched view comes in whole batches of 4 (from each process when there are two).
    assert batched["views"] % 4 == 0
    # the script rounds the speedup to 2 decimals: a small one (a loaded machine) is off by up to 0.005
    assert report["speedup"] == pytest.approx(batched["views_per_s"] / reference["views_per_s"], rel=0.01, abs=0.005)
    expected_layout = "2 single-threaded processes" if processes == "2" else "1 process"
    assert report["setup"]["batched_layout"].startswith(expected_layout)
    assert set(batched["ms_per_batch_by_op"]) == {
        "frontend_only", "pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift", "time_stretch",
        "all_ops",
    }


def test_augment_throughput_refuses_processes_on_a_gpu_device() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "augment_throughput.py"), "--device", "cuda",
         "--batched-processes", "2"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert done.returncode != 0 and "--batched-processes" in done.stderr


@pytest.mark.slow
def test_augment_cpu_time_times_every_stage_of_the_given_checkout() -> None:
    report = run_benchmark(
        "augment_cpu_time.py", "--batch-size", "2", "--clip-seconds", "0.5", "--repeats", "1", "--source", str(REPO)
    )
    assert Path(report["source"]) == REPO
    stages = report["cpu_ms_per_batch"]
    expected = {"power_spectrogram", "noise", "whole_chain_spectrogram_domain", "whole_chain_waveform_domain"}
    assert expected <= set(stages)
    assert all(value >= 0 for value in stages.values())


@pytest.mark.slow
def test_pretrain_step_compares_the_two_encoders() -> None:
    report = run_benchmark(
        "pretrain_step.py", "--device", "cpu", "--batch-size", "2", "--seconds", "0.5", "--width", "0.125",
        "--steps", "1", "--warmup", "0",
    )
    encoders = {result["encoder"]: result for result in report["results"]}
    assert set(encoders) == {"plain_resnet18", "hyper_resnet18"}
    assert encoders["hyper_resnet18"]["parameters_m"] > encoders["plain_resnet18"]["parameters_m"]
    ratio = encoders["hyper_resnet18"]["method_ms"] / encoders["plain_resnet18"]["method_ms"]
    assert report["ai_over_plain_method"] == pytest.approx(ratio, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fewshot_throughput_runs_batched_and_one_at_a_time(precision: str) -> None:
    report = run_benchmark(
        "fewshot_throughput.py", "--device", "cpu", "--width", "0.125", "--episodes", "2", "--serial-episodes", "1",
        "--episodes-per-batch", "2", "--steps", "1", "--early-steps", "2", "--classes", "5", "--clips-per-class", "2",
        "--mels", "32", "--frames", "16", "--no-overhead", "--precision", precision,
    )
    assert report["precision"] == {"fp32": "fp32", "bf16": "bf16 autocast"}[precision]
    runs = {run["run"]: run for run in report["runs"]}
    assert set(runs) == {"batched", "one_at_a_time", "batched_early_stopping"}
    assert runs["batched"]["episodes"] == 2 and runs["one_at_a_time"]["episodes"] == 1
    assert runs["batched"]["mean_steps"] == 1.0 and 1.0 <= runs["batched_early_stopping"]["mean_steps"] <= 2.0
    for run in runs.values():
        assert run["projected_s_for_10000"] == pytest.approx(10000 / run["episodes_per_s"], rel=0.01)
        assert 0.0 <= run["mean_accuracy"] <= 1.0
    ratio = runs["batched"]["episodes_per_s"] / runs["one_at_a_time"]["episodes_per_s"]
    assert report["batched_over_one_at_a_time"] == pytest.approx(ratio, abs=0.01)


def test_gpu_checks_fit_one_device_call_and_refuse_a_missing_gpu(tmp_path: Path) -> None:
    script = (REPO / "benchmarks" / "gpu_checks.sh").read_text()
    limits = [int(match) for match in re.findall(r"^\s*step \S+ (\d+) ", script, flags=re.MULTILINE)]
    assert len(limits) == 8 and sum(limits) <= 590  # the budget the script and the README state
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is not reachable")
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_checks.sh"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "DEVICE": "cuda", "PYTHON": sys.executable},
    )
    assert done.returncode == 1 and "no CUDA device" in done.stderr


def test_vision_augment_throughput_reports_both_sides() -> None:
    report = run_benchmark(
        "vision_augment_throughput.py", "--device", "cpu", "--seconds", "0.3", "--size", "32", "--storage", "40",
        "--batch-size", "8", "--images", "16", "--workers", "1",
    )
    assert report["benchmark"] == "vision_augment_throughput" and report["ours_views_per_s"] > 0
    assert report["ours_torch_ops_views_per_s"] > 0 and report["commit"]
    assert report["speedup"] == pytest.approx(report["ours_views_per_s"] / report["reference_views_per_s"], rel=0.02)


def test_vision_pretrain_step_compares_each_pair() -> None:
    report = run_benchmark("vision_pretrain_step.py", "--device", "cpu", "--only", "vit", "--size", "32",
                           "--batch-size", "2", "--steps", "1", "--warmup", "0")
    family = report["families"]["vit mocov3"]
    names = [result["encoder"] for result in family["results"]]
    assert names == ["plain_vit_tiny_patch16_224", "prompt_vit_tiny_patch16_224"]
    assert family["results"][1]["parameters_m"] > family["results"][0]["parameters_m"]
    assert family["ai_over_plain_method"] == pytest.approx(
        family["results"][1]["method_ms"] / family["results"][0]["method_ms"], rel=0.01)


def test_pretraining_ablations_name_their_overrides_and_render_every_row() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.pretraining_ablations import render_table, variant_overrides

    assert variant_overrides("base") == []
    assert variant_overrides("descriptors_per_step=4") == ["invariance.descriptors_per_step=4"]
    assert variant_overrides("dependence=0.25") == ["model.dependence=0.25"]
    assert variant_overrides("hyper_lr_scale=0.1") == ["trainer.hyper_lr_scale=0.1"]
    assert "model.encoder=plain_resnet18" in variant_overrides("simclr")
    with pytest.raises(SystemExit, match="key=value"):
        variant_overrides("nonsense")
    readouts = {name: {"accuracy": 50.0 + k, "ci95": 2.0, "invariance": [0.25, 1.0]}
                for k, name in enumerate(("learned i", "i = all, running", "i = all, reference",
                                          "i = learned on validation"))}
    readouts_tasks = ("family", "midi_note")
    record = {"rows": [{"variant": "base", "seed": 0, "tasks": {"family": readouts, "midi_note": readouts}},
                       {"variant": "simclr", "seed": 0, "tasks": {t: {"plain": {"accuracy": 61.0, "ci95": 1.5}}
                                                                  for t in ("family", "midi_note")}}],
              "floor": {"family": {"accuracy": 40.0, "ci95": 3.0}, "midi_note": {"accuracy": 30.0, "ci95": 3.0}}}
    lines = render_table(record).splitlines()
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    # a row recorded before the jointly learned readout existed shows a dash there
    assert "| base | 0 | 50.0 ± 2.0 | 51.0 ± 2.0 | 52.0 ± 2.0 | 53.0 ± 2.0 | – | 50.0 ± 2.0 |" in lines[2]
    assert lines[3].startswith("| simclr | 0 |") and "61.0 ± 1.5" in lines[3]
    assert lines[4].startswith("| MFCC floor") and "40.0 ± 3.0 | 30.0 ± 3.0" in lines[4]
    assert lines[2].endswith("| per episode 25 %, 25 % |")
    jointly = {"accuracy": 70.0, "ci95": 2.5, "invariance": [0.0, 1.0]}
    record["rows"][0]["tasks"] = {t: {**readouts, "i = learned jointly on validation": jointly} for t in readouts_tasks}
    line = render_table(record).splitlines()[2]
    assert "| 53.0 ± 2.0 | 70.0 ± 2.5 | 50.0 ± 2.0 |" in line and line.endswith("per episode 25 %, 25 %; jointly 0 %, 0 % |")


@pytest.mark.slow
def test_set_invariance_choice_scores_both_variants_on_the_same_test_episodes(tiny_checkpoints, synthetic_root,
                                                                               tmp_path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.set_invariance_choice import START_VARIANT, VARIANTS, evaluate

    overrides = [
        f"checkpoint={tiny_checkpoints['amortised']}", f"data.root={synthetic_root}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.segment_seconds=1.0", "data.workers=0", "data.stats_clips=16",
        "episodes.ways=3", "episodes.shots=2", "episodes.queries=1", "episodes.test_episodes=12",
        "episodes.val_episodes=6", "learner.episodes_per_batch=6", "set_invariance.steps=4",
        "set_invariance.episodes_per_step=2", "progress=false", "device=cpu",
    ]
    rows = evaluate(REPO / "configs" / "audio" / "demo_fewshot.yaml", overrides, start=True)
    assert set(rows) == {*VARIANTS, START_VARIANT}
    fixed, held_out = (rows[name] for name in VARIANTS)
    started = rows[START_VARIANT]
    assert started["start"] == fixed["chosen_i"] and len(started["learned_i"]) == 7
    assert 0.0 <= started["accuracy"] <= 100.0
    for row in (fixed, held_out):
        assert 0.0 <= row["accuracy"] <= 100.0 and row["ci95"] >= 0.0
        assert len(row["chosen_i"]) == 7 and all(0.0 <= v <= 1.0 for v in row["chosen_i"])
    assert "chosen" not in fixed and fixed["trace"]["holdout"] == 0.0
    # the held-out variant chose among the start and every pass end of its three learning rates
    chosen = held_out["chosen"]
    assert chosen["lr"] in (None, 0.01, 0.05, 0.2) and 0 <= chosen["steps"] <= 4
    assert len(held_out["trace"]["candidates"]) >= 4
    if chosen["lr"] is None:
        assert held_out["chosen_i"] == pytest.approx([0.5] * 7)
