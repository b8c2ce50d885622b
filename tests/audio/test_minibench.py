"""The real-audio mini benchmark scripts (benchmarks/minibench): building the sets from unpacked packages, rendering
the instrument notes, the results table and one whole run, all on small trees written here (no network, no apt)."""

from __future__ import annotations

import csv
import ctypes.util
import importlib.util
import io
import json
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from aiaudio.audio.datasets import fsd50k_entries, fsd50k_vocabulary
from aiaudio.audio.io import write_audio
from aiaudio.audio.metaaudio import esc50_entries, nsynth_entries
from aiaudio.audio.synthetic import generate_synthetic
from aiaudio.config import ConfigError
from benchmarks.minibench import build, curves, render, run
from benchmarks.minibench.build import (
    BuildError,
    DecodeCounts,
    RenderPlan,
    SourceFile,
    audio_sources,
    build_set,
    cut_clips,
    decoded_unique,
    event_class,
    split_of,
    write_esc50_set,
    write_fsd50k_corpus,
)

RATE = 16000
#: Where a built mini benchmark keeps its unpacked packages (the FluidSynth test uses the soundfont and runtime there):
#: the build's default output folder, or ``MINIBENCH_PACKAGES``.
PACKAGES = Path(os.environ.get("MINIBENCH_PACKAGES", Path(__file__).resolve().parents[2] / "data/minibench/packages"))
SOUNDFONT = PACKAGES / "timgm6mb-soundfont" / "usr" / "share" / "sounds" / "sf2" / "TimGM6mb.sf2"
FLUIDSYNTH_RUNTIME = PACKAGES / "fluidsynth-runtime"


def tone(freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, wave: np.ndarray, rate: int = RATE, **kwargs) -> Path:
    """Write ``wave`` with soundfile (format from the suffix unless given), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, **kwargs)
    return path


def ogg_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


def peak_hz(wave: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------------------------------------------------------
# Source files
# ---------------------------------------------------------------------------------------------------------------


def test_audio_sources_finds_files_and_archive_members_in_name_order(tmp_path):
    package = tmp_path / "packages" / "ufoai-sound"
    sounds = package / "usr" / "share" / "ufoai" / "sounds"
    for name in ("beta.WAV", "alpha.flac"):
        write(sounds / name, tone(440, 0.5))
    write(sounds / "gamma.Aiff", tone(440, 0.5), format="AIFF")
    write(sounds / "sub" / "delta.AIF", tone(440, 0.5), format="AIFF")
    (sounds / "readme.txt").write_text("not audio")
    (sounds / "cover.png").write_bytes(b"\x89PNG")
    member_bytes = {"sound/zeta.ogg": ogg_bytes(tone(330, 0.5)), "sound/eta.OGG": ogg_bytes(tone(220, 0.5))}
    archive = package / "usr" / "share" / "ufoai" / "base" / "0sound.pk3"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("sound/", b"")  # a folder entry
        for member, data in member_bytes.items():
            zipped.writestr(member, data)
        zipped.writestr("sound/licence.txt", "text")

    sources = audio_sources("ufoai-sound", package)

    assert [source.name for source in sources] == [
        "usr/share/ufoai/base/0sound.pk3:sound/eta.OGG",
        "usr/share/ufoai/base/0sound.pk3:sound/zeta.ogg",
        "usr/share/ufoai/sounds/alpha.flac",
        "usr/share/ufoai/sounds/beta.WAV",
        "usr/share/ufoai/sounds/gamma.Aiff",
        "usr/share/ufoai/sounds/sub/delta.AIF",
    ]
    assert all(source.package == "ufoai-sound" for source in sources)
    assert sources[0].read_bytes() == member_bytes["sound/eta.OGG"]
    assert sources[3].read_bytes() == (sounds / "beta.WAV").read_bytes()


def test_audio_sources_rejects_a_corrupt_archive(tmp_path):
    package = tmp_path / "ufoai-sound"
    bad = package / "base" / "broken.pk3"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(BuildError, match="broken.pk3"):
        audio_sources("ufoai-sound", package)


def test_decoded_unique_counts_duplicates_silence_short_and_unreadable_files(tmp_path, caplog):
    package = tmp_path / "packages" / "sonic-pi-samples"
    folder = package / "usr" / "share" / "samples"
    fast = write(folder / "tone44k.wav", tone(440, 1.5, rate=44100), rate=44100, subtype="PCM_16")
    (folder / "copy.wav").write_bytes(fast.read_bytes())
    write(folder / "silent.wav", np.zeros(RATE, dtype=np.float32))
    write(folder / "short.wav", tone(440, 0.1))
    (folder / "broken.ogg").write_bytes(b"OggS but not really an ogg vorbis stream" * 10)
    write(folder / "other.flac", tone(1000, 1.0))
    archive = folder / "more.pk3"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.ogg", ogg_bytes(tone(300, 0.8)))
    names = ["tone44k.wav", "copy.wav", "silent.wav", "short.wav", "broken.ogg", "other.flac"]
    sources = [SourceFile("sonic-pi-samples", package, folder / name) for name in names]
    sources.append(SourceFile("sonic-pi-samples", package, archive, "a.ogg"))

    counts = DecodeCounts()
    with caplog.at_level(logging.WARNING, logger="minibench.build"):
        kept = dict((source.name, wave) for source, wave in decoded_unique(sources, counts, "test"))

    assert counts.as_dict() == {"files": 7, "duplicates": 1, "unreadable": 1, "silent": 1, "too_short": 1}
    assert sorted(kept) == ["usr/share/samples/more.pk3:a.ogg", "usr/share/samples/other.flac",
                            "usr/share/samples/tone44k.wav"]
    assert any("broken.ogg" in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    resampled = kept["usr/share/samples/tone44k.wav"]
    assert resampled.dtype == np.float32 and abs(resampled.shape[0] - 1.5 * RATE) <= 2
    assert abs(peak_hz(resampled) - 440) < 2  # the same tone at the new rate
    assert abs(kept["usr/share/samples/other.flac"].shape[0] - RATE) <= 1
    assert abs(peak_hz(kept["usr/share/samples/more.pk3:a.ogg"]) - 300) < 3


# ---------------------------------------------------------------------------------------------------------------
# Pretraining corpus (FSD50K layout)
# ---------------------------------------------------------------------------------------------------------------


def test_cut_clips_edges():
    wave = np.arange(10)
    assert [piece.tolist() for piece in cut_clips(wave, 4, 3)] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # last piece of 2 dropped
    assert [len(piece) for piece in cut_clips(wave, 4, 2)] == [4, 4, 2]
    assert [len(piece) for piece in cut_clips(np.arange(8), 4, 3)] == [4, 4]
    assert [piece.tolist() for piece in cut_clips(np.arange(2), 4, 3)] == [[0, 1]]  # a single short piece stays


def test_split_of_is_deterministic_and_holds_out_about_val_fraction():
    names = [f"package-{index % 7}:usr/share/sounds/file_{index}.ogg" for index in range(2000)]
    first = [split_of(name) for name in names]
    assert first == [split_of(name) for name in names]
    assert set(first) == {"train", "val"}
    assert 0.07 <= first.count("val") / len(names) <= 0.13
    assert {split_of(name, 0.0) for name in names} == {"train"}
    assert {split_of(name, 1.0) for name in names} == {"val"}


def test_fsd50k_corpus_reads_back_with_the_fsd50k_reader(tmp_path):
    packages = tmp_path / "packages"
    sonic = packages / "sonic-pi-samples" / "usr" / "share" / "sonic-pi" / "samples"
    t = np.arange(70 * RATE) / RATE
    long_wave = (0.1 + 0.8 * t / 70) * np.sin(2 * np.pi * 200 * t)  # amplitude grows with time: pieces differ
    write(sonic / "long.wav", long_wave, subtype="PCM_16")
    write(sonic / "kick.flac", tone(60, 2.0))
    ufo = packages / "ufoai-sound" / "usr" / "share" / "ufoai"
    ufo.mkdir(parents=True)
    with zipfile.ZipFile(ufo / "0sound.pk3", "w") as zipped:
        zipped.writestr("sound/laser.ogg", ogg_bytes(tone(900, 1.0)))
        zipped.writestr("sound/step.ogg", ogg_bytes(tone(150, 0.5)))
    sources = audio_sources("sonic-pi-samples", packages / "sonic-pi-samples") + audio_sources("ufoai-sound", ufo.parents[2])
    out = tmp_path / "fsd50k"

    counts = write_fsd50k_corpus(sources, out)

    train, val = fsd50k_entries(out, "train"), fsd50k_entries(out, "val")
    entries = {entry.key: entry for entry in train + val}
    assert len(entries) == len(train) + len(val) == 6 == counts["clips"]
    assert fsd50k_vocabulary(out) == ["sonic-pi-samples", "ufoai-sound"]
    with open(out / "sources.csv", newline="", encoding="utf-8") as handle:
        provenance = {row["fname"]: row for row in csv.DictReader(handle)}
    assert set(provenance) == set(entries)
    for fname, row in provenance.items():
        assert entries[fname].labels == (row["package"],)
    long_rows = sorted((row for row in provenance.values() if row["file"].endswith("long.wav")), key=lambda r: int(r["piece"]))
    assert [row["piece"] for row in long_rows] == ["0", "1", "2"]
    assert long_rows[0]["file"] == "usr/share/sonic-pi/samples/long.wav"
    assert {row["file"] for row in provenance.values() if row["package"] == "ufoai-sound"} == {
        "usr/share/ufoai/0sound.pk3:sound/laser.ogg", "usr/share/ufoai/0sound.pk3:sound/step.ogg"}
    val_keys = {entry.key for entry in val}
    assert len({row["fname"] in val_keys for row in long_rows}) == 1  # all pieces of one file share its split
    for index, row in enumerate(long_rows):
        piece, rate = soundfile.read(out / "FSD50K.dev_audio" / f"{row['fname']}.wav")
        assert rate == RATE and piece.ndim == 1
        assert piece.shape[0] == [30, 30, 10][index] * RATE
        start = index * 30 * RATE
        np.testing.assert_allclose(piece, long_wave[start:start + piece.shape[0]], atol=3 / 32768)
    assert sum(counts["hours"].values()) == pytest.approx((70 + 2 + 1 + 0.5) / 3600, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Sound events (ESC-50 layout)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("swordman_attack7.wav", "swordman_attack"),
    ("Arrow-Hit 3.ogg", "arrow_hit"),
    ("fire2_big.wav", "fire_big"),
    ("magic__cast-01.wav", "magic_cast"),
])
def test_event_class(name, expected):
    assert event_class(name) == expected


def test_esc50_set_reads_back_with_the_esc50_reader(tmp_path):
    package = tmp_path / "packages" / "megaglest-data"
    sounds = package / "usr" / "share" / "games" / "megaglest" / "data" / "sound"
    base_hz = {"swordman_attack": 300.0, "arrow_hit": 700.0}
    written = []
    for take in range(1, 4):
        for category, name in (("swordman_attack", f"swordman_attack{take}.wav"), ("arrow_hit", f"Arrow-Hit {take}.ogg")):
            write(sounds / name, tone(base_hz[category] + 20 * take, 0.6))
            written.append(name)
    write(sounds / "dragon_roar1.wav", tone(1500, 0.6))  # a class below min_clips
    write(sounds / "dragon_roar2.wav", tone(1550, 0.6))
    out = tmp_path / "esc50"

    counts = write_esc50_set(audio_sources("megaglest-data", package), out, min_clips=3)

    entries = esc50_entries(out)
    assert len(entries) == 6 == counts["clips"]
    assert counts["classes"] == 2 and counts["classes_dropped_below_min_clips"] == 1
    assert counts["clips_in_dropped_classes"] == 2
    categories = sorted({entry.labels[0] for entry in entries})
    assert categories == ["arrow_hit", "swordman_attack"]
    with open(out / "meta" / "esc50.csv", newline="", encoding="utf-8") as handle:
        rows = {row["filename"]: row for row in csv.DictReader(handle)}
    with open(out / "meta" / "sources.csv", newline="", encoding="utf-8") as handle:
        sources = {row["filename"]: row for row in csv.DictReader(handle)}
    source_ids = set()
    for entry in entries:
        match = re.fullmatch(r"([1-5])-(\d+)-([A-Z])-(\d+)\.wav", entry.key)
        assert match, entry.key
        row = rows[entry.key]
        assert int(match.group(4)) == int(row["target"]) == categories.index(entry.labels[0])
        assert int(match.group(1)) == int(row["fold"])
        source_ids.add(match.group(2))
        original = Path(sources[entry.key]["file"]).name
        assert event_class(original) == entry.labels[0]
        clip, rate = soundfile.read(entry.path)
        assert rate == RATE
        take = int(re.search(r"\d+", original).group())
        expected = base_hz[entry.labels[0]] + 20 * take
        assert abs(peak_hz(clip) - expected) < 3  # the clip is the file its provenance names
    assert len(source_ids) == 6
    assert sorted(sources[key]["file"].rsplit("/", 1)[1] for key in rows) == sorted(written)


# ---------------------------------------------------------------------------------------------------------------
# Building a set once
# ---------------------------------------------------------------------------------------------------------------


def test_build_set_builds_once_rebuilds_on_new_params_and_survives_a_failed_build(tmp_path):
    out = tmp_path / "sets" / "esc50"
    calls = []

    def writer(text: str, fail: bool = False):
        def write_set(where: Path) -> dict:
            calls.append(where)
            where.mkdir(parents=True)
            (where / "half.txt").write_text("written before the failure" if fail else text)
            if fail:
                raise RuntimeError("decoder crashed")
            (where / "data.txt").write_text(text)
            return {"clips": len(text)}
        return write_set

    assert build_set(out, {"version": 1}, writer("first")) == {"clips": 5}
    assert len(calls) == 1 and calls[0] == tmp_path / "sets" / "esc50.partial"
    assert (out / "data.txt").read_text() == "first" and not calls[0].exists()
    assert json.loads((out / "complete.json").read_text())["params"] == {"version": 1}

    assert build_set(out, {"version": 1}, writer("other")) == {"clips": 5}  # same params: reused
    assert len(calls) == 1 and (out / "data.txt").read_text() == "first"

    assert build_set(out, {"version": 2}, writer("second")) == {"clips": 6}  # new params: rebuilt
    assert len(calls) == 2 and (out / "data.txt").read_text() == "second"

    with pytest.raises(RuntimeError, match="decoder crashed"):
        build_set(out, {"version": 3}, writer("third", fail=True))
    assert (out / "data.txt").read_text() == "second"  # the previous complete set is intact
    assert json.loads((out / "complete.json").read_text())["params"] == {"version": 2}
    partial = tmp_path / "sets" / "esc50.partial"
    assert (partial / "half.txt").is_file() and not (partial / "complete.json").exists()

    assert build_set(out, {"version": 3}, writer("third")) == {"clips": 5}  # the half set is not taken as done
    assert len(calls) == 4 and not partial.exists()
    assert (out / "data.txt").read_text() == "third" and (out / "half.txt").read_text() == "third"
    assert sorted(path.name for path in out.iterdir()) == ["complete.json", "data.txt", "half.txt"]


def test_build_set_reuses_a_set_whose_params_hold_tuples(tmp_path):
    """The NSynth set's params hold a RenderPlan (tuples), which complete.json stores as JSON lists."""
    calls = []

    def write_set(where: Path) -> dict:
        calls.append(where)
        where.mkdir(parents=True)
        return {"notes": 1}

    params = {"version": "1.3-5", "plan": vars(RenderPlan(programs=(0, 1), pitches=(60,))), "format": 1}
    build_set(tmp_path / "nsynth", params, write_set)
    assert build_set(tmp_path / "nsynth", params, write_set) == {"notes": 1}
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------------------
# Instrument notes (NSynth layout)
# ---------------------------------------------------------------------------------------------------------------


def test_part_of_is_deterministic_and_about_80_10_10():
    names = [f"{family}_synthetic_{program:03d}-{pitch:03d}-{velocity:03d}"
             for program, family in enumerate(render.GM_FAMILIES * 8) for pitch in range(36, 90, 3) for velocity in (50, 127)]
    parts = [render.part_of(name) for name in names]
    assert parts == [render.part_of(name) for name in names]
    shares = {part: parts.count(part) / len(parts) for part in set(parts)}
    assert set(shares) == {"nsynth-train", "nsynth-valid", "nsynth-test"}
    assert len(names) > 4000
    assert abs(shares["nsynth-train"] - 0.8) < 0.03
    assert abs(shares["nsynth-valid"] - 0.1) < 0.03 and abs(shares["nsynth-test"] - 0.1) < 0.03


def test_gm_families_are_sixteen_groups_of_eight_programs():
    assert len(render.GM_FAMILIES) == len(set(render.GM_FAMILIES)) == 16
    assert render.GM_FAMILIES[0] == "keyboard" and render.GM_FAMILIES[5] == "string"  # programs 0-7 pianos, 40-47 strings


def _fluidsynth_env() -> dict[str, str] | None:
    """Environment under which the renderer subprocess loads FluidSynth, or None when none is at hand."""
    if ctypes.util.find_library("fluidsynth") or os.environ.get("MINIBENCH_FLUIDSYNTH_LIBRARY"):
        return {}
    libraries = sorted(FLUIDSYNTH_RUNTIME.glob("libfluidsynth3/usr/lib/*/libfluidsynth.so.*"))
    if not libraries:
        return None
    folders = sorted({str(path.parent) for path in FLUIDSYNTH_RUNTIME.glob("*/usr/lib/**/*.so*")})
    path = os.pathsep.join([*folders, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return {"LD_LIBRARY_PATH": path, "MINIBENCH_FLUIDSYNTH_LIBRARY": str(libraries[0])}


def test_rendered_notes_read_back_with_the_nsynth_reader(tmp_path):
    env = _fluidsynth_env()
    if env is None:
        pytest.skip(f"no FluidSynth library: none installed, MINIBENCH_FLUIDSYNTH_LIBRARY unset, none under {FLUIDSYNTH_RUNTIME}")
    if not SOUNDFONT.is_file():
        pytest.skip(f"the TimGM6mb soundfont is not at {SOUNDFONT} (built by benchmarks/minibench/build)")
    if importlib.util.find_spec("fluidsynth") is None:
        pytest.skip("pyfluidsynth is not installed")
    # 6 notes per program: the renderer keeps programs with at least MIN_CLIPS_PER_CLASS notes
    plan = RenderPlan(programs=(0, 40), pitches=(48, 60, 72), velocities=(64, 127))
    assert len(plan.pitches) * len(plan.velocities) >= build.MIN_CLIPS_PER_CLASS
    out = tmp_path / "nsynth"

    counts = build.render_nsynth_set(SOUNDFONT, out, plan, env)

    assert counts["classes"] == 2 and counts["notes"] == 12 and counts["programs_dropped"] == 0
    assert sum(counts["notes_by_part"].values()) == 12
    entries = nsynth_entries(out)
    assert len(entries) == 12
    assert sorted({entry.labels[0] for entry in entries}) == ["keyboard_synthetic_000", "string_synthetic_040"]
    examples = {}
    for part in ("nsynth-train", "nsynth-valid", "nsynth-test"):
        for note_str, example in json.loads((out / part / "examples.json").read_text()).items():
            examples[f"{part}/{note_str}"] = example
    assert set(examples) == {entry.key for entry in entries}
    notes = set()
    for entry in entries:
        example = examples[entry.key]
        wave, rate = soundfile.read(entry.path)
        assert rate == RATE and wave.shape == (4 * RATE,)
        assert np.abs(wave).max() >= build.SILENCE_PEAK
        notes.add((example["instrument"], example["pitch"], example["velocity"]))
        assert example["instrument_family_str"] == render.GM_FAMILIES[example["instrument"] // 8]
        held = wave[RATE // 2:3 * RATE]
        f0 = 440.0 * 2 ** ((example["pitch"] - 69) / 12)
        harmonic = peak_hz(held) / f0  # the strongest partial lies on the note's harmonic series
        assert abs(harmonic - round(harmonic)) < 0.05 and 1 <= round(harmonic) <= 8, (entry.key, peak_hz(held), f0)
        assert np.sqrt(np.mean(wave[-RATE // 4:] ** 2)) < np.sqrt(np.mean(held ** 2))  # it is released and decays
    assert notes == {(p, k, v) for p in plan.programs for k in plan.pitches for v in plan.velocities}


# ---------------------------------------------------------------------------------------------------------------
# Results table and the whole run
# ---------------------------------------------------------------------------------------------------------------

CLAR = ["pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift", "time_stretch"]


def _report(name: str, shots: int, baseline: float, learned: float, fixed: float, learned_i: list[float]) -> dict:
    return {
        "config": {"data": {"name": name, "label": "family"}, "episodes": {"shots": shots, "ways": 5}},
        "factors": CLAR,
        "rows": [
            {"model": "amortised", "readout": "learned i", "accuracy": learned, "ci95": 0.0213, "episodes": 600,
             "learned_i": learned_i},
            {"model": "amortised", "readout": "logistic, i = all", "accuracy": 0.99, "ci95": 0.0, "episodes": 600},
            {"model": "amortised", "readout": "i = all", "descriptor": [1.0] * 7, "accuracy": fixed, "ci95": 0.0178,
             "episodes": 600},
            {"model": "baseline", "readout": "logistic", "accuracy": 0.98, "ci95": 0.0, "episodes": 600},
            {"model": "baseline", "readout": "linear", "accuracy": baseline, "ci95": 0.0341, "episodes": 600},
        ],
    }


def test_results_table_cells():
    reports = {
        "esc50-1shot": _report("esc50", 1, 0.4123, 0.4567, 0.4401, [0.5, 0.123, 0.876, 1.0, 0.0, 0.25, 0.7349]),
        "nsynth-5shot": _report("nsynth", 5, 0.6018, 0.7, 0.6549, [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9]),
    }
    lines = run.results_table(reports).splitlines()
    assert lines == [
        "| set | shots | SimCLR | AI-SimCLR, learned i | AI-SimCLR, i = all | PS | FI | FO | NI | TM | TS | TSt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| esc50 | 1 | 41.2 ± 3.4 | 45.7 ± 2.1 | 44.0 ± 1.8 | 50 | 12 | 88 | 100 | 0 | 25 | 73 |",
        "| nsynth | 5 | 60.2 ± 3.4 | 70.0 ± 2.1 | 65.5 ± 1.8 | 10 | 20 | 30 | 40 | 60 | 70 | 90 |",
    ]


def _write_esc50(root: Path, classes: int, clips: int) -> None:
    """A sound-event set from fake megaglest files: class c is a tone at its own frequency, each take a bit apart."""
    sounds = root.parent / "packages" / "megaglest-data" / "usr" / "share" / "megaglest" / "sound"
    rng = np.random.default_rng(1)
    for c in range(classes):
        for take in range(clips):
            wave = tone(200 * 2 ** (c / 6), 1.0, amplitude=0.4) + 0.01 * rng.standard_normal(RATE).astype(np.float32)
            write(sounds / f"tone_{chr(ord('a') + c)}{take}.wav", wave, subtype="PCM_16")
    write_esc50_set(audio_sources("megaglest-data", sounds.parents[3]), root, min_clips=clips)


def _write_nsynth(root: Path, instruments: int, notes: int) -> None:
    """Notes in NSynth's layout: instrument n has its own partials; its notes differ in pitch."""
    rng = np.random.default_rng(2)
    examples: dict[str, dict[str, dict]] = {"nsynth-train": {}, "nsynth-valid": {}, "nsynth-test": {}}
    parts = list(examples)
    for n in range(instruments):
        instrument_str = f"synth_lead_synthetic_{n:03d}"
        for k in range(notes):
            pitch = 48 + 3 * k
            f0 = 440.0 * 2 ** ((pitch - 69) / 12)
            wave = sum(tone(f0 * h, 1.0, amplitude=0.3 / h ** (0.5 + n / 10)) for h in range(1, 4))
            wave = wave + 0.01 * rng.standard_normal(RATE).astype(np.float32)
            note_str = f"{instrument_str}-{pitch:03d}-100"
            part = parts[(n + k) % 3]
            write_audio(root / part / "audio" / f"{note_str}.wav", wave, RATE)
            examples[part][note_str] = {"note_str": note_str, "instrument_str": instrument_str, "instrument": n,
                                        "pitch": pitch, "velocity": 100, "sample_rate": RATE}
    for part, part_examples in examples.items():
        (root / part / "examples.json").write_text(json.dumps(part_examples))


def _mark_complete(root: Path) -> None:
    (root / "complete.json").write_text(json.dumps({"params": {}, "counts": {}}))


def test_run_requires_every_built_set(tmp_path):
    data = tmp_path / "data"
    for name in ("fsd50k", "esc50"):
        (data / name).mkdir(parents=True)
        _mark_complete(data / name)
    (data / "nsynth").mkdir()  # present but never completed
    config = run.MinibenchConfig(data_dir=str(data), out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="nsynth") as error:
        run.run(config)
    assert "esc50" not in str(error.value) and "fsd50k" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_end_to_end_on_tiny_sets(tmp_path, monkeypatch):
    data = tmp_path / "data"
    generate_synthetic(data / "fsd50k", num_clips=48, seed=0, min_seconds=1.0, max_seconds=1.6)
    _write_esc50(data / "esc50", classes=20, clips=4)  # 20 classes: 14/2/4 train/val/test, so 2-way episodes
    _write_nsynth(data / "nsynth", instruments=20, notes=4)
    for name in ("fsd50k", "esc50", "nsynth"):
        _mark_complete(data / name)
    config = run.MinibenchConfig(
        data_dir=str(data), out_dir=str(tmp_path / "out"),
        pretrain=run.PretrainStage(overrides=[
            "data.crop_seconds=1.0", "data.cache_workers=0", "model.width=0.125", "model.projector_hidden=32",
            "model.projector_dim=16", "augment.pitch_shift.domain=spectrogram", "normalization.clips=16",
            "trainer.batch_size=8", "trainer.steps=2", "trainer.warmup_steps=1", "trainer.log_every=1",
            "trainer.ckpt_every=1", "trainer.num_workers=0", "trainer.progress=false", "trainer.tensorboard=false",
            "trainer.device=cpu",
        ]),
        fewshot=run.FewshotStage(shots=[1, 2], overrides=[
            "episodes.ways=2", "episodes.test_episodes=4", "episodes.val_episodes=2", "learner.steps=1",
            "learner.episodes_per_batch=4", "sweep.lrs=[0.01]", "sweep.invariance_lrs=[0.1]", "sklearn=false",
            "data.workers=0", "data.stats_clips=16", "device=cpu", "set_invariance.steps=4",
        ]),
        measure=run.MeasureStage(overrides=[
            "clips=8", "data.crop_seconds=1.0", "data.cache_workers=0", "descriptors=[all]", "interpolate=[]",
            "pitch_domain=spectrogram", "device=cpu",
        ]),
    )
    fewshot_calls = []
    real_run_fewshot = run.run_fewshot

    def counted_run_fewshot(fewshot_config):
        fewshot_calls.append(fewshot_config.out_dir)
        return real_run_fewshot(fewshot_config)

    monkeypatch.setattr(run, "run_fewshot", counted_run_fewshot)

    text = run.run(config)

    out = tmp_path / "out"
    assert len(fewshot_calls) == 4
    assert (out / "results.md").read_text(encoding="utf-8") == text
    main_table = text.split("Invariance learned jointly")[0]
    rows = [line.split(" | ") for line in main_table.splitlines() if line.startswith(("| esc50 |", "| nsynth |"))]
    assert sorted((row[0].strip("| "), int(row[1])) for row in rows) == [("esc50", 1), ("esc50", 2), ("nsynth", 1), ("nsynth", 2)]
    assert "AI-SimCLR, i learned jointly on validation" in text  # the MetaAudio configs select it by default
    assert "| MFCC floor (no learning) |" in text  # and the floor
    jointly_rows = [line for line in text.split("validation episodes (%):")[1].splitlines() if line.startswith("| esc50")]
    assert len(jointly_rows) == 2 and all(len(line.split(" | ")) == 2 + 7 for line in jointly_rows)
    for row in rows:
        for cell in row[2:7]:
            mean, ci = (float(value) for value in cell.split(" ± "))
            assert 0.0 <= mean <= 100.0 and ci >= 0.0
        assert len(row) == 7 + 7 and all(0 <= int(cell.strip("| ")) <= 100 for cell in row[7:])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["fewshot"]) == ["esc50-1shot", "esc50-2shot", "nsynth-1shot", "nsynth-2shot"]
    assert set(results["pretrain"]) == {"ai_simclr", "simclr"}
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "measure" / "invariance.json").is_file()
    first = {key: [r["accuracy"] for r in report["rows"]] for key, report in results["fewshot"].items()}

    run.run(config)  # a rerun with the same settings reuses the few-shot results

    assert len(fewshot_calls) == 4
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {key: [r["accuracy"] for r in report["rows"]] for key, report in again["fewshot"].items()} == first

    # learning curves: both models' checkpoints after 1 and 2 steps, through the same few-shot stage
    rows = curves.learning_curves(config, [1, 2])
    assert len(fewshot_calls) == 12 and (out / "curves" / "step_1" / "esc50-1shot" / "results.json").is_file()
    fixed_curves = {"SimCLR", "AI-SimCLR, i = all", "AI-SimCLR, i learned jointly on validation"}
    for step in (1, 2):
        for key in results["fewshot"]:
            found = {row["curve"] for row in rows if row["step"] == step and row["set"] == key}
            assert found == fixed_curves | ({curves.PER_EPISODE} if step == 2 else set())
    for key, report in results["fewshot"].items():  # step 2 is the final checkpoint: the main run's figures again
        for model, prefix, label in curves.CURVES[:2]:
            main_row = next(r for r in report["rows"] if r["model"] == model and r["readout"].startswith(prefix))
            curve_row = next(r for r in rows if r["step"] == 2 and r["set"] == key and r["curve"] == label)
            assert curve_row["accuracy"] == pytest.approx(100 * main_row["accuracy"], abs=1e-9)
    curves.plot(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="step_00000003"):
        curves.learning_curves(config, [3])


@pytest.mark.parametrize("budget", ["cpu", "gpu"])
def test_shipped_budgets_parse_into_every_stage_config(budget):
    """Every override in configs/minibench/*.yaml names a real key of the stage config it is applied to."""
    from aiaudio.config import apply_overrides, from_dict, load_yaml
    from aiaudio.fewshot import parse_fewshot_config
    from aiaudio.measure import parse_measure_config
    from aiaudio.pretrain import parse_config
    from benchmarks.pipeline import repo_path

    config = from_dict(run.MinibenchConfig, load_yaml(repo_path(f"configs/minibench/{budget}.yaml")))
    for name in run.MODELS:
        pretrain = parse_config(apply_overrides(load_yaml(repo_path(getattr(config.pretrain, name))),
                                                ["data.root=/data", *config.pretrain.overrides]))
        assert pretrain.trainer.steps > 0
    assert set(config.fewshot.sets) == {"esc50", "nsynth"}
    for set_config in config.fewshot.sets.values():
        fewshot = parse_fewshot_config(apply_overrides(load_yaml(repo_path(set_config)), config.fewshot.overrides))
        assert fewshot.episodes.ways == 5
    measure = parse_measure_config(apply_overrides(load_yaml(repo_path(config.measure.config)), config.measure.overrides))
    assert measure.clips > 0
