"""A second modality on the core alone: a toy pretrains with SimCLR, MoCo-v2 and MoCo-v3, resumes exactly after a
kill, loads from its encoder record, and runs few-shot episodes with a learned invariance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import DIM, FACTORS, ToyVectors, parts_builder, toy_config, toy_trainer

from aiaudio.config import ConfigError
from aiaudio.engine.checkpoint import latest_checkpoint
from aiaudio.engine.pretrained import ENCODER_RECORD, load_encoder
from aiaudio.engine.pretraining import run_pretraining
from aiaudio.eval.episodes import SegmentPool
from aiaudio.eval.fewshot import (
    EpisodeConfig,
    EpisodeData,
    FewshotEvaluator,
    FewshotRunConfig,
    descriptor_label,
    evaluate_encoder,
    format_table,
)
from aiaudio.eval.learner import AmortisedFeatures, LearnerConfig
from aiaudio.eval.sweep import FewshotSweepConfig
from aiaudio.methods.moco import MoCoV2


def pretrain(run_dir: Path, method: str, dataset: ToyVectors | None = None, **trainer_changes) -> dict:
    trainer = toy_trainer(**trainer_changes)
    dataset = dataset if dataset is not None else ToyVectors()
    return run_pretraining(run_dir, toy_config(method, trainer), trainer, parts_builder(method, trainer, dataset))


@pytest.mark.parametrize("method", ["simclr", "mocov2", "mocov3"])
def test_each_method_pretrains_and_writes_an_encoder_record(tmp_path: Path, method: str) -> None:
    summary = pretrain(tmp_path / method, method)
    checkpoint = latest_checkpoint(tmp_path / method)
    assert summary["final_step"] == 8 and summary["items"] == 64 and checkpoint.name == "step_00000008"
    record = json.loads((checkpoint / ENCODER_RECORD).read_text())
    assert record["encoder"]["name"] == "toy_hyper_mlp" and record["encoder"]["weights_prefix"] == "method.encoder."
    assert record["space"] == {"names": list(FACTORS), "min_active": 0} and record["amortised"] is True
    encoder = load_encoder(tmp_path / method)
    weights = load_file(str(checkpoint / "model.safetensors"))
    torch.testing.assert_close(encoder.encoder.base.weight, weights["method.encoder.base.weight"], rtol=0, atol=0)
    x = torch.randn(5, DIM)
    assert encoder.embed(x, {"noise": 1, "scale": 1}).shape == (5, 16)
    assert not torch.equal(encoder.embed(x, "noise=1,scale=1"), encoder.embed(x, "noise=0,scale=0"))
    with pytest.raises(ConfigError, match="missing"):
        encoder.embed(x, {"noise": 1})


@pytest.mark.parametrize("method", ["mocov2", "mocov3", "simclr"])
def test_a_killed_run_resumes_to_the_weights_and_queues_of_an_uninterrupted_one(tmp_path: Path, method: str) -> None:
    pretrain(tmp_path / "whole", method)
    with pytest.raises(RuntimeError, match="simulated kill"):  # dies while reading the batch of step 6 (of 8)
        pretrain(tmp_path / "killed", method, ToyVectors(crash_after=8 * 5))
    assert latest_checkpoint(tmp_path / "killed").name == "step_00000004"
    summary = pretrain(tmp_path / "killed", method)
    assert summary["start_step"] == 4
    whole = load_file(str(latest_checkpoint(tmp_path / "whole") / "model.safetensors"))
    resumed = load_file(str(latest_checkpoint(tmp_path / "killed") / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    if method == "mocov2":
        assert {"method.queue", "method.queue_ptr", "method.momentum_encoder.base.weight"} <= whole.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_several_descriptors_per_step_train_each_group_at_its_own_and_resume_exactly(tmp_path: Path) -> None:
    """descriptors_per_step=2 with a favoured all-on descriptor: each step's descriptors come from the run's
    distribution, the run trains, and a killed run resumes to the weights of an uninterrupted one."""
    changes = {"descriptors_per_step": 2, "all_on": 0.5}
    parts = parts_builder("simclr", toy_trainer(), ToyVectors(), **changes)(None)
    drawn = torch.cat([parts.model.descriptors(step) for step in range(200)])
    assert drawn.shape == (400, 2) and parts.model.batch_groups() == 2
    share_all_on = float((drawn.sum(1) == 2).float().mean())
    assert 0.5 < share_all_on < 0.75  # 0.5 + 0.5 / 4 = 0.625 expected; 400 draws give a std of 0.024
    trainer = toy_trainer()

    def run(run_dir: Path, dataset: ToyVectors) -> dict:
        return run_pretraining(run_dir, toy_config("simclr", trainer), trainer,
                               parts_builder("simclr", trainer, dataset, **changes))

    summary = run(tmp_path / "whole", ToyVectors())
    assert summary["final_step"] == 8
    labels = [json.loads(line).get("descriptor", "") for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    assert any(" | " in label for label in labels)  # each logged step names both descriptors
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(tmp_path / "killed", ToyVectors(crash_after=8 * 5))
    run(tmp_path / "killed", ToyVectors())
    whole = load_file(str(latest_checkpoint(tmp_path / "whole") / "model.safetensors"))
    resumed = load_file(str(latest_checkpoint(tmp_path / "killed") / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ConfigError, match="groups of at least 2"):
        odd = toy_trainer(batch_size=6)
        run_pretraining(tmp_path / "odd", toy_config("simclr", odd), odd,
                        parts_builder("simclr", odd, ToyVectors(), descriptors_per_step=4))
    with pytest.raises(ConfigError, match="simclr"):
        parts_builder("mocov2", trainer, ToyVectors(), descriptors_per_step=2)(None)


def test_moco_v2_queues_hold_only_keys_made_with_their_descriptor(tmp_path: Path) -> None:
    """After a run, a queue's written slots are exactly as many as the keys its descriptor's steps produced."""
    trainer = toy_trainer(steps=6, ckpt_every=6)
    parts = parts_builder("mocov2", trainer, ToyVectors(), queue_size=64)(None)
    method: MoCoV2 = parts.model.method
    steps_per_row = torch.zeros(len(method.descriptors), dtype=torch.long)
    for step in range(6):
        descriptor = parts.model.descriptor(step)
        steps_per_row[int(method.queue_index(descriptor))] += 1
    initial = method.queue.clone()
    run_pretraining(tmp_path, toy_config("mocov2", trainer), trainer, lambda info: parts)
    written = (method.queue != initial).any(dim=2).sum(dim=1)
    torch.testing.assert_close(written, steps_per_row * trainer.batch_size)
    torch.testing.assert_close(method.queue_ptr, (steps_per_row * trainer.batch_size) % 64)


def test_fewshot_episodes_learn_an_invariance_on_the_toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pretrain(tmp_path / "run", "simclr", steps=30, ckpt_every=30)
    encoder = load_encoder(tmp_path / "run")
    data = ToyVectors(size=120, classes=12, seed=3)
    inputs = data.items

    def rows(segments: torch.Tensor) -> torch.Tensor:
        return inputs[segments]

    episode_data = EpisodeData(SegmentPool(data.labels), rows, len(inputs), list(range(6)), list(range(6, 12)))
    evaluator = FewshotEvaluator(
        EpisodeConfig(ways=3, shots=2, queries=2, test_episodes=24, val_episodes=8), LearnerConfig(steps=20),
        FewshotSweepConfig(lrs=[0.05], invariance_lrs=[0.1]), episode_data, torch.device("cpu"),
    )
    import aiaudio.eval.fewshot as fewshot_module

    episode_sets = []
    real_run_episodes = fewshot_module.run_episodes

    def counted(encoder, pool, episodes, *args, **kwargs):
        episode_sets.append(len(episodes))
        return real_run_episodes(encoder, pool, episodes, *args, **kwargs)

    monkeypatch.setattr(fewshot_module, "run_episodes", counted)
    rows_out = evaluate_encoder(evaluator, encoder, ["all", "none"], "amortised")
    assert [row["readout"] for row in rows_out] == ["learned i", "i = all", "i = none"]
    assert episode_sets == [24, 24, 24]  # a one-setting sweep has nothing to choose: no validation episodes
    assert all(row["val_accuracy"] is None for row in rows_out)
    learned = rows_out[0]
    assert learned["episodes"] == 24 and len(learned["learned_i"]) == 2
    assert all(0.0 <= value <= 1.0 for value in learned["learned_i"])
    assert learned["learned_i"] != [0.5, 0.5]  # the descriptor moved from its start
    assert all(row["accuracy"] > 0.6 for row in rows_out)  # 3-way chance is 1/3; prototypes are far apart


def test_a_set_wide_invariance_chosen_on_validation_episodes_is_scored_on_the_test_episodes(tmp_path: Path) -> None:
    """``selected``: the mean invariance learned on validation episodes, and the best binary descriptor there, each
    fixed for every test episode; the binary choice is the candidate with the best validation accuracy."""
    pretrain(tmp_path / "run", "simclr", steps=30, ckpt_every=30)
    encoder = load_encoder(tmp_path / "run")
    data = ToyVectors(size=120, classes=12, seed=3)
    episode_data = EpisodeData(SegmentPool(data.labels), lambda s: data.items[s], len(data.items), list(range(6)),
                               list(range(6, 12)))
    evaluator = FewshotEvaluator(
        EpisodeConfig(ways=3, shots=2, queries=2, test_episodes=24, val_episodes=8), LearnerConfig(steps=20),
        FewshotSweepConfig(lrs=[0.05], invariance_lrs=[0.1]), episode_data, torch.device("cpu"),
    )
    rows = evaluate_encoder(evaluator, encoder, [], "amortised", selected=["learned", "binary"])
    learned, on_val, best = rows
    assert learned["readout"] == "learned i" and on_val["readout"] == "i = learned on validation"
    validation = evaluator.validation_invariance(
        AmortisedFeatures(encoder, episode_data.inputs), torch.full((2,), 0.5),
        LearnerConfig(steps=20, lr=0.05, invariance_lr=0.1))
    torch.testing.assert_close(torch.tensor(on_val["chosen_i"]), validation)  # the validation episodes' mean
    assert on_val["chosen_i"] != [0.5, 0.5] and on_val["episodes"] == 24
    scores = best["candidates"]
    assert len(scores) == len(encoder.space) and best["readout"].startswith("i = best on validation (")
    chosen = descriptor_label(encoder.space, torch.tensor(best["chosen_i"]))
    assert scores[chosen] == max(scores.values()) and best["readout"].endswith(f"({chosen})")
    table = format_table({"factors": list(encoder.space.names), "rows": rows})
    assert f"| {100 * on_val['chosen_i'][0]:.0f} |" in table
    with pytest.raises(ValueError, match="selected"):
        FewshotRunConfig(selected=["oracle"])


@pytest.mark.slow
@pytest.mark.parametrize("heads", ["shared head", "heads"])
def test_moco_v2_queues_on_two_gloo_ranks_hold_only_their_descriptors_keys(tmp_path: Path, heads: str):
    """Two ranks: each step's keys are gathered from both ranks and queued in that step's descriptor's queue only;
    the queues and weights of both ranks stay identical."""
    import os
    import subprocess
    import sys

    worker = Path(__file__).resolve().parent / "toy_ddp_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path),
               heads]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["seen"] == ranks[1]["seen"] and len(ranks[0]["seen"]) == 10
    assert all(count == 8 for _, count in ranks[0]["seen"])  # 4 keys per rank, gathered from both
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["queue_ptr"], ranks[1]["queue_ptr"], rtol=0, atol=0)
    for key, value in ranks[0]["weights"].items():
        torch.testing.assert_close(value, ranks[1]["weights"][key], rtol=0, atol=0, msg=key)
    descriptors = ranks[0]["descriptors"]
    expected = torch.zeros(len(descriptors), dtype=torch.long)
    for descriptor, count in ranks[0]["seen"]:
        row = next(i for i, d in enumerate(descriptors.tolist()) if d == descriptor)
        expected[row] += count
    torch.testing.assert_close(ranks[0]["queue_ptr"], expected % 128)
    assert (expected > 0).sum() > 1  # several descriptors were drawn


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_intact_one(tmp_path: Path, damage: str, caplog):
    pretrain(tmp_path / "run", "mocov2")
    latest = latest_checkpoint(tmp_path / "run")
    assert latest.name == "step_00000008" and (latest / "checksums.json").is_file()
    assert (latest / "model.safetensors").stat().st_mode & 0o777 == 0o644
    weights = latest / "model.safetensors"
    if damage == "bit flip":
        flip_a_byte(weights)
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with caplog.at_level("WARNING"):
        encoder = load_encoder(tmp_path / "run")  # the evaluation side falls back too
    assert encoder.source.name == "step_00000004"
    assert any("step_00000008 is damaged" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="damaged"):
        load_encoder(latest)  # named directly, a damaged checkpoint is refused
    summary = pretrain(tmp_path / "run", "mocov2", steps=12)
    assert summary["start_step"] == 4 and summary["final_step"] == 12


def test_resuming_with_more_steps_says_what_the_schedule_does(tmp_path: Path, caplog):
    pretrain(tmp_path / "run", "simclr")
    with caplog.at_level("WARNING"):
        pretrain(tmp_path / "run", "simclr", steps=12)
    assert any("trainer.steps changed from 8 to 12" in r.getMessage() and "schedule is recomputed" in r.getMessage()
               for r in caplog.records)


def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_where_an_uninterrupted_run_does(tmp_path: Path):
    from aiaudio.engine.trainer import TrainingStopped

    pretrain(tmp_path / "whole", "mocov2")
    with pytest.raises(TrainingStopped, match="after step 3 of 8"):  # the signal arrives while step 3 reads its batch
        pretrain(tmp_path / "stopped", "mocov2", ToyVectors(sigterm_after=8 * 2 + 1))
    assert latest_checkpoint(tmp_path / "stopped").name == "step_00000003"
    assert pretrain(tmp_path / "stopped", "mocov2")["start_step"] == 3
    whole = load_file(str(latest_checkpoint(tmp_path / "whole") / "model.safetensors"))
    resumed = load_file(str(latest_checkpoint(tmp_path / "stopped") / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_a_run_directory_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path: Path):
    import json
    import socket
    import subprocess
    import sys

    from aiaudio.engine.files import FolderInUseError, folder_lock

    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderInUseError, match=f"process {__import__('os').getpid()}"):
            pretrain(tmp_path / "run", "simclr")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(finished.stdout)}))
    assert pretrain(tmp_path / "run", "simclr")["final_step"] == 8  # a dead holder's lock is taken over
    assert not (tmp_path / "run" / ".lock").exists()  # and released at the end
    (tmp_path / "run" / ".lock").write_text(json.dumps({"host": "another-host", "pid": 1}))
    with pytest.raises(FolderInUseError, match="another-host"):
        pretrain(tmp_path / "run", "simclr", steps=10)


def test_an_unwritable_run_directory_is_refused_before_training(tmp_path: Path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot be written|Not a directory|not a directory"):
        pretrain(tmp_path / "a_file" / "run", "simclr")


def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    import shutil as shutil_module

    import aiaudio.engine.checkpoint as checkpoint_module
    from aiaudio.engine.checkpoint import CheckpointWriteError

    pretrain(tmp_path / "run", "simclr", steps=4, ckpt_every=4)

    def full_disk_save(obj, path, *args, **kwargs):  # what torch.save reports when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4310")

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk_save)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage._replace(free=1024))
    with pytest.raises(CheckpointWriteError, match="the disk is full") as error:
        pretrain(tmp_path / "run", "simclr", steps=8, ckpt_every=4)
    assert "step_00000004" in str(error.value) and "is intact" in str(error.value)
    assert latest_checkpoint(tmp_path / "run").name == "step_00000004"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))  # no partial checkpoint left behind


def test_moco_v2_with_a_head_per_descriptor_trains_only_the_steps_head_and_resumes_exactly(tmp_path: Path):
    trainer = toy_trainer(steps=1, ckpt_every=1)
    parts = parts_builder("mocov2", trainer, ToyVectors(), heads_per_descriptor=True)(None)
    method: MoCoV2 = parts.model.method
    assert len(method.projector) == len(method.descriptors) == 4 and method.unused_parameters_possible()
    before = [[p.detach().clone() for p in head.parameters()] for head in method.projector]
    row = int(method.queue_index(parts.model.descriptor(0)))
    run_pretraining(tmp_path / "one", toy_config("mocov2", trainer), trainer, lambda info: parts)
    changed = [any(not torch.equal(p, q) for p, q in zip(head.parameters(), old))
               for head, old in zip(method.projector, before)]
    assert changed == [index == row for index in range(4)]

    def heads_run(run: Path, dataset: ToyVectors) -> dict:
        full = toy_trainer()
        return run_pretraining(run, toy_config("mocov2-heads", full), full,
                               parts_builder("mocov2", full, dataset, heads_per_descriptor=True))

    heads_run(tmp_path / "whole", ToyVectors())
    with pytest.raises(RuntimeError, match="simulated kill"):
        heads_run(tmp_path / "killed", ToyVectors(crash_after=8 * 5))
    assert heads_run(tmp_path / "killed", ToyVectors())["start_step"] == 4
    whole = load_file(str(latest_checkpoint(tmp_path / "whole") / "model.safetensors"))
    resumed = load_file(str(latest_checkpoint(tmp_path / "killed") / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
