"""Shared fixtures: a small synthetic data set in FSD50K layout and its waveform cache, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from aiaudio.audio.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_clips=48, seed=0, min_seconds=0.6, max_seconds=1.6)


@pytest.fixture(scope="session")
def tiny_config_args(synthetic_root, tmp_path_factory) -> list[str]:
    """Overrides that make the demo config a seconds-long pretraining run on the synthetic set."""
    cache_dir = tmp_path_factory.mktemp("cache") / "synthetic-train"
    return [
        f"data.root={synthetic_root}",
        f"data.cache_dir={cache_dir}",
        "data.crop_seconds=1.0",
        "data.cache_workers=0",
        "model.width=0.125",
        "model.projector_hidden=32",
        "model.projector_dim=16",
        "normalization.clips=16",
        "trainer.batch_size=8",
        "trainer.steps=24",
        "trainer.warmup_steps=2",
        "trainer.lr=3e-3",
        "trainer.log_every=2",
        "trainer.ckpt_every=6",
        "trainer.num_workers=0",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.device=cpu",
    ]


def aiaudio_command(*args: str) -> list[str]:
    """The command line that runs ``aiaudio`` with this interpreter."""
    return [sys.executable, "-m", "aiaudio", *args]


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_config_args, tmp_path_factory) -> dict[str, Path]:
    """Run directories of a tiny amortised model and a tiny plain SimCLR baseline, pretrained for a few steps."""
    from aiaudio.config import apply_overrides, load_yaml
    from aiaudio.pretrain import parse_config, run_cache, run_pretrain

    runs = tmp_path_factory.mktemp("runs")
    demo = load_yaml(REPO / "configs" / "audio" / "demo.yaml")
    extra = {
        "amortised": [],
        "baseline": ["invariance.mode=fixed", "model.encoder=plain_resnet18"],
    }
    out = {}
    for name, overrides in extra.items():
        config = parse_config(apply_overrides(demo, [*tiny_config_args, f"run_dir={runs / name}", "trainer.steps=6", *overrides]))
        run_cache(config, progress=False)
        run_pretrain(config)
        out[name] = runs / name
    return out


# ---- the fault suite's report (see tests/faults.py)
_FAULT_OUTCOMES: dict[str, list[str]] = {}


def _fault_key(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def pytest_runtest_logreport(report) -> None:
    from faults import FAULTS

    key = _fault_key(report.nodeid)
    if key not in FAULTS:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _FAULT_OUTCOMES.setdefault(key, []).append(report.outcome)


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("RELIABILITY_REPORT")
    if not target or not _FAULT_OUTCOMES:
        return
    import json

    from faults import FAULTS

    rows = [{"test": key, "area": area, "fault": fault, "holds": holds, "outcomes": _FAULT_OUTCOMES.get(key, [])}
            for key, (area, fault, holds) in FAULTS.items()]
    Path(target).write_text(json.dumps({"rows": rows}, indent=2) + "\n", encoding="utf-8")
