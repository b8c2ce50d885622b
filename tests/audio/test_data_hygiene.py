"""Data hygiene of the waveform cache: nothing is left out unseen, nothing outside the data folder is read, odd clips
are named, hopeless corpora stop at the cache step, and builds on shared storage leave each other alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import aiaudio.audio.cache as cache_module
from aiaudio.audio.cache import CacheError, ClipEntry, WaveformCache, build_cache
from aiaudio.audio.datasets import csv_entries, folder_entries, fsd50k_entries
from aiaudio.audio.frontend import LogMel, LogMelConfig, compute_stats

RATE = 16000


def _noise(path: Path, seconds: float = 0.5, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = 0.2 * np.random.default_rng(seed).standard_normal(int(RATE * seconds))
    soundfile.write(path, wave, RATE, subtype="PCM_16")
    return path


def _broken_names(folder: Path) -> dict[str, Path]:
    """A dangling link, a two-link loop and a folder named like a WAV file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dangling, loop_a, loop_b, directory = (folder / n for n in ("dangling.wav", "loop_a.wav", "loop_b.wav", "dir.wav"))
    dangling.symlink_to(folder / "gone.wav")
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    directory.mkdir()
    return {"dangling": dangling, "loop_a": loop_a, "loop_b": loop_b, "dir": directory}


def _reasons(report) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in report.failures}


def _assert_broken_named(report, out: Path) -> None:
    reasons = _reasons(report)
    assert "dangling symbolic link" in reasons["dangling.wav"]
    assert "symbolic link loop" in reasons["loop_a.wav"] and "symbolic link loop" in reasons["loop_b.wav"]
    assert "directory" in reasons["dir.wav"]
    table = (out / "failures.tsv").read_text()
    for name in ("dangling.wav", "loop_a.wav", "loop_b.wav", "dir.wav"):
        assert name in table
    assert "4 unreadable" in report.summary()


def test_folder_scan_names_dangling_links_loops_and_wav_folders(tmp_path):
    root = tmp_path / "data"
    _noise(root / "dog" / "bark.wav")
    _broken_names(root / "odd")
    entries = folder_entries(root)
    assert {entry.key for entry in entries} >= {"odd/dangling.wav", "odd/loop_a.wav", "odd/loop_b.wav", "odd/dir.wav"}
    out = tmp_path / "cache"
    report = build_cache(entries, out, workers=0, progress=False)
    assert report.num_clips == 1
    _assert_broken_named(report, out)


def test_fsd50k_layout_names_dangling_links_loops_and_wav_folders(tmp_path):
    root = tmp_path / "fsd50k"
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    (truth / "vocabulary.csv").write_text("0,Bark,/m/05tny_\n")
    names = ["good", "dangling", "loop_a", "loop_b", "dir"]
    (truth / "dev.csv").write_text("fname,labels,mids,split\n" + "".join(f"{n},Bark,/m/05tny_,train\n" for n in names))
    audio = root / "FSD50K.dev_audio"
    _noise(audio / "good.wav")
    _broken_names(audio)
    out = tmp_path / "cache"
    report = build_cache(fsd50k_entries(root, "train"), out, workers=0, progress=False)
    assert report.num_clips == 1
    _assert_broken_named(report, out)


def test_csv_paths_outside_the_data_folder_are_refused_unopened(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _noise(data / "inside.wav")
    outside = _noise(tmp_path / "secret" / "outside.wav", seed=1)
    (data / "link.wav").symlink_to(outside)
    listing = data / "clips.csv"
    listing.write_text(f"path,label\ninside.wav,a\n../secret/outside.wav,b\n{outside},c\nlink.wav,d\n")
    entries = csv_entries(listing)
    # A listed path that leads outside is refused; a link inside the folder is followed (data folders often link
    # their files from another disk).
    assert [bool(entry.problem) for entry in entries] == [False, True, True, False]

    opened: list[str] = []
    decode = cache_module.try_read_int16

    def recording(path, sample_rate=16000):
        opened.append(str(path))
        return decode(path, sample_rate)

    monkeypatch.setattr(cache_module, "try_read_int16", recording)
    out = tmp_path / "cache"
    report = build_cache(entries, out, workers=0, progress=False)
    assert opened == [str(data / "inside.wav"), str(data / "link.wav")], "a path outside the data folder was opened"
    assert report.num_clips == 2 and report.num_failed == 2
    assert all("outside the data folder" in reason for _, reason in report.failures)
    assert (out / "failures.tsv").read_text().count("outside the data folder") == 2


def test_an_fsd50k_fname_that_leads_outside_is_refused(tmp_path):
    from aiaudio.audio.datasets import fsd50k_entries

    root = tmp_path / "FSD50K"
    (root / "FSD50K.dev_audio").mkdir(parents=True)
    (root / "FSD50K.ground_truth").mkdir()
    (root / "FSD50K.ground_truth" / "vocabulary.csv").write_text("0,Dog,/m/0bt9lr\n")
    (root / "FSD50K.ground_truth" / "dev.csv").write_text("fname,labels,mids,split\n1,Dog,/m/0bt9lr,train\n"
                                                          "../../outside,Dog,/m/0bt9lr,train\n")
    entries = fsd50k_entries(root, "train")
    assert [bool(entry.problem) for entry in entries] == [False, True]
    assert "outside the data folder" in entries[1].problem


def test_truncated_silent_single_sample_and_clipped_clips_are_named_and_counted(tmp_path):
    folder = tmp_path / "audio"
    ok = _noise(folder / "ok.wav")
    full = tmp_path / "full.wav"
    soundfile.write(full, 0.1 * np.ones(2 * RATE), RATE, subtype="PCM_16")  # header: 32000 samples
    truncated = folder / "truncated.wav"
    truncated.write_bytes(full.read_bytes()[: 44 + 2 * 500])
    silent = folder / "silent.wav"
    soundfile.write(silent, np.zeros(RATE // 2), RATE, subtype="PCM_16")
    single = folder / "single.wav"
    soundfile.write(single, np.array([0.3]), RATE, subtype="PCM_16")
    clipped = folder / "clipped.wav"
    square = np.sign(np.sin(np.linspace(0, 60 * np.pi, RATE // 2))) * 1.0
    soundfile.write(clipped, square, RATE, subtype="PCM_16")
    entries = [ClipEntry(p.stem, p) for p in (ok, truncated, silent, single, clipped)]
    out = tmp_path / "cache"
    report = build_cache(entries, out, workers=0, progress=False)

    assert report.num_clips == 5 and report.num_failed == 0  # kept, but reported
    notes = {Path(path).name: note for path, note in report.warnings}
    assert set(notes) == {"truncated.wav", "silent.wav", "single.wav", "clipped.wav"}
    assert "header says 32000 samples, file holds 500" in notes["truncated.wav"]
    assert "silent" in notes["silent.wav"]
    assert "1 sample" in notes["single.wav"]
    assert "clipped" in notes["clipped.wav"]
    assert "4 suspicious" in report.summary()
    table = (out / "warnings.tsv").read_text()
    assert "truncated.wav" in table and "header says 32000 samples, file holds 500" in table
    assert json.loads((out / "meta.json").read_text())["num_warnings"] == 4
    again = build_cache(entries, out, workers=0, progress=False)
    assert again.skipped and again.num_warnings == 4


def test_all_silent_or_all_unreadable_corpus_stops_at_the_cache_step(tmp_path):
    silent = []
    for index in range(3):
        path = tmp_path / "silent" / f"{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, np.zeros(RATE // 4), RATE, subtype="PCM_16")
        silent.append(ClipEntry(str(index), path))
    out = tmp_path / "cache"
    with pytest.raises(CacheError, match="every one of the 3 readable clip.*silent"):
        build_cache(silent, out, workers=0, progress=False)
    assert not out.exists()

    broken = []
    for index in range(5):
        path = tmp_path / "broken" / f"{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not audio" * 20)
        broken.append(ClipEntry(str(index), path))
    with pytest.raises(CacheError, match="every one of the 5 listed file.*unreadable") as raised:
        build_cache(broken, out, workers=0, progress=False)
    assert str(broken[0].path) in str(raised.value) and "not a decodable audio file" in str(raised.value)
    assert "2 more" in str(raised.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_stats_errors_say_which_data_and_what_to_do():
    frontend = LogMel(LogMelConfig())
    with pytest.raises(ValueError, match="silent.*aiaudio cache"):
        frontend.set_stats(-100.0, 0.0)
    with pytest.raises(ValueError, match="empty.*aiaudio cache.*failures.tsv"):
        compute_stats(frontend, [])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _partial(parent: Path, pid: int, tag: str, host: str | None) -> Path:
    folder = parent / f".cache.partial-{pid}-{tag}"
    folder.mkdir()
    (folder / "waves.int16").write_bytes(b"\0\0")
    if host is not None:
        (folder / ".lock").write_text(json.dumps({"host": host, "pid": pid}))
    return folder


def test_partial_builds_of_other_hosts_and_live_processes_are_kept(tmp_path):
    entries = [ClipEntry("ok", _noise(tmp_path / "audio" / "ok.wav"))]
    dead = _dead_pid()
    here = socket.gethostname()
    other_host = _partial(tmp_path, dead, "aaaaaaaa", "another-host.example")
    live_here = _partial(tmp_path, os.getppid(), "bbbbbbbb", here)
    dead_here = _partial(tmp_path, dead, "cccccccc", here)
    report = build_cache(entries, tmp_path / "cache", workers=0, progress=False)
    assert report.num_clips == 1 and len(WaveformCache(tmp_path / "cache")) == 1
    assert other_host.exists(), "the partial build of another host was deleted"
    assert live_here.exists(), "the partial build of a live process was deleted"
    assert not dead_here.exists(), "a stale partial build of this host was kept"
    assert not (tmp_path / "cache" / ".lock").exists()


@pytest.mark.parametrize("holder", ["other-host", "this-host-live"])
def test_a_live_build_lock_is_refused_naming_host_and_pid(tmp_path, holder):
    entries = [ClipEntry("ok", _noise(tmp_path / "audio" / "ok.wav"))]
    host, pid = ("builder-7.cluster", 4242) if holder == "other-host" else (socket.gethostname(), os.getppid())
    lock = tmp_path / ".cache.lock" / ".lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": host, "pid": pid}))
    with pytest.raises(CacheError, match=f"process {pid} on host {host}"):
        build_cache(entries, tmp_path / "cache", workers=0, progress=False)
    assert not (tmp_path / "cache").exists() and lock.exists()
    lock.unlink()
    assert build_cache(entries, tmp_path / "cache", workers=0, progress=False).num_clips == 1
