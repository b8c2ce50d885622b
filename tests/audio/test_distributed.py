"""Two gloo ranks under torchrun: same descriptor at every step, identical weights, gathered negatives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aiaudio.methods.losses import nt_xent

from conftest import REPO, aiaudio_command


@pytest.mark.slow
def test_two_rank_gloo_run_stays_in_sync(tiny_config_args, tmp_path):
    config = str(REPO / "configs" / "audio" / "demo.yaml")
    overrides = [*tiny_config_args, f"run_dir={tmp_path / 'run'}", "trainer.steps=6", "trainer.ckpt_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cache = subprocess.run(aiaudio_command("cache", config, *overrides, "--quiet"), capture_output=True, text=True, env=env)
    assert cache.returncode == 0, cache.stderr
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "tests" / "audio" / "ddp_worker.py"), str(tmp_path), config, *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    # The same descriptor at every step on both ranks, and not the same one every step.
    assert r0["descriptors"].shape == (6, 7)
    assert torch.equal(r0["descriptors"], r1["descriptors"])
    assert len({tuple(d.tolist()) for d in r0["descriptors"]}) > 1
    # Identical weights after training. (BatchNorm running statistics are per-rank between DDP's broadcasts of rank
    # 0's buffers at each forward; only rank 0 writes checkpoints.)
    assert r0["parameters"].keys() == r1["parameters"].keys() and len(r0["parameters"]) > 50
    for key in r0["parameters"]:
        assert torch.equal(r0["parameters"][key], r1["parameters"][key]), key
    assert torch.equal(r0["frontend_stats"], r1["frontend_stats"])

    # Gathered NT-Xent: the mean of the per-rank losses equals the loss of the whole batch in one process, and the
    # gradients (summed over ranks by the all-gather's backward) equal the whole-batch gradient.
    g = torch.Generator().manual_seed(123)
    z1_all, z2_all = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    z1_all.requires_grad_(True)
    whole = nt_xent(z1_all, z2_all, 0.2)
    whole.backward()
    assert ((r0["loss"] + r1["loss"]) / 2).item() == pytest.approx(whole.item(), rel=1e-5)
    # Each rank's loss is the mean over its own anchors; the world's loss is their mean, hence the factor 2.
    got = torch.cat([r0["grad_z1"], r1["grad_z1"]]) / 2
    assert torch.allclose(got, z1_all.grad, atol=1e-6)
