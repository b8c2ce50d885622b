"""MetaAudio readers, class splits and the log-mel store, on tiny fixtures in the released layouts.

Segments and statistics are checked against an independent computation: numpy z-normalisation and ``np.tile`` on the
waveform read with soundfile, then librosa's mel spectrogram with MetaAudio's parameters.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch

from aiaudio.audio.datasets import DatasetError
from aiaudio.audio.metaaudio import (
    METAAUDIO_SETS,
    LogMelSet,
    SegmentPolicy,
    build_logmel_set,
    class_split,
    esc50_entries,
    fsdkaggle18_entries,
    normalized_segments,
    nsynth_entries,
    prepare_metaaudio,
    scaled_counts,
    voxceleb1_entries,
)

SR = 16000
FLOAT16_RTOL = 2.0**-11  # relative rounding error of float16 storage
DB_ATOL = 1e-2


def _write_clip(path: Path, seconds: float, rate: int, seed: int, amplitude: float = 0.3) -> None:
    """A tone in white noise (every mel band well above the numerical floor), PCM16."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * rate))
    t = np.arange(n) / rate
    wave = amplitude * (0.5 * rng.standard_normal(n) + np.sin(2 * np.pi * (200.0 + 37.0 * seed) * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(wave, -1, 1), rate, subtype="PCM_16")


def _split_file(path: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    """A split file in MetaAudio's format: an object array of shape (3,) holding three class-name lists."""
    lists = np.empty(3, dtype=object)
    for position, names in enumerate((train, val, test)):
        lists[position] = list(names)
    np.save(path, lists, allow_pickle=True)
    return path


def _reference_segments(path: Path, seconds: float, variable_length: bool) -> list[np.ndarray]:
    """Z-normalised (numpy) segments of a 16 kHz file; a short clip or last partial segment tiled with np.tile."""
    wave, rate = soundfile.read(path, dtype="float64")
    assert rate == SR
    z = (wave - wave.mean()) / wave.std()
    size = round(seconds * SR)
    count = math.ceil(len(z) / size) if variable_length else 1
    pieces = [z[k * size : (k + 1) * size] for k in range(count)]
    return [np.tile(piece, math.ceil(size / len(piece)))[:size] for piece in pieces]


def _reference_log_mel(segment: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=segment, sr=SR, n_fft=1024, hop_length=512, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=False, norm="slaney",
    )
    return 10.0 * np.log10(mel + 2.22e-16)


# --------------------------------------------------------------------------------------------------------------
# Fixtures in the released layouts
# --------------------------------------------------------------------------------------------------------------

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"
ESC50_CLIPS = [  # (filename, category, seconds)
    ("1-100032-A-0.wav", "dog", 5.0),
    ("1-110389-A-0.wav", "dog", 5.0),
    ("2-101676-A-10.wav", "rain", 4.2),
    ("3-102583-B-10.wav", "rain", 5.0),
    ("1-115545-A-42.wav", "siren", 5.5),
    ("4-117412-A-42.wav", "siren", 5.0),
    ("2-109505-A-38.wav", "clock_tick", 1.0),
    ("5-118206-A-38.wav", "clock_tick", 5.0),
    ("3-100018-A-9.wav", "crow", 5.0),
    ("5-103420-A-9.wav", "crow", 5.0),
]


@pytest.fixture()
def esc50_root(tmp_path) -> Path:
    root = tmp_path / "ESC-50"
    rows = []
    for seed, (filename, category, seconds) in enumerate(ESC50_CLIPS):
        _write_clip(root / "audio" / filename, seconds, 44100, seed)
        fold, src, take, target = filename[:-4].split("-")
        rows.append(f"{filename},{fold},{target},{category},False,{src},{take}\n")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text(ESC50_HEADER + "".join(rows))
    return root


NSYNTH_NOTES = {  # folder -> (note_str, instrument_str, seconds)
    "nsynth-train": [
        ("bass_synthetic_033-022-050", "bass_synthetic_033", 4.0),
        ("bass_synthetic_033-035-127", "bass_synthetic_033", 0.7),
        ("guitar_acoustic_010-060-100", "guitar_acoustic_010", 4.5),
        ("guitar_acoustic_010-061-050", "guitar_acoustic_010", 4.0),
    ],
    "nsynth-test": [
        ("keyboard_electronic_001-021-127", "keyboard_electronic_001", 4.0),
        ("keyboard_electronic_001-070-025", "keyboard_electronic_001", 1.3),
        ("flute_synthetic_000-050-075", "flute_synthetic_000", 4.0),
        ("flute_synthetic_000-051-075", "flute_synthetic_000", 3.9),
        ("vocal_acoustic_000-060-100", "vocal_acoustic_000", 4.0),
        ("vocal_acoustic_000-061-100", "vocal_acoustic_000", 4.0),
    ],
}


@pytest.fixture()
def nsynth_root(tmp_path) -> Path:
    root = tmp_path / "nsynth"
    seed = 0
    for folder, notes in NSYNTH_NOTES.items():
        examples = {}
        for note_str, instrument, seconds in notes:
            _write_clip(root / folder / "audio" / f"{note_str}.wav", seconds, SR, seed)
            seed += 1
            examples[note_str] = {
                "note_str": note_str, "instrument_str": instrument, "instrument": seed, "pitch": 60,
                "velocity": 100, "sample_rate": SR, "instrument_family_str": instrument.split("_")[0],
                "instrument_source_str": instrument.split("_")[1], "qualities_str": [],
            }
        (root / folder / "examples.json").write_text(json.dumps(examples))
    return root


VOX_CLIPS = {  # speaker -> [(video, utterance, seconds)]; 0.0 seconds means a clip of digital silence
    "id10001": [("1zcIwhmdeo4", "00001", 12.3), ("1zcIwhmdeo4", "00002", 3.0), ("7gWzIy6yIIk", "00001", 0.0)],
    "id10002": [("0_laIeN-Q44", "00001", 5.0), ("0_laIeN-Q44", "00002", 7.7)],
    "id10003": [("5ablueV_1tw", "00001", 10.0), ("5ablueV_1tw", "00002", 2.2)],
    "id10004": [("26D1X8ZgYWE", "00001", 6.1), ("26D1X8ZgYWE", "00002", 1.5)],
    "id10005": [("2gCAYHaj8gw", "00001", 4.0), ("2gCAYHaj8gw", "00002", 8.4)],
}
VOX_META = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n" + "".join(
    f"{speaker}\tA.J._Buckley\tm\tIreland\tdev\n" for speaker in VOX_CLIPS
)


@pytest.fixture()
def vox_root(tmp_path) -> Path:
    root = tmp_path / "voxceleb1"
    seed = 0
    for speaker, clips in VOX_CLIPS.items():
        for video, utterance, seconds in clips:
            path = root / "wav" / speaker / video / f"{utterance}.wav"
            if seconds == 0.0:
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, np.zeros(2 * SR), SR, subtype="PCM_16")
            else:
                _write_clip(path, seconds, SR, seed)
            seed += 1
    return root


FSD_TRAIN_CSV = """fname,label,manually_verified,freesound_id,license
00044347.wav,Hi-hat,0,28739,Attribution
001ca53d.wav,Saxophone,1,358827,Attribution
002d256b.wav,Trumpet,0,10897,Creative Commons 0
0033e230.wav,Glockenspiel,1,325017,Attribution
"""
FSD_TEST_CSV = """fname,label,usage,freesound_id,license
00063640.wav,Hi-hat,Public,107087,Attribution
0013a1db.wav,Flute,Private,340346,Creative Commons 0
"""


@pytest.fixture()
def fsd_root(tmp_path) -> Path:
    root = tmp_path / "fsdkaggle2018"
    (root / "FSDKaggle2018.meta").mkdir(parents=True)
    (root / "FSDKaggle2018.meta" / "train_post_competition.csv").write_text(FSD_TRAIN_CSV)
    (root / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv").write_text(FSD_TEST_CSV)
    for seed, (part, csv_text) in enumerate((("train", FSD_TRAIN_CSV), ("test", FSD_TEST_CSV))):
        for line in csv_text.splitlines()[1:]:
            _write_clip(root / f"FSDKaggle2018.audio_{part}" / line.split(",")[0], 0.5 + seed, 44100, seed)
    return root


# --------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------


def test_esc50_reader(esc50_root):
    entries = esc50_entries(esc50_root)
    assert [entry.key for entry in entries] == sorted(filename for filename, _, _ in ESC50_CLIPS)
    by_key = {entry.key: entry for entry in entries}
    for filename, category, _ in ESC50_CLIPS:
        assert by_key[filename].labels == (category,)
        assert by_key[filename].path == esc50_root / "audio" / filename


def test_esc50_reader_errors_name_the_file(esc50_root):
    csv_path = esc50_root / "meta" / "esc50.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("category", "classname", 1))
    with pytest.raises(DatasetError, match=r"esc50\.csv lacks column\(s\) category"):
        esc50_entries(esc50_root)
    lines = text.splitlines(keepends=True)
    csv_path.write_text("".join(lines[:3]) + "1-999-A-0.wav,1,0,,False,999,A\n")
    with pytest.raises(DatasetError, match=r"esc50\.csv line 4: empty 'category'"):
        esc50_entries(esc50_root)
    csv_path.unlink()
    with pytest.raises(DatasetError, match=r"meta/esc50\.csv is missing"):
        esc50_entries(esc50_root)
    for path in (esc50_root / "audio").iterdir():
        path.unlink()
    (esc50_root / "audio").rmdir()
    with pytest.raises(DatasetError, match=r"ESC-50/audio is missing"):
        esc50_entries(esc50_root)


def test_nsynth_reader_merges_the_present_folders(nsynth_root):
    entries = nsynth_entries(nsynth_root)
    expected = sorted(
        (f"{folder}/{note}", instrument) for folder, notes in NSYNTH_NOTES.items() for note, instrument, _ in notes
    )
    assert [(entry.key, entry.labels[0]) for entry in entries] == expected
    assert entries[0].path == nsynth_root / "nsynth-test" / "audio" / "flute_synthetic_000-050-075.wav"
    assert all(entry.path.is_file() for entry in entries)


def test_nsynth_reader_errors(nsynth_root, tmp_path):
    (nsynth_root / "nsynth-valid").mkdir()
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json is missing"):
        nsynth_entries(nsynth_root)
    (nsynth_root / "nsynth-valid" / "examples.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json is not readable JSON"):
        nsynth_entries(nsynth_root)
    (nsynth_root / "nsynth-valid" / "examples.json").write_text(json.dumps({"x-060-100": {"pitch": 60}}))
    with pytest.raises(DatasetError, match=r"examples\.json: note 'x-060-100' has no instrument_str"):
        nsynth_entries(nsynth_root)
    with pytest.raises(DatasetError, match="no NSynth folder found"):
        nsynth_entries(tmp_path / "empty")


def test_voxceleb1_reader_and_meta_validation(vox_root):
    entries = voxceleb1_entries(vox_root)
    expected = sorted(
        f"{speaker}/{video}/{utterance}.wav" for speaker, clips in VOX_CLIPS.items() for video, utterance, _ in clips
    )
    assert [entry.key for entry in entries] == expected
    assert all(entry.labels == (entry.key.split("/")[0],) for entry in entries)
    assert all(entry.path == vox_root / "wav" / entry.key for entry in entries)

    (vox_root / "vox1_meta.csv").write_text(VOX_META)
    assert voxceleb1_entries(vox_root) == entries
    (vox_root / "vox1_meta.csv").write_text("".join(VOX_META.splitlines(keepends=True)[:-2]))  # drops id10004/5
    with pytest.raises(DatasetError, match=r"not listed in .*vox1_meta\.csv: 'id10004', 'id10005'"):
        voxceleb1_entries(vox_root)
    (vox_root / "vox1_meta.csv").write_text(VOX_META.replace("\t", ","))
    with pytest.raises(DatasetError, match=r"vox1_meta\.csv lacks the column 'VoxCeleb1 ID'"):
        voxceleb1_entries(vox_root)
    (vox_root / "vox1_meta.csv").unlink()
    _write_clip(vox_root / "wav" / "id10001" / "stray.wav", 0.1, SR, 0)
    with pytest.raises(DatasetError, match=r"id10001/stray\.wav: expected VoxCeleb1 files at"):
        voxceleb1_entries(vox_root)


def test_fsdkaggle18_reader_merges_train_and_test(fsd_root):
    entries = fsdkaggle18_entries(fsd_root)
    assert [(entry.key, entry.labels) for entry in entries] == [
        ("test/00063640.wav", ("Hi-hat",)),
        ("test/0013a1db.wav", ("Flute",)),
        ("train/00044347.wav", ("Hi-hat",)),
        ("train/001ca53d.wav", ("Saxophone",)),
        ("train/002d256b.wav", ("Trumpet",)),
        ("train/0033e230.wav", ("Glockenspiel",)),
    ]
    assert entries[0].path == fsd_root / "FSDKaggle2018.audio_test" / "00063640.wav"
    assert all(entry.path.is_file() for entry in entries)

    test_csv = fsd_root / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv"
    test_csv.write_text(FSD_TEST_CSV + "00063640.wav,Flute,Public,1,Attribution\n")
    with pytest.raises(DatasetError, match=r"test_post_competition_scoring_clips\.csv line 4: fname '00063640\.wav'"):
        fsdkaggle18_entries(fsd_root)
    test_csv.unlink()
    with pytest.raises(DatasetError, match=r"test_post_competition_scoring_clips\.csv is missing"):
        fsdkaggle18_entries(fsd_root)
    (fsd_root / "FSDKaggle2018.audio_test").rename(fsd_root / "elsewhere")
    with pytest.raises(DatasetError, match=r"FSDKaggle2018\.audio_test is missing"):
        fsdkaggle18_entries(fsd_root)


def test_registry_holds_the_official_counts_and_length_policies():
    assert {name: spec.class_counts for name, spec in METAAUDIO_SETS.items()} == {
        "esc50": (35, 5, 10), "nsynth": (705, 101, 200), "voxceleb1": (876, 126, 249), "fsdkaggle18": (29, 5, 7),
    }
    assert {name: (spec.clip_seconds, spec.variable_length) for name, spec in METAAUDIO_SETS.items()} == {
        "esc50": (5.0, False), "nsynth": (4.0, False), "voxceleb1": (5.0, True), "fsdkaggle18": (5.0, True),
    }
    assert METAAUDIO_SETS["esc50"].reader is esc50_entries and METAAUDIO_SETS["voxceleb1"].reader is voxceleb1_entries


# --------------------------------------------------------------------------------------------------------------
# Class splits
# --------------------------------------------------------------------------------------------------------------


def test_seeded_split_has_the_counts_is_disjoint_and_reproducible():
    classes = [f"instrument_{index:04d}" for index in range(1006)]
    train, val, test = class_split(classes, (705, 101, 200), seed=3)
    assert (len(train), len(val), len(test)) == (705, 101, 200)
    assert set(train) | set(val) | set(test) == set(classes)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    shuffled = list(np.random.default_rng(0).permutation(classes)) * 2  # order and repeats do not matter
    assert class_split(shuffled, (705, 101, 200), seed=3) == (train, val, test)
    assert class_split(classes, (705, 101, 200), seed=4)[2] != test


@pytest.mark.parametrize(
    "num_classes, counts, expected",
    [
        (10, (35, 5, 10), (7, 1, 2)),  # exact proportions
        (5, (35, 5, 10), (3, 1, 1)),  # 3.5 / 0.5 / 1.0
        (4, (876, 126, 249), (2, 1, 1)),  # 2.80 / 0.40 / 0.80
        (6, (29, 5, 7), (4, 1, 1)),  # 4.24 / 0.73 / 1.02
        (3, (705, 101, 200), (1, 1, 1)),
        (60, (35, 5, 10), (35, 5, 10)),  # more classes than needed: the official counts
    ],
)
def test_counts_scale_down_proportionally(num_classes, counts, expected, caplog):
    assert scaled_counts(counts, num_classes) == expected
    classes = [f"c{index}" for index in range(num_classes)]
    with caplog.at_level(logging.WARNING, logger="aiaudio.audio.metaaudio"):
        split = class_split(classes, counts, seed=0)
    assert tuple(map(len, split)) == expected
    assert ("fewer than the" in caplog.text) == (num_classes < sum(counts))


def test_split_needs_three_classes():
    with pytest.raises(DatasetError, match="at least 3 classes"):
        class_split(["a", "b", "b"], (35, 5, 10), seed=0)


def test_split_file_is_respected_and_checked(tmp_path):
    classes = ["a", "b", "c", "d", "e", "f"]
    path = _split_file(tmp_path / "split.npy", ["f", "b", "a"], ["c"], ["e", "d"])
    assert class_split(classes, (35, 5, 10), seed=0, split_file=path) == (["a", "b", "f"], ["c"], ["d", "e"])
    bad = _split_file(tmp_path / "unknown.npy", ["a", "zebra"], ["c"], ["d"])
    with pytest.raises(DatasetError, match=r"unknown\.npy: train class\(es\) not found in the data: 'zebra'"):
        class_split(classes, (35, 5, 10), seed=0, split_file=bad)
    overlap = _split_file(tmp_path / "overlap.npy", ["a", "b"], ["c"], ["c", "d"])
    with pytest.raises(DatasetError, match=r"overlap\.npy: class\(es\) in both val and test: 'c'"):
        class_split(classes, (35, 5, 10), seed=0, split_file=overlap)
    np.save(tmp_path / "flat.npy", np.array(["a", "b"]))
    with pytest.raises(DatasetError, match=r"flat\.npy: expected an array of 3 class lists"):
        class_split(classes, (35, 5, 10), seed=0, split_file=tmp_path / "flat.npy")
    with pytest.raises(DatasetError, match=r"missing\.npy is missing"):
        class_split(classes, (35, 5, 10), seed=0, split_file=tmp_path / "missing.npy")


# --------------------------------------------------------------------------------------------------------------
# Waveform segments
# --------------------------------------------------------------------------------------------------------------


def test_normalized_segments_against_numpy():
    rng = np.random.default_rng(0)
    size = 1000
    clips = [3.0 + 2.0 * rng.standard_normal(n) for n in (1000, 300, 2501, 1999)]
    lengths = torch.tensor([len(clip) for clip in clips])
    waves = torch.from_numpy(np.concatenate(clips))

    segments, segment_clip = normalized_segments(waves, lengths, size, variable_length=True)
    assert segment_clip.tolist() == [0, 1, 2, 2, 2, 3, 3]  # ceil(length / 1000) segments per clip
    expected = []
    for clip in clips:
        z = (clip - clip.mean()) / clip.std()
        for k in range(math.ceil(len(z) / size)):
            piece = z[k * size : (k + 1) * size]
            expected.append(np.tile(piece, math.ceil(size / len(piece)))[:size])
    np.testing.assert_allclose(segments.numpy(), np.stack(expected), rtol=1e-6, atol=1e-6)
    assert segments.dtype == torch.float32
    # The first clip is exactly one segment: zero mean, unit (population) std.
    first = segments[0].double()
    assert abs(float(first.mean())) < 1e-6 and abs(float(first.std(correction=0)) - 1) < 1e-6

    fixed, fixed_clip = normalized_segments(waves, lengths, size, variable_length=False)
    assert fixed_clip.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(fixed.numpy(), np.stack([expected[0], expected[1], expected[2], expected[5]]), atol=1e-6)

    # Invariant to each clip's gain and offset.
    scaled = torch.cat([waves[:1000] * 7.0 - 2.0, waves[1000:]])
    np.testing.assert_allclose(normalized_segments(scaled, lengths, size, True)[0].numpy(), segments.numpy(), atol=1e-5)

    with pytest.raises(ValueError, match="zero std"):
        normalized_segments(torch.full((10,), 3.0), torch.tensor([10]), 4, True)


# --------------------------------------------------------------------------------------------------------------
# Log-mel store
# --------------------------------------------------------------------------------------------------------------


def _paths(entries) -> dict[str, Path]:
    return {entry.key: entry.path for entry in entries}


def _check_against_reference(store: LogMelSet, paths: dict[str, Path], seconds: float, variable_length: bool) -> int:
    """Compare every stored segment with the independent reference; returns the number of segments checked."""
    checked = 0
    for clip_index, key in enumerate(store.clip_keys):
        pieces = _reference_segments(paths[key], seconds, variable_length)
        expected = [_reference_log_mel(piece) for piece in pieces]
        span = store.clip_segments(clip_index)
        assert span.stop - span.start == len(expected)
        got = np.asarray(store.segments[span], dtype=np.float32)
        np.testing.assert_allclose(got, np.stack(expected), rtol=FLOAT16_RTOL, atol=DB_ATOL)
        checked += len(expected)
    return checked


def test_voxceleb1_store_segments_stats_and_skips(vox_root, tmp_path, caplog):
    split = _split_file(tmp_path / "vox_split.npy", ["id10004", "id10005"], ["id10001"], ["id10002", "id10003"])
    with caplog.at_level(logging.WARNING, logger="aiaudio.audio.metaaudio"):
        data = prepare_metaaudio(
            "voxceleb1", vox_root, tmp_path / "cache", seed=0, split_file=split, stats_clips=None, workers=0,
            progress=False,
        )
    store = data.logmels
    assert (data.train_classes, data.val_classes, data.test_classes) == (
        ["id10004", "id10005"], ["id10001"], ["id10002", "id10003"],
    )
    assert store.class_names == ["id10001", "id10002", "id10003"]
    silent = "id10001/7gWzIy6yIIk/00001.wav"
    assert silent not in store.clip_keys and store.manifest["skipped_zero_std"] == [silent]
    assert "zero std" in caplog.text
    assert store.clip_keys == sorted(
        f"{speaker}/{video}/{utterance}.wav"
        for speaker in ("id10001", "id10002", "id10003") for video, utterance, seconds in VOX_CLIPS[speaker] if seconds
    )
    assert [store.class_names[c] for c in store.clip_class] == [key.split("/")[0] for key in store.clip_keys]
    # ceil(length / 5 s) segments: 12.3 -> 3, 3.0 -> 1, 5.0 -> 1, 7.7 -> 2, 10.0 -> 2, 2.2 -> 1.
    assert store.segments.shape == (10, 128, 157) and store.segments.dtype == np.float16 and len(store) == 10
    assert np.bincount(store.segment_clip).tolist() == [3, 1, 1, 2, 2, 1]
    assert _check_against_reference(store, _paths(voxceleb1_entries(vox_root)), 5.0, True) == 10

    # Global statistics: numpy over the log-mels of every (non-silent) training-class clip.
    values = [
        _reference_log_mel(piece)
        for speaker in data.train_classes for video, utterance, _ in VOX_CLIPS[speaker]
        for piece in _reference_segments(vox_root / "wav" / speaker / video / f"{utterance}.wav", 5.0, True)
    ]
    assert store.manifest["stats_classes"] == ["id10004", "id10005"] and len(store.manifest["stats_clip_keys"]) == 4
    assert store.mean == pytest.approx(np.mean(values), abs=1e-3)
    assert store.std == pytest.approx(np.std(values), rel=1e-4)

    indices = np.array([9, 0, 4])
    batch = store.gather(indices)
    assert batch.shape == (3, 1, 128, 157) and batch.dtype == torch.float32
    expected = (np.asarray(store.segments, dtype=np.float64)[indices] - np.mean(values)) / np.std(values)
    np.testing.assert_allclose(batch[:, 0].numpy(), expected, rtol=1e-3, atol=1e-3)
    assert data.class_indices("test").tolist() == [1, 2] and data.class_indices("val").tolist() == [0]
    assert store.class_clips(1).tolist() == [2, 3]


def test_nsynth_fixed_length_store_cut_and_tiled(nsynth_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="aiaudio.audio.metaaudio"):
        data = prepare_metaaudio("nsynth", nsynth_root, tmp_path / "cache", seed=1, workers=0, progress=False)
    assert "fewer than the" in caplog.text  # 5 instruments for 705/101/200: scaled to 3/1/1
    assert (len(data.train_classes), len(data.val_classes), len(data.test_classes)) == (3, 1, 1)
    store = data.logmels
    assert store.class_names == data.val_classes + data.test_classes
    assert {key.rsplit("/", 1)[1].rsplit("-", 2)[0] for key in store.clip_keys} == set(store.class_names)
    assert store.segments.shape == (store.num_clips, 128, 126)  # one 4 s example per clip
    assert _check_against_reference(store, _paths(nsynth_entries(nsynth_root)), 4.0, False) == store.num_clips == 4
    assert len(store.manifest["stats_clip_keys"]) == 6  # every clip of the 3 training instruments


def test_esc50_end_to_end_with_split_file(esc50_root, tmp_path):
    split = _split_file(tmp_path / "esc.npy", ["crow", "dog"], ["clock_tick"], ["rain", "siren"])
    data = prepare_metaaudio("esc50", esc50_root, tmp_path / "cache", seed=0, split_file=split, workers=0,
                             progress=False)
    store = data.logmels
    assert store.class_names == ["clock_tick", "rain", "siren"]
    assert store.clip_keys == sorted(name for name, category, _ in ESC50_CLIPS if category in store.class_names)
    assert store.segments.shape == (6, 128, 157) and np.isfinite(store.segments).all()
    assert sorted(store.manifest["stats_clip_keys"]) == sorted(
        name for name, category, _ in ESC50_CLIPS if category in ("crow", "dog")
    )


def test_store_is_reused_and_rebuilt_when_a_file_changes(vox_root, tmp_path):
    entries = voxceleb1_entries(vox_root)
    policy = SegmentPolicy(5.0, variable_length=True)
    cache = tmp_path / "cache"

    def build(stats_clips: int | None = 2) -> LogMelSet:
        return build_logmel_set(
            entries, ["id10002", "id10001"], ["id10004", "id10005"], cache, policy, name="vox", seed=5,
            stats_clips=stats_clips, workers=0, progress=False,
        )

    first = build()
    assert first.directory.name.startswith("vox-") and first.class_names == ["id10002", "id10001"]
    assert len(first.manifest["stats_clip_keys"]) == 2
    assert {key.split("/")[0] for key in first.manifest["stats_clip_keys"]} <= {"id10004", "id10005"}
    stamp = (first.directory / "segments.npy").stat()
    again = build()
    assert again.directory == first.directory and again.manifest == first.manifest
    assert (again.directory / "segments.npy").stat().st_mtime_ns == stamp.st_mtime_ns
    assert (again.directory / "segments.npy").stat().st_ino == stamp.st_ino
    assert sorted(path.name for path in cache.iterdir()) == [first.directory.name]  # no leftover partial folder

    changed = vox_root / "wav" / "id10002" / "0_laIeN-Q44" / "00001.wav"
    _write_clip(changed, 6.0, SR, seed=99)
    rebuilt = build()
    assert rebuilt.directory != first.directory and first.directory.is_dir()  # both versions coexist
    position = rebuilt.clip_keys.index("id10002/0_laIeN-Q44/00001.wav")
    span = rebuilt.clip_segments(position)
    assert span.stop - span.start == 2  # now 6 s: two segments
    assert _check_against_reference(rebuilt, _paths(voxceleb1_entries(vox_root)), 5.0, True) == len(rebuilt)
    assert build(stats_clips=None).directory not in (first.directory, rebuilt.directory)


def test_statistics_may_come_from_the_stored_classes(nsynth_root, tmp_path):
    entries = nsynth_entries(nsynth_root)
    classes = sorted({entry.labels[0] for entry in entries})
    store = build_logmel_set(
        entries, classes, classes, tmp_path / "cache", SegmentPolicy(4.0, variable_length=False), name="all",
        stats_clips=None, workers=0, progress=False,
    )
    assert store.num_clips == len(entries) and sorted(store.manifest["stats_clip_keys"]) == sorted(store.clip_keys)
    stored = np.asarray(store.segments, dtype=np.float64)  # float16-rounded copies of the same log-mels
    assert store.mean == pytest.approx(stored.mean(), abs=2e-2)
    assert store.std == pytest.approx(stored.std(), rel=1e-3)
