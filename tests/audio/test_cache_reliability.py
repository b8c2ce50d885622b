"""Waveform cache reliability: builds never hang (FIFOs, hung reads, dead workers) and never serve stale clips."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

import aiaudio.audio.cache as cache_module
from aiaudio.audio.cache import ClipEntry, WaveformCache, build_cache
from aiaudio.audio.io import read_audio

REPO_ROOT = Path(cache_module.__file__).resolve().parents[2]
CHILD_DEADLINE_S = 60  # a build that has not finished by then is hung; the fixed builds take a few seconds

#: Builds a cache from (entries, keyword arguments, trap) read on stdin and prints its failures and keys as JSON.
#: The trap wraps the decoder for the file named ``trap.wav``: "die" kills the process decoding it, "hang" sleeps.
_CHILD_SCRIPT = """
import json, os, pickle, signal, sys, time
import aiaudio.audio.cache as cache
entries, kwargs, trap = pickle.load(sys.stdin.buffer)
decode = cache.try_read_int16
def trapped(path, sample_rate=16000):
    if str(path).endswith("trap.wav"):
        if trap == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if trap == "hang":
            time.sleep(3600)
    return decode(path, sample_rate)
cache.try_read_int16 = trapped
report = cache.build_cache(entries, progress=False, **kwargs)
print(json.dumps({"failures": report.failures, "keys": cache.WaveformCache(kwargs["out_dir"]).keys}))
"""


def _build_in_child(entries: list[ClipEntry], trap: str = "", **kwargs) -> dict:
    """Run ``build_cache`` in a child process (its own process group, killed whole if it hangs)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(pickle.dumps((entries, kwargs, trap)), timeout=CHILD_DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"the cache build hung: still running after {CHILD_DEADLINE_S} s")
    assert child.returncode == 0, stderr.decode(errors="replace")
    return json.loads(stdout.decode().splitlines()[-1])


def _write_noise(path: Path, seconds: float, seed: int, rate: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    soundfile.write(path, np.clip(0.3 * rng.standard_normal(round(rate * seconds)), -1, 1), rate, subtype="PCM_16")
    return path


def _expected_int16(path: Path) -> np.ndarray:
    return np.round(np.clip(read_audio(path, 16000).astype(np.float64), -1, 1) * 32767).astype(np.int16)


@pytest.fixture()
def clips(tmp_path) -> list[ClipEntry]:
    audio = tmp_path / "audio"
    audio.mkdir()
    return [ClipEntry(f"clip{i}", _write_noise(audio / f"clip{i}.wav", 0.2 + 0.1 * i, seed=i)) for i in range(4)]


# ---------------------------------------------------------------------------------------------------------------
# Never hang
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fifo_in_the_data_is_reported_as_unreadable_and_the_build_completes(tmp_path, clips, workers):
    fifo = tmp_path / "audio" / "stream.wav"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes, i.e. forever
    entries = clips[:2] + [ClipEntry("stream", fifo, ("x",))] + clips[2:]
    started = time.monotonic()

    result = _build_in_child(entries, out_dir=str(tmp_path / "cache"), workers=workers)

    assert time.monotonic() - started < 30
    assert [tuple(failure)[0] for failure in result["failures"]] == [str(fifo)]
    assert "FIFO" in result["failures"][0][1]
    assert result["keys"] == [entry.key for entry in clips]
    table = (tmp_path / "cache" / "failures.tsv").read_text().splitlines()
    assert table[1].split("\t")[0] == str(fifo)


def test_a_worker_that_dies_is_named_and_the_build_goes_on(tmp_path, clips):
    trap = Path(clips[0].path).with_name("trap.wav")
    trap.write_bytes(Path(clips[1].path).read_bytes())
    entries = clips[:2] + [ClipEntry("trap", trap, ())] + clips[2:]

    result = _build_in_child(entries, trap="die", out_dir=str(tmp_path / "cache"), workers=2)

    assert len(result["failures"]) == 1
    path, reason = result["failures"][0]
    assert path == str(trap) and "worker died" in reason and "SIGKILL" in reason
    assert result["keys"] == [entry.key for entry in clips]
    cache = WaveformCache(tmp_path / "cache")
    for index, entry in enumerate(clips):  # the clips after the lost one are in place, in order
        np.testing.assert_array_equal(cache.clip(index), _expected_int16(entry.path))


def test_a_file_whose_read_hangs_times_out_and_is_named(tmp_path, clips):
    trap = Path(clips[0].path).with_name("trap.wav")
    trap.write_bytes(Path(clips[1].path).read_bytes())
    entries = [clips[0], ClipEntry("trap", trap, ())] + clips[1:]
    started = time.monotonic()

    result = _build_in_child(entries, trap="hang", out_dir=str(tmp_path / "cache"), workers=2, file_timeout=5.0)

    assert time.monotonic() - started < 30
    assert len(result["failures"]) == 1
    path, reason = result["failures"][0]
    assert path == str(trap) and "did not finish within 5 s" in reason
    assert result["keys"] == [entry.key for entry in clips]


def test_file_timeout_must_be_positive(tmp_path, clips):
    with pytest.raises(ValueError, match="file_timeout"):
        build_cache(clips, tmp_path / "cache", workers=0, progress=False, file_timeout=0)


# ---------------------------------------------------------------------------------------------------------------
# Never stale
# ---------------------------------------------------------------------------------------------------------------


def _bump_mtime(path: Path) -> None:
    """Move the modification time a few seconds on, as a later write would (coarse clocks cannot hide it)."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 5_000_000_000))


def test_a_changed_file_makes_the_next_build_decode_again(tmp_path, clips):
    out = tmp_path / "cache"
    build_cache(clips, out, workers=0, progress=False)
    target = Path(clips[2].path)
    soundfile.write(target, np.zeros(round(16000 * 0.4)), 16000, subtype="PCM_16")  # same name, now silence
    _bump_mtime(target)

    again = build_cache(clips, out, workers=0, progress=False)

    assert not again.skipped and str(target) in again.rebuilt_because and "rebuilt" in again.summary()
    cache = WaveformCache(out)
    np.testing.assert_array_equal(cache.clip(2), np.zeros(round(16000 * 0.4), dtype=np.int16))
    for index in (0, 1, 3):
        np.testing.assert_array_equal(cache.clip(index), _expected_int16(clips[index].path))
    assert build_cache(clips, out, workers=0, progress=False).skipped  # and now it is up to date


def test_a_repaired_file_is_decoded_on_the_next_build(tmp_path, clips):
    out = tmp_path / "cache"
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"not audio" * 50)
    absent = tmp_path / "audio" / "absent.wav"
    entries = clips + [ClipEntry("broken", broken, ()), ClipEntry("absent", absent, ())]
    first = build_cache(entries, out, workers=0, progress=False)
    assert {path for path, _ in first.failures} == {str(broken), str(absent)}
    assert build_cache(entries, out, workers=0, progress=False).skipped  # nothing changed: nothing decoded

    _write_noise(broken, 0.5, seed=11)
    _bump_mtime(broken)
    repaired = build_cache(entries, out, workers=0, progress=False)

    assert not repaired.skipped and [path for path, _ in repaired.failures] == [str(absent)]
    cache = WaveformCache(out)
    np.testing.assert_array_equal(cache.clip(cache.index_of("broken")), _expected_int16(broken))
    assert (out / "failures.tsv").read_text().count("broken.wav") == 0

    _write_noise(absent, 0.3, seed=12)  # a file that was missing appears
    appeared = build_cache(entries, out, workers=0, progress=False)
    assert not appeared.skipped and appeared.failures == [] and len(WaveformCache(out)) == len(entries)


def test_a_cache_without_file_records_is_rebuilt(tmp_path, clips):
    """A cache written before sizes and times were recorded cannot vouch for its files: the next build decodes."""
    out = tmp_path / "cache"
    build_cache(clips, out, workers=0, progress=False)
    with np.load(out / "index.npz", allow_pickle=False) as index:
        arrays = {name: index[name] for name in index.files if name != "source_signatures"}
    np.savez(out / "index.npz", **arrays)
    assert len(WaveformCache(out)) == len(clips)  # still readable as a cache

    again = build_cache(clips, out, workers=0, progress=False)

    assert not again.skipped and "older version" in again.rebuilt_because
    assert build_cache(clips, out, workers=0, progress=False).skipped
