"""Synthetic labelled audio with known factors of variation, for demos, smoke runs and probes.

This data is synthetic: every clip is a single synthesised note, built from five independent factors drawn with a
seeded generator:

- timbre family (the class label): ``sine`` (pure tone), ``sawtooth`` (all harmonics, 1/n amplitudes, bright),
  ``clarinet`` (odd harmonics only, 1/n amplitudes, hollow), ``bell`` (FM synthesis with an inharmonic 1:1.414
  carrier:modulator ratio and a decaying modulation index) and ``pluck`` (all harmonics, 1/n amplitudes, each
  decaying faster the higher it is);
- pitch: a MIDI note in 48..72 (130.8 Hz to 523.3 Hz), stored with its pitch class (``note % 12``);
- loudness: the clip's peak level in dBFS, in -20..-1 dB;
- envelope: ``percussive`` (5 ms attack, exponential decay to about -40 dB), ``sustained`` (40 ms attack, flat,
  150 ms release) or ``swell`` (raised-cosine rise over 60 % of the clip, 150 ms release);
- noise texture: ``none``, ``breathy`` (white noise following the envelope) or ``rumble`` (brown noise, steady),
  at a level of -30..-12 dB relative to the tone's RMS (``-inf`` for ``none``).

Clip lengths vary uniformly between 2 and 4 s by default. :func:`generate_synthetic` writes the clips in the
released FSD50K layout, so the ordinary FSD50K reader and cache builder use them unchanged, plus ``factors.csv``
holding every factor of every clip.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from aiaudio.audio.io import write_audio

FAMILIES: tuple[str, ...] = ("sine", "sawtooth", "clarinet", "bell", "pluck")
ENVELOPES: tuple[str, ...] = ("percussive", "sustained", "swell")
NOISE_TEXTURES: tuple[str, ...] = ("none", "breathy", "rumble")
MIDI_RANGE: tuple[int, int] = (48, 72)  # inclusive
LOUDNESS_DB_RANGE: tuple[float, float] = (-20.0, -1.0)
NOISE_LEVEL_DB_RANGE: tuple[float, float] = (-30.0, -12.0)
BELL_RATIO = 1.414  # modulator / carrier frequency
PARAMS_FILE = "synthetic.json"
FACTORS_FILE = "factors.csv"
FACTOR_COLUMNS: tuple[str, ...] = (
    "fname",
    "split",
    "family",
    "midi_note",
    "pitch_class",
    "loudness_db",
    "envelope",
    "noise_texture",
    "noise_level_db",
    "num_samples",
)
_FORMAT_VERSION = 1
_OUTPUTS = ("FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth", FACTORS_FILE)


@dataclasses.dataclass(frozen=True)
class ClipFactors:
    """The factors of one synthetic clip (see the module docstring for their meaning)."""

    family: str
    midi_note: int
    loudness_db: float
    envelope: str
    noise_texture: str
    noise_level_db: float
    num_samples: int

    @property
    def pitch_class(self) -> int:
        """The note's pitch class, 0 (C) to 11 (B)."""
        return self.midi_note % 12

    @property
    def frequency_hz(self) -> float:
        """The fundamental (carrier for ``bell``) frequency."""
        return midi_to_hz(self.midi_note)


def midi_to_hz(note: float) -> float:
    """Equal-tempered frequency of a MIDI note (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def draw_factors(
    rng: np.random.Generator, count: int, sample_rate: int, min_seconds: float = 2.0, max_seconds: float = 4.0
) -> list[ClipFactors]:
    """Draw the factors of ``count`` clips: families balanced (shuffled), everything else uniform."""
    families = rng.permutation(np.resize(np.arange(len(FAMILIES)), count))
    notes = rng.integers(MIDI_RANGE[0], MIDI_RANGE[1] + 1, size=count)
    loudness = rng.uniform(*LOUDNESS_DB_RANGE, size=count)
    envelopes = rng.integers(0, len(ENVELOPES), size=count)
    textures = rng.integers(0, len(NOISE_TEXTURES), size=count)
    noise_levels = rng.uniform(*NOISE_LEVEL_DB_RANGE, size=count)
    lengths = np.rint(rng.uniform(min_seconds, max_seconds, size=count) * sample_rate).astype(np.int64)
    return [
        ClipFactors(
            family=FAMILIES[families[i]],
            midi_note=int(notes[i]),
            loudness_db=round(float(loudness[i]), 2),
            envelope=ENVELOPES[envelopes[i]],
            noise_texture=NOISE_TEXTURES[textures[i]],
            noise_level_db=-math.inf if textures[i] == 0 else round(float(noise_levels[i]), 2),
            num_samples=int(lengths[i]),
        )
        for i in range(count)
    ]


def _tone(factors: ClipFactors, time: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The un-enveloped note of one timbre family (float64)."""
    frequency = factors.frequency_hz
    if factors.family == "sine":
        return np.sin(2 * np.pi * frequency * time)
    if factors.family == "bell":
        index = 2.5 * np.exp(-time / 0.8)
        return np.sin(2 * np.pi * frequency * time + index * np.sin(2 * np.pi * BELL_RATIO * frequency * time))
    # Harmonic families: every harmonic below 0.9 x Nyquist with a random starting phase, summed as the polynomial
    # sum_n c_n z^n in the complex phasor z = exp((2 pi i f - d) t) by Horner's rule (d: the pluck's decay rate, so
    # harmonic n decays as exp(-n d t)); the signal is its imaginary part.
    if factors.family not in ("sawtooth", "clarinet", "pluck"):
        raise ValueError(f"unknown timbre family {factors.family!r}; expected one of {FAMILIES}")
    harmonics = np.arange(1, int(0.45 * sample_rate / frequency) + 1)
    amplitudes = 1.0 / harmonics
    if factors.family == "clarinet":
        amplitudes = np.where(harmonics % 2 == 1, amplitudes, 0.0)
    coefficients = amplitudes * np.exp(1j * rng.uniform(0, 2 * np.pi, size=harmonics.shape[0]))
    decay = 1.5 if factors.family == "pluck" else 0.0
    phasor = np.exp((2j * np.pi * frequency - decay) * time)
    total = np.full(time.shape[0], coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        total = total * phasor + coefficient
    return (total * phasor).imag


def _envelope(kind: str, time: np.ndarray, sample_rate: int) -> np.ndarray:
    """Amplitude envelope in [0, 1] (float64)."""
    duration = time.shape[0] / sample_rate
    release = np.clip((duration - time) / 0.15, 0.0, 1.0)
    if kind == "percussive":
        attack = np.clip(time / 0.005, 0.0, 1.0)
        decay = np.exp(-np.maximum(time - 0.005, 0.0) * (4.6 / duration))
        return attack * decay * np.clip((duration - time) / 0.01, 0.0, 1.0)
    if kind == "sustained":
        return np.clip(time / 0.04, 0.0, 1.0) * release
    if kind == "swell":
        rise = 0.6 * duration
        return (0.5 - 0.5 * np.cos(np.pi * np.clip(time / rise, 0.0, 1.0))) * release
    raise ValueError(f"unknown envelope {kind!r}; expected one of {ENVELOPES}")


def _noise(kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of one texture (float64); zeros for ``none``."""
    if kind == "none":
        return np.zeros(count)
    white = rng.standard_normal(count)
    if kind == "breathy":
        noise = white
    elif kind == "rumble":
        walk = np.cumsum(white)
        noise = walk - np.linspace(walk[0], walk[-1], count)  # brown noise, detrended to start and end at 0
    else:
        raise ValueError(f"unknown noise texture {kind!r}; expected one of {NOISE_TEXTURES}")
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def synthesize(factors: ClipFactors, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Synthesise one clip: float32 mono with its peak at ``factors.loudness_db`` dBFS.

    Args:
        factors: What to synthesise.
        sample_rate: Sample rate in Hz.
        rng: Source of the random phases and noise.
    """
    time = np.arange(factors.num_samples) / sample_rate
    envelope = _envelope(factors.envelope, time, sample_rate)
    note = _tone(factors, time, sample_rate, rng) * envelope
    noise = _noise(factors.noise_texture, factors.num_samples, rng)
    if factors.noise_texture == "breathy":
        noise *= envelope / max(float(np.sqrt(np.mean(envelope**2))), 1e-12)
    if factors.noise_texture != "none":
        note_rms = float(np.sqrt(np.mean(note**2)))
        note = note + noise * note_rms * 10.0 ** (factors.noise_level_db / 20.0)
    peak = max(float(np.abs(note).max()), 1e-12)
    return (note * (10.0 ** (factors.loudness_db / 20.0) / peak)).astype(np.float32)


def generate_synthetic(
    out_root: str | os.PathLike,
    num_clips: int = 1000,
    seed: int = 0,
    sample_rate: int = 16000,
    layout: str = "fsd50k",
    num_eval_clips: int | None = None,
    min_seconds: float = 2.0,
    max_seconds: float = 4.0,
    progress: bool = False,
) -> Path:
    """Write a synthetic labelled data set in the FSD50K layout (see the module docstring).

    Writes ``FSD50K.dev_audio/<fname>.wav`` (``num_clips`` clips, about 90 % ``train`` and 10 % ``val``),
    ``FSD50K.eval_audio/<fname>.wav`` (``num_eval_clips``, default a tenth of ``num_clips``),
    ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` (labels are the timbre families, mids ``/s/timbre_<i>``),
    ``factors.csv`` (every factor of every clip) and ``synthetic.json`` (the parameters). Output is bit-identical
    for the same arguments; if a complete output with the same parameters exists, nothing is written.

    Args:
        out_root: Folder to write into.
        num_clips: Clips in the dev part.
        seed: Seed of every random draw.
        sample_rate: Sample rate in Hz.
        layout: Only ``"fsd50k"``.
        num_eval_clips: Clips in the eval part.
        min_seconds: Shortest clip length.
        max_seconds: Longest clip length.
        progress: Show a progress bar.

    Returns:
        ``out_root``.

    Raises:
        ValueError: Bad arguments, or ``out_root`` already holds FSD50K files not written by this function.
    """
    if layout != "fsd50k":
        raise ValueError(f"unknown synthetic layout {layout!r}; only 'fsd50k' is supported")
    if num_clips < 2:
        raise ValueError(f"num_clips must be at least 2 (one train and one val clip), got {num_clips}")
    if num_eval_clips is None:
        num_eval_clips = max(1, num_clips // 10)
    if num_eval_clips < 0 or not 0 < min_seconds <= max_seconds or sample_rate <= 0 or seed < 0:
        raise ValueError(
            f"bad synthetic parameters: num_eval_clips={num_eval_clips}, seconds=({min_seconds}, {max_seconds}), "
            f"sample_rate={sample_rate}, seed={seed}"
        )
    out_root = Path(out_root)
    params = {
        "format_version": _FORMAT_VERSION,
        "layout": layout,
        "num_clips": num_clips,
        "num_eval_clips": num_eval_clips,
        "seed": seed,
        "sample_rate": sample_rate,
        "min_seconds": min_seconds,
        "max_seconds": max_seconds,
    }
    if _is_complete(out_root, params):
        return out_root
    _clear_previous_output(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    _write_params(out_root, params, complete=False)

    factor_rng = np.random.default_rng([seed, 0])
    factors = draw_factors(factor_rng, num_clips + num_eval_clips, sample_rate, min_seconds, max_seconds)
    num_val = max(1, round(0.1 * num_clips))
    val_positions = set(factor_rng.permutation(num_clips)[:num_val].tolist())
    splits = ["val" if i in val_positions else "train" for i in range(num_clips)] + ["eval"] * num_eval_clips

    truth = out_root / "FSD50K.ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    with open(truth / "vocabulary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for index, family in enumerate(FAMILIES):
            writer.writerow([index, family, _mid(family)])
    with (
        open(truth / "dev.csv", "w", newline="", encoding="utf-8") as dev_handle,
        open(truth / "eval.csv", "w", newline="", encoding="utf-8") as eval_handle,
        open(out_root / FACTORS_FILE, "w", newline="", encoding="utf-8") as factors_handle,
    ):
        dev_writer, eval_writer = csv.writer(dev_handle), csv.writer(eval_handle)
        factors_writer = csv.writer(factors_handle)
        dev_writer.writerow(["fname", "labels", "mids", "split"])
        eval_writer.writerow(["fname", "labels", "mids"])
        factors_writer.writerow(FACTOR_COLUMNS)
        for index in tqdm(range(len(factors)), disable=not progress, unit="clip", desc="synthesising"):
            clip, split, fname = factors[index], splits[index], str(index)
            wave = synthesize(clip, sample_rate, np.random.default_rng([seed, 1, index]))
            part = "eval" if split == "eval" else "dev"
            write_audio(out_root / f"FSD50K.{part}_audio" / f"{fname}.wav", wave, sample_rate)
            if part == "dev":
                dev_writer.writerow([fname, clip.family, _mid(clip.family), split])
            else:
                eval_writer.writerow([fname, clip.family, _mid(clip.family)])
            factors_writer.writerow(
                [
                    fname,
                    split,
                    clip.family,
                    clip.midi_note,
                    clip.pitch_class,
                    f"{clip.loudness_db:.2f}",
                    clip.envelope,
                    clip.noise_texture,
                    "-inf" if clip.noise_texture == "none" else f"{clip.noise_level_db:.2f}",
                    clip.num_samples,
                ]
            )
    (out_root / "FSD50K.eval_audio").mkdir(exist_ok=True)
    _write_params(out_root, params, complete=True)
    return out_root


def _mid(family: str) -> str:
    return f"/s/timbre_{FAMILIES.index(family)}"


def _write_params(out_root: Path, params: dict, complete: bool) -> None:
    text = json.dumps({**params, "complete": complete}, indent=2, sort_keys=True) + "\n"
    (out_root / PARAMS_FILE).write_text(text, encoding="utf-8")


def _read_params(out_root: Path) -> dict | None:
    try:
        return json.loads((out_root / PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _is_complete(out_root: Path, params: dict) -> bool:
    """True when ``out_root`` holds a finished output of these parameters, with every audio file present."""
    recorded = _read_params(out_root)
    if recorded is None or recorded != {**params, "complete": True}:
        return False
    total = params["num_clips"] + params["num_eval_clips"]
    for index in range(total):
        part = "dev" if index < params["num_clips"] else "eval"
        if not (out_root / f"FSD50K.{part}_audio" / f"{index}.wav").is_file():
            return False
    return all((out_root / name).exists() for name in _OUTPUTS)


def _clear_previous_output(out_root: Path) -> None:
    """Remove an earlier synthetic output; refuse to touch FSD50K files this module did not write."""
    present = [name for name in _OUTPUTS if (out_root / name).exists()]
    if not present:
        return
    if _read_params(out_root) is None:
        raise ValueError(
            f"{out_root} already holds {', '.join(present)} but no {PARAMS_FILE}: it looks like data not written "
            "by generate_synthetic; refusing to overwrite it, choose an empty folder"
        )
    for name in present:
        target = out_root / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def synthetic_entries(root: str | os.PathLike, label: str = "family") -> list["ClipEntry"]:
    """Every clip of a synthetic data set (dev and eval parts) labelled by one factor column of ``factors.csv``.

    Args:
        root: A folder written by :func:`generate_synthetic`.
        label: The factor that is the class, e.g. ``"family"`` or ``"pitch_class"``.

    Raises:
        DatasetError: ``factors.csv`` is missing or has no such column.
    """
    from aiaudio.audio.cache import ClipEntry
    from aiaudio.audio.datasets import DatasetError

    path = Path(root) / FACTORS_FILE
    if not path.is_file():
        raise DatasetError(f"{path} is missing: {root} is not a synthetic data set (see `aiaudio synth`)")
    if label not in FACTOR_COLUMNS or label in ("fname", "split", "num_samples"):
        raise DatasetError(f"{path}: {label!r} is not a factor; choose one of {list(FACTOR_COLUMNS[2:-1])}")
    entries = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            part = "FSD50K.eval_audio" if row["split"] == "eval" else "FSD50K.dev_audio"
            audio = Path(root) / part / f"{row['fname']}.wav"
            entries.append(ClipEntry(key=row["fname"], path=audio, labels=(row[label],)))
    return entries
