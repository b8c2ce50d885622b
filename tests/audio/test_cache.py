"""Waveform cache: build, failures, atomic publication, idempotence, memmap reading and reproducible crops."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import aiaudio.audio.cache as cache_module
from aiaudio.audio.cache import CacheError, ClipEntry, CropDataset, WaveformCache, build_cache, int16_to_float
from aiaudio.audio.io import read_audio

REPO_ROOT = Path(cache_module.__file__).resolve().parents[2]


def _expected_int16(path: Path) -> np.ndarray:
    """int16 samples the cache must hold: clip to [-1, 1], times 32767, round half to even."""
    return np.round(np.clip(read_audio(path, 16000).astype(np.float64), -1, 1) * 32767).astype(np.int16)


@pytest.fixture()
def fixture_entries(tmp_path) -> tuple[list[ClipEntry], list[ClipEntry], dict[str, Path]]:
    """Readable files at several rates and formats, plus a corrupt and a missing file.

    Returns:
        (all entries, the readable ones, bad key -> path).
    """
    rng = np.random.default_rng(7)
    audio = tmp_path / "audio"
    audio.mkdir()
    readable = [
        ("long_stereo", "long_stereo.wav", 44100, 2, 1.3, ("dog", "bark")),
        ("short_flac", "short.flac", 16000, 1, 0.3, ("cat",)),
        ("mid_22k", "mid.wav", 22050, 1, 0.9, ()),
        ("exact_16k", "exact.wav", 16000, 1, 1.1, ("dog",)),
    ]
    entries = []
    for key, name, rate, channels, seconds, labels in readable:
        noise = 0.3 * rng.standard_normal((round(rate * seconds), channels))
        soundfile.write(audio / name, np.clip(noise, -1, 1), rate, subtype="PCM_16")
        entries.append(ClipEntry(key, audio / name, labels))
    corrupt = audio / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all" * 40)
    missing = audio / "missing.wav"
    bad = {"corrupt": corrupt, "missing": missing}
    all_entries = entries[:2] + [ClipEntry("corrupt", corrupt, ("x",))] + entries[2:3]
    all_entries += [ClipEntry("missing", missing, ())] + entries[3:]
    return all_entries, entries, bad


def test_build_counts_failures_and_round_trips_readable_clips(tmp_path, fixture_entries):
    all_entries, readable, bad = fixture_entries
    out = tmp_path / "cache"

    report = build_cache(all_entries, out, workers=2, progress=False, source="fixture")

    assert not report.skipped
    assert (report.num_entries, report.num_clips, report.num_failed) == (6, 4, 2)
    assert {path for path, _ in report.failures} == {str(p) for p in bad.values()}
    reasons = dict(report.failures)
    assert "not found" in reasons[str(bad["missing"])] and "decodable" in reasons[str(bad["corrupt"])]
    assert "4 of 6 clips" in report.summary() and "2 unreadable" in report.summary()
    table = (out / "failures.tsv").read_text().splitlines()
    assert table[0] == "path\treason" and {row.split("\t")[0] for row in table[1:]} == set(reasons)

    cache = WaveformCache(out)
    assert len(cache) == 4 and cache.sample_rate == 16000
    assert cache.keys == [entry.key for entry in readable]
    assert cache.labels == [entry.labels for entry in readable]
    for index, entry in enumerate(readable):
        expected = _expected_int16(entry.path)
        clip = cache.clip(index)
        assert clip.dtype == np.int16 and not clip.flags.writeable and np.shares_memory(clip, cache.waves)
        np.testing.assert_array_equal(clip, expected)
        assert cache.lengths[index] == expected.shape[0]
    assert cache.lengths.tolist() == [round(1.3 * 16000), round(0.3 * 16000), round(0.9 * 16000), round(1.1 * 16000)]
    assert cache.meta["total_samples"] == int(cache.lengths.sum()) and cache.meta["source"] == "fixture"
    assert (out / "waves.int16").stat().st_size == 2 * int(cache.lengths.sum())
    assert cache.index_of("mid_22k") == 2
    with pytest.raises(IndexError, match="out of range"):
        cache.clip(4)

    serial = build_cache(all_entries, tmp_path / "serial", workers=0, progress=False)
    assert serial.num_clips == 4
    assert (tmp_path / "serial" / "waves.int16").read_bytes() == (out / "waves.int16").read_bytes()


def test_interrupted_build_never_looks_like_a_cache(tmp_path, fixture_entries):
    """A build killed mid-way (blocked in decoding one file, then SIGKILLed) leaves nothing that opens as a cache.

    A FIFO itself is refused without being opened, so the child blocks by reading a FIFO (the gate) from a wrapped
    decoder when it reaches the entry ``blocking.wav``, a regular file.
    """
    _, readable, _ = fixture_entries
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    blocking = tmp_path / "audio" / "blocking.wav"
    blocking.write_bytes(readable[0].path.read_bytes())
    entries = readable[:2] + [ClipEntry("blocking", blocking, ())] + readable[2:]
    out = tmp_path / "cache"
    script = (
        "import pickle, sys\n"
        "import aiaudio.audio.cache as cache\n"
        "decode = cache.try_read_int16\n"
        "def gated(path, sample_rate=16000):\n"
        "    if str(path).endswith('blocking.wav'):\n"
        "        open(sys.argv[2], 'rb').read()\n"
        "    return decode(path, sample_rate)\n"
        "cache.try_read_int16 = gated\n"
        "cache.build_cache(pickle.load(sys.stdin.buffer), sys.argv[1], workers=0, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", script, str(out), str(fifo)], stdin=subprocess.PIPE, env=env)
    writer_fd = None
    try:
        child.stdin.write(pickle.dumps(entries))
        child.stdin.close()
        deadline = time.monotonic() + 60
        while writer_fd is None:  # opening the write end succeeds only once the build has opened the FIFO to read
            assert child.poll() is None, "the build exited before reaching the blocking entry"
            assert time.monotonic() < deadline, "the build never reached the blocking entry"
            try:
                writer_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)
        partials = [p for p in tmp_path.iterdir() if p.name.startswith(".cache.partial-")]
        assert len(partials) == 1 and (partials[0] / "waves.int16").exists()
        assert not out.exists()
        for folder in (partials[0], out):
            with pytest.raises(CacheError, match="aiaudio cache"):
                WaveformCache(folder)
        child.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        if writer_fd is not None:
            os.close(writer_fd)

    assert not out.exists()
    report = build_cache(readable, out, workers=0, progress=False)
    assert report.num_clips == 4 and len(WaveformCache(out)) == 4
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name], "stale partial build was not removed"


def test_rebuild_is_idempotent_and_overwrite_is_explicit(tmp_path, fixture_entries):
    all_entries, readable, _ = fixture_entries
    out = tmp_path / "cache"
    first = build_cache(all_entries, out, workers=0, progress=False)
    inode = (out / "waves.int16").stat().st_ino
    meta_before = (out / "meta.json").read_text()

    again = build_cache(all_entries, out, workers=0, progress=False)

    assert again.skipped and again.num_clips == first.num_clips and again.failures == first.failures
    assert (out / "waves.int16").stat().st_ino == inode and (out / "meta.json").read_text() == meta_before

    forced = build_cache(all_entries, out, workers=0, progress=False, overwrite=True)
    assert not forced.skipped and (out / "waves.int16").stat().st_ino != inode

    with pytest.raises(CacheError, match="overwrite"):
        build_cache(readable[:2], out, workers=0, progress=False)
    with pytest.raises(CacheError, match="overwrite"):
        build_cache(all_entries, out, sample_rate=8000, workers=0, progress=False)
    relabelled = [ClipEntry(e.key, e.path, ("other",)) for e in all_entries]
    with pytest.raises(CacheError, match="overwrite"):
        build_cache(relabelled, out, workers=0, progress=False)
    replaced = build_cache(readable[:2], out, workers=0, progress=False, overwrite=True)
    assert replaced.num_clips == 2 and WaveformCache(out).keys == [e.key for e in readable[:2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "cache"]  # no temporary folders left


def test_build_refuses_bad_targets_and_duplicate_keys(tmp_path, fixture_entries):
    _, readable, _ = fixture_entries
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(CacheError, match="not a valid waveform cache"):
            build_cache(readable, precious, workers=0, progress=False, overwrite=overwrite)
    assert (precious / "notes.txt").read_text() == "keep me"
    damaged = tmp_path / "damaged"
    build_cache(readable, damaged, workers=0, progress=False)
    with open(damaged / "waves.int16", "r+b") as waves:
        waves.truncate(1000)
    with pytest.raises(CacheError, match="inconsistent"):
        WaveformCache(damaged)
    with pytest.raises(CacheError, match="not a valid waveform cache"):
        build_cache(readable, damaged, workers=0, progress=False)
    assert build_cache(readable, damaged, workers=0, progress=False, overwrite=True).num_clips == 4
    assert len(WaveformCache(damaged)) == 4
    duplicate = readable + [ClipEntry(readable[0].key, readable[1].path, ())]
    with pytest.raises(CacheError, match=f"duplicate clip key '{readable[0].key}'"):
        build_cache(duplicate, tmp_path / "dup", workers=0, progress=False)


def test_opening_a_folder_that_is_not_a_cache_names_the_problem(tmp_path):
    with pytest.raises(CacheError, match=r"does not exist; run `aiaudio cache`"):
        WaveformCache(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match=r"meta.json is missing; run `aiaudio cache`"):
        WaveformCache(tmp_path / "empty")


@pytest.fixture()
def built_cache(tmp_path, fixture_entries) -> WaveformCache:
    _, readable, _ = fixture_entries
    build_cache(readable, tmp_path / "cache", workers=0, progress=False)
    return WaveformCache(tmp_path / "cache")


def test_crops_are_windows_of_long_clips_and_reproducible(built_cache):
    crop = 8000
    dataset = CropDataset(built_cache, crop)
    clip = np.asarray(built_cache.clip(0))  # 20800 samples of noise
    windows = np.lib.stride_tricks.sliding_window_view(clip, crop)
    starts = []
    for seed in range(12):
        sample = dataset[(0, seed)]
        assert sample.dtype == torch.int16 and sample.shape == (crop,)
        matches = np.flatnonzero((windows == sample.numpy()).all(axis=1))
        assert matches.size == 1
        starts.append(int(matches[0]))
        assert torch.equal(sample, dataset[(0, seed)])
        assert torch.equal(sample, CropDataset(WaveformCache(built_cache.directory), crop)[(0, seed)])
    assert len(set(starts)) >= 8, f"crop positions barely vary with the seed: {starts}"


def test_short_clips_are_tiled_from_a_random_phase(built_cache):
    crop = 12000
    dataset = CropDataset(built_cache, crop)
    clip = np.asarray(built_cache.clip(1))  # 4800 samples, shorter than the crop
    length = clip.shape[0]
    tiled = np.tile(clip, crop // length + 2)
    phases = []
    for seed in range(10):
        sample = dataset[(1, seed)].numpy()
        candidates = np.lib.stride_tricks.sliding_window_view(tiled, crop)[:length]
        matches = np.flatnonzero((candidates == sample).all(axis=1))
        assert matches.size == 1, "a short clip's crop must be the clip tiled end to end from some phase"
        phases.append(int(matches[0]))
    assert len(set(phases)) >= 7, f"tiling phase barely varies with the seed: {phases}"


def test_crop_dataset_rejects_bad_keys(built_cache):
    dataset = CropDataset(built_cache, 100)
    assert len(dataset) == 4
    with pytest.raises(TypeError, match=r"\(index, seed\)"):
        dataset[0]
    with pytest.raises(IndexError, match="out of range"):
        dataset[(4, 0)]
    with pytest.raises(ValueError, match="non-negative"):
        dataset[(0, -1)]


def test_dataloader_with_two_workers_matches_direct_reads(built_cache):
    dataset = CropDataset(built_cache, 6000)
    built_cache.clip(0)  # the map is open in this process; it must not travel to the workers
    assert len(pickle.dumps(built_cache)) < 20000 < built_cache.waves.nbytes
    keys = [(index % 4, 1000 + index) for index in range(12)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=keys, num_workers=2)

    batches = torch.cat(list(loader))

    assert batches.shape == (12, 6000) and batches.dtype == torch.int16
    assert torch.equal(batches, torch.stack([dataset[key] for key in keys]))


def test_int16_to_float_inverts_the_cache_scaling():
    samples = torch.tensor([[-32767, 0, 32767], [12345, -1, 1]], dtype=torch.int16)
    converted = int16_to_float(samples)
    assert converted.dtype == torch.float32
    expected = np.array([[-32767, 0, 32767], [12345, -1, 1]], dtype=np.float64) / 32767.0
    np.testing.assert_allclose(converted.numpy(), expected, rtol=1e-7)
    with pytest.raises(TypeError, match="int16"):
        int16_to_float(samples.float())
