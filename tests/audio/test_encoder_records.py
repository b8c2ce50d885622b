"""Audio checkpoints describe their encoder: the record rebuilds it without the pretraining stack, and checkpoints
written before records existed still load (their record rebuilt from config.yaml) to the same features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.pretrained import load_encoder as load_recorded_encoder
from aiaudio.encoder import load_encoder


@pytest.mark.parametrize("name", ["amortised", "baseline"])
def test_the_record_describes_the_encoder_and_its_log_mel_input(tiny_checkpoints, name):
    checkpoint = latest_checkpoint(tiny_checkpoints[name])
    record = json.loads((checkpoint / "encoder.json").read_text())
    expected = "hyper_resnet18" if name == "amortised" else "plain_resnet18"
    assert record["encoder"]["name"] == expected and record["encoder"]["kwargs"]["in_chans"] == 1
    assert record["encoder"]["kwargs"]["width"] == 0.125 and record["amortised"] == (name == "amortised")
    assert ("hyper_hidden" in record["encoder"]["kwargs"]) == (name == "amortised")  # a plain model takes none
    assert record["space"] == {"names": ["pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift",
                                         "time_stretch"], "min_active": 2}
    assert record["input"]["kind"] == "logmel" and record["input"]["weights_prefix"] == "views.augment.frontend."
    encoder = load_recorded_encoder(checkpoint)  # the core's loader, from the record alone
    assert float(encoder.transform.std) > 1.0  # the normalisation statistics came along


def test_a_checkpoint_without_a_record_still_loads_to_the_same_features(tiny_checkpoints, tmp_path: Path):
    checkpoint = latest_checkpoint(tiny_checkpoints["amortised"])
    legacy = tmp_path / "legacy_checkpoint"
    shutil.copytree(checkpoint, legacy)
    (legacy / "encoder.json").unlink()
    (legacy / "checksums.json").unlink()  # written before checksums existed, too
    with pytest.raises(ConfigError, match="no encoder.json"):
        load_recorded_encoder(legacy)  # the core cannot guess a modality's record
    waves = torch.randn(3, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    now, before = load_encoder(checkpoint), load_encoder(legacy)
    for invariance in ("all", "pitch_shift=0,fade_in=1,fade_out=1,noise=1,time_mask=0,time_shift=1,time_stretch=0"):
        torch.testing.assert_close(before.embed(waves, invariance), now.embed(waves, invariance), rtol=0, atol=0)
