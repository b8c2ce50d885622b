"""End-to-end: `aiaudio cache` + `aiaudio pretrain` on synthetic data; SIGKILL midway and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.metrics import read_metrics

from conftest import REPO, aiaudio_command

CONFIG = str(REPO / "configs" / "audio" / "demo.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(aiaudio_command(*args), capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


@pytest.fixture(scope="module")
def cached(tiny_config_args):
    result = run(["cache", CONFIG, *tiny_config_args, "--quiet"])
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stdout
    return tiny_config_args


@pytest.fixture(scope="module")
def uninterrupted(cached, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = run(["pretrain", CONFIG, *cached, f"run_dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["final_step"] == 24
    return run_dir


@pytest.mark.slow
def test_pretraining_loss_falls(uninterrupted):
    records = read_metrics(uninterrupted)
    assert [r["step"] for r in records] == list(range(2, 25, 2))
    first = sum(r["loss"] for r in records[:2]) / 2
    last = sum(r["loss"] for r in records[-2:]) / 2
    assert last < first - 0.1, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert len({r["descriptor"] for r in records}) > 3  # amortised: several descriptors were used
    checkpoint = latest_checkpoint(uninterrupted)
    assert checkpoint.name == "step_00000024"
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert float(weights["views.augment.frontend.std"]) > 1.0  # normalisation statistics were estimated and saved


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_identical_weights(cached, uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    command = aiaudio_command("pretrain", CONFIG, *cached, f"run_dir={run_dir}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            found = latest_checkpoint(run_dir) if (run_dir / "checkpoints" / "latest").exists() else None
            if found is not None and found.name >= "step_00000012":
                break
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared in time")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = latest_checkpoint(run_dir).name
    assert killed_at < "step_00000024", "the kill came too late to test resumption"
    result = run(["pretrain", CONFIG, *cached, f"run_dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["start_step"] == int(killed_at.split("_")[1])
    resumed = load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))
    straight = load_file(str(latest_checkpoint(uninterrupted) / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    different = [k for k in straight if not (resumed[k] == straight[k]).all()]
    assert not different, f"weights differ after resume: {different[:5]}"
    # The metrics read as one run: every logged step once, in order.
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(2, 25, 2))


@pytest.mark.slow
def test_resume_refuses_a_changed_config(cached, uninterrupted):
    result = run(["pretrain", CONFIG, *cached, f"run_dir={uninterrupted}", "trainer.lr=0.5"])
    assert result.returncode == 2
    assert "trainer.lr" in result.stderr


def test_missing_cache_and_bad_keys_are_clear_errors(tmp_path):
    result = run(["pretrain", CONFIG, f"data.cache_dir={tmp_path / 'none'}", f"run_dir={tmp_path / 'r'}"])
    assert result.returncode == 2 and "aiaudio cache" in result.stderr
    result = run(["pretrain", CONFIG, "trainer.lrr=1"])
    assert result.returncode == 2 and "trainer.lrr" in result.stderr


def test_cache_reports_bad_metadata_as_an_error_naming_the_file(tmp_path):
    (tmp_path / "FSD50K.ground_truth").mkdir()
    (tmp_path / "FSD50K.ground_truth" / "vocabulary.csv").write_text("0,Bark,/m/05tny_\n")
    (tmp_path / "FSD50K.ground_truth" / "dev.csv").write_text("fname,labels,mids,split\n1,Meow,/m/07qrkrw,train\n")
    result = run(["cache", CONFIG, f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "--quiet"])
    assert result.returncode == 2
    assert "dev.csv" in result.stderr and "Meow" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("override,message", [
    ("invariance.min_active=9", "invariance.min_active must lie in \\[0, 7\\]"),
    ("data.crop_seconds=0.01", "fewer than one FFT window"),
    ("trainer.lr=-1", "trainer.lr must be a positive number"),
    ("trainer.keep_checkpoints=0", "keep_checkpoints must be at least 1"),
    ("trainer.batch_size=1", "batch_size must be at least 2"),
    ("model.width=0", "model.width must be positive"),
    ("method.temperature=0", "method.temperature must be positive"),
    ("trainer.device=cuda:7", "CUDA is not available|device"),
])
def test_bad_values_are_refused_at_start_naming_the_key(tmp_path, override, message):
    if override.startswith("trainer.device") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run(["pretrain", CONFIG, f"data.root={tmp_path}", f"run_dir={tmp_path / 'run'}", override], timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert __import__("re").search(message, done.stderr), done.stderr
