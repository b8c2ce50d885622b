"""Build the real-audio mini benchmark from Debian packages, offline from the data sets' own servers.

Three sets, each in the official on-disk layout of the data set it stands in for, so that the toolkit's real readers
read them:

* ``fsd50k/``: an unlabelled pretraining corpus in FSD50K layout (``FSD50K.dev_audio/<fname>.wav`` and
  ``FSD50K.ground_truth/{dev,vocabulary}.csv``) from ufoai-sound (Ogg files inside a ``.pk3`` zip archive),
  sonic-pi-samples, hydrogen-drumkits and wesnoth-1.16-data. The label of a clip is its source package; a seeded
  tenth of the source files is the ``val`` split. Files longer than 30 s (FSD50K's longest clips) are cut into
  consecutive 30 s clips, and all clips of one file share its split.
* ``esc50/``: a sound-event set in ESC-50 layout (``audio/<fold>-<src>-<take>-<target>.wav``, ``meta/esc50.csv``)
  from megaglest-data, which the corpus does not use. The class is the file name without its numbers
  (``swordman_attack7.wav`` is ``swordman_attack``); classes with fewer than 6 distinct clips are dropped.
* ``nsynth/``: an instrument-note set in NSynth layout (``nsynth-{train,valid,test}/examples.json`` and
  ``audio/<note_str>.wav``) rendered from the TimGM6mb General MIDI soundfont with FluidSynth (pyfluidsynth): 4 s
  notes (3 s held, 1 s release, no reverb or chorus, as NSynth's dry notes) at several pitches and velocities for
  each of the 128 melodic programs; near-silent renders are dropped. The class is the program.

Everything is 16 kHz mono PCM16 WAV. Duplicate files (same bytes) are kept once. Files that cannot be decoded are
counted, logged and skipped. ``manifest.json`` lists each package's version, checksum and licences (its Debian
``copyright`` file is copied to ``licences/``) and the counts. Rerunning is cheap: downloaded packages, unpacked
packages and finished sets are reused; a set is built in a ``.partial`` folder and renamed when complete.

    benchmarks/minibench/build [--out data/minibench]

Needs ``apt-get`` and ``dpkg-deb`` (Debian or Ubuntu; the package versions are Debian 12's). No package is installed:
each is fetched with ``apt-get download`` and unpacked into ``<out>/packages``. When no FluidSynth library is
installed, the library and the runtime libraries it needs (``apt-get install --simulate`` tells which) are fetched
and unpacked the same way, and the renderer runs in a subprocess that loads them from there.
"""

from __future__ import annotations

import argparse
import csv
import ctypes.util
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from tqdm import tqdm

from aiaudio.audio.io import AudioReadError, read_audio_bytes, to_int16, write_audio

LOG = logging.getLogger("minibench.build")

SAMPLE_RATE = 16000
CORPUS_PACKAGES: tuple[str, ...] = ("ufoai-sound", "sonic-pi-samples", "hydrogen-drumkits", "wesnoth-1.16-data")
ESC50_PACKAGE = "megaglest-data"
SOUNDFONT_PACKAGE = "timgm6mb-soundfont"
FLUIDSYNTH_PACKAGE = "libfluidsynth3"
DATA_PACKAGES: tuple[str, ...] = (*CORPUS_PACKAGES, ESC50_PACKAGE, SOUNDFONT_PACKAGE)

AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg", ".aiff", ".aif")
ARCHIVE_SUFFIXES: tuple[str, ...] = (".pk3", ".zip")
#: FSD50K's clips last 0.3 s to 30 s: longer source files are cut into 30 s clips, shorter ones dropped.
MAX_CLIP_SECONDS = 30.0
MIN_CLIP_SECONDS = 0.3
#: A clip (or a rendered note) whose peak is below this is treated as silent and dropped (-60 dBFS).
SILENCE_PEAK = 1e-3
VAL_FRACTION = 0.1
MIN_CLIPS_PER_CLASS = 6
SET_NAMES: tuple[str, ...] = ("fsd50k", "esc50", "nsynth")


class BuildError(RuntimeError):
    """The benchmark cannot be built (a tool, a package or a file is missing); the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path | None = None) -> str:
    if shutil.which(command[0]) is None:
        raise BuildError(f"{command[0]} not found: the mini benchmark is built from Debian packages and needs apt-get "
                         "and dpkg-deb (Debian 12 or a derivative)")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def downloaded_deb(debs_dir: Path, package: str) -> Path | None:
    """The ``.deb`` of ``package`` in ``debs_dir``, if one was downloaded already (the newest name if several)."""
    found = sorted(debs_dir.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def download_packages(packages: Iterable[str], debs_dir: Path) -> dict[str, Path]:
    """``apt-get download`` each package not yet in ``debs_dir``; returns package -> ``.deb`` path."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    packages = list(dict.fromkeys(packages))
    missing = [package for package in packages if downloaded_deb(debs_dir, package) is None]
    if missing:
        LOG.info("downloading %s", " ".join(missing))
        _run(["apt-get", "download", *missing], cwd=debs_dir)
    debs = {}
    for package in packages:
        deb = downloaded_deb(debs_dir, package)
        if deb is None:
            raise BuildError(f"apt-get download {package} left no {package}_*.deb in {debs_dir}")
        debs[package] = deb
    return debs


def unpack(deb: Path, into: Path) -> Path:
    """Unpack ``deb`` with ``dpkg-deb -x`` into ``into`` (once: a marker names the unpacked file)."""
    marker = into / ".unpacked"
    if marker.is_file() and marker.read_text() == deb.name:
        return into
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(into)])
    marker.write_text(deb.name)
    return into


def package_facts(package: str, deb: Path, unpacked: Path, licences_dir: Path) -> dict[str, Any]:
    """Version, checksum and licences of an unpacked package; its copyright file is copied to ``licences_dir``."""
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    copyright_file = unpacked / "usr" / "share" / "doc" / package / "copyright"
    licences: list[str] = []
    copied = None
    if copyright_file.is_file():
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
        licences = sorted({match.strip() for match in re.findall(r"^License:[ \t]*(\S[^\n]*)$", text, re.MULTILINE)})
        if not licences:  # not a machine-readable (DEP-5) copyright file: the copied file is the record
            licences = [f"not machine-readable: see licences/{package}.copyright"]
        licences_dir.mkdir(parents=True, exist_ok=True)
        copied = licences_dir / f"{package}.copyright"
        shutil.copyfile(copyright_file, copied)
    return {"version": version, "deb": deb.name, "sha256": sha256, "licences": licences,
            "copyright": copied.name if copied else None}


def fluidsynth_runtime(debs_dir: Path, unpack_root: Path) -> tuple[dict[str, str], list[str]]:
    """Environment under which the renderer subprocess finds a FluidSynth library, and the packages fetched for it.

    An installed library is used as it is. Otherwise ``apt-get install --simulate libfluidsynth3`` lists the
    packages this system lacks for it; they are downloaded and unpacked into ``unpack_root/fluidsynth-runtime`` and
    their library folders put on ``LD_LIBRARY_PATH``.
    """
    if ctypes.util.find_library("fluidsynth"):
        return {}, []
    simulated = _run(["apt-get", "install", "--simulate", "--no-install-recommends", FLUIDSYNTH_PACKAGE])
    needed = [line.split()[1] for line in simulated.splitlines() if line.startswith("Inst ")]
    needed = [package for package in needed if package != SOUNDFONT_PACKAGE]
    if FLUIDSYNTH_PACKAGE not in needed:
        raise BuildError(f"no FluidSynth library found, and apt-get would not install {FLUIDSYNTH_PACKAGE}")
    runtime = unpack_root / "fluidsynth-runtime"
    debs = download_packages(needed, debs_dir)
    for package, deb in debs.items():
        unpack(deb, runtime / package)
    library = sorted(runtime.glob(f"{FLUIDSYNTH_PACKAGE}/usr/lib/*/libfluidsynth.so.*"))
    if not library:
        raise BuildError(f"{debs[FLUIDSYNTH_PACKAGE]} holds no libfluidsynth.so.*")
    folders = sorted({str(path.parent) for path in runtime.glob("*/usr/lib/**/*.so*")})
    path = os.pathsep.join([*folders, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return {"LD_LIBRARY_PATH": path, "MINIBENCH_FLUIDSYNTH_LIBRARY": str(library[0])}, needed


# ---------------------------------------------------------------------------------------------------------------
# Source audio files
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One audio file of a package: a file on disk, or a member of a zip archive (``member`` set).

    ``root`` is the folder the package was unpacked into; ``path`` lies under it.
    """

    package: str
    root: Path
    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        """Where the file lives in its package, e.g. ``usr/share/games/ufoai/base/0sound.pk3:sound/a.ogg``."""
        inside = self.path.relative_to(self.root).as_posix()
        return f"{inside}:{self.member}" if self.member else inside

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(self.member)


def audio_sources(package: str, unpacked: Path) -> list[SourceFile]:
    """The audio files of an unpacked package, in name order, including those inside ``.pk3``/``.zip`` archives."""
    sources = []
    for path in sorted(unpacked.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            sources.append(SourceFile(package, unpacked, path))
        elif suffix in ARCHIVE_SUFFIXES:
            try:
                with zipfile.ZipFile(path) as archive:
                    members = sorted(info.filename for info in archive.infolist() if not info.is_dir())
            except zipfile.BadZipFile as error:
                raise BuildError(f"{path} is not a readable zip archive ({error})") from error
            sources += [SourceFile(package, unpacked, path, m) for m in members if Path(m).suffix.lower() in AUDIO_SUFFIXES]
    return sources


@dataclass
class DecodeCounts:
    """What happened to the source files of one set."""

    files: int = 0
    duplicates: int = 0
    unreadable: int = 0
    silent: int = 0
    too_short: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def decoded_unique(sources: list[SourceFile], counts: DecodeCounts, desc: str) -> Iterable[tuple[SourceFile, np.ndarray]]:
    """Decode each distinct file (by content) to 16 kHz mono; skip (count and log) unreadable and silent ones."""
    seen: set[str] = set()
    for source in tqdm(sources, desc=desc, unit="file"):
        counts.files += 1
        data = source.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            counts.duplicates += 1
            continue
        seen.add(digest)
        try:
            wave = read_audio_bytes(data, f"{source.package}:{source.name}", SAMPLE_RATE)
        except AudioReadError as error:
            counts.unreadable += 1
            LOG.warning("skipped: %s", error)
            continue
        if np.abs(wave).max() < SILENCE_PEAK:
            counts.silent += 1
            continue
        if wave.shape[0] < MIN_CLIP_SECONDS * SAMPLE_RATE:
            counts.too_short += 1
            continue
        yield source, wave


def split_of(name: str, val_fraction: float = VAL_FRACTION) -> str:
    """``train`` or ``val`` for a source file, fixed by a hash of its name (stable across runs and machines)."""
    bucket = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def cut_clips(wave: np.ndarray, max_samples: int, min_samples: int) -> list[np.ndarray]:
    """Consecutive pieces of at most ``max_samples``; a last piece shorter than ``min_samples`` is dropped."""
    pieces = [wave[start:start + max_samples] for start in range(0, wave.shape[0], max_samples)]
    return [piece for index, piece in enumerate(pieces) if index == 0 or piece.shape[0] >= min_samples]


def event_class(file_name: str) -> str:
    """The class of a game sound from its file name: the stem without digits, e.g. ``swordman_attack``."""
    stem = Path(file_name).stem.lower()
    return re.sub(r"[_\-\s]+", "_", re.sub(r"\d+", "", stem)).strip("_")


# ---------------------------------------------------------------------------------------------------------------
# The three sets
# ---------------------------------------------------------------------------------------------------------------


def write_fsd50k_corpus(sources: list[SourceFile], out: Path) -> dict[str, Any]:
    """The pretraining corpus in FSD50K layout, labelled by source package; returns its counts."""
    counts = DecodeCounts()
    audio_dir = out / "FSD50K.dev_audio"
    truth = out / "FSD50K.ground_truth"
    audio_dir.mkdir(parents=True)
    truth.mkdir(parents=True)
    packages = sorted({source.package for source in sources})
    rows, provenance = [], []
    seconds: Counter[str] = Counter()
    clips: Counter[str] = Counter()
    for source, wave in decoded_unique(sources, counts, "pretraining corpus"):
        split = split_of(f"{source.package}:{source.name}")
        pieces = cut_clips(wave, int(MAX_CLIP_SECONDS * SAMPLE_RATE), int(MIN_CLIP_SECONDS * SAMPLE_RATE))
        for piece_index, piece in enumerate(pieces):
            fname = str(len(rows) + 1)
            write_audio(audio_dir / f"{fname}.wav", to_int16(piece), SAMPLE_RATE)
            rows.append([fname, source.package, _mid(source.package), split])
            provenance.append([fname, source.package, source.name, piece_index])
            seconds[split] += piece.shape[0] / SAMPLE_RATE
            clips[f"{source.package}/{split}"] += 1
    with open(truth / "vocabulary.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([index, package, _mid(package)] for index, package in enumerate(packages))
    _write_csv(truth / "dev.csv", ["fname", "labels", "mids", "split"], rows)
    _write_csv(out / "sources.csv", ["fname", "package", "file", "piece"], provenance)
    return {"clips": len(rows), "hours": {k: round(v / 3600, 3) for k, v in sorted(seconds.items())},
            "clips_by_package_split": dict(sorted(clips.items())), "files": counts.as_dict()}


def write_esc50_set(sources: list[SourceFile], out: Path, min_clips: int = MIN_CLIPS_PER_CLASS) -> dict[str, Any]:
    """The sound-event set in ESC-50 layout, classes from file names; returns its counts."""
    counts = DecodeCounts()
    by_class: dict[str, list[tuple[SourceFile, np.ndarray]]] = defaultdict(list)
    for source, wave in decoded_unique(sources, counts, "sound events"):
        by_class[event_class(source.path.name if source.member is None else source.member)].append((source, wave))
    kept = sorted(name for name, clips in by_class.items() if len(clips) >= min_clips and name)
    audio_dir, meta_dir = out / "audio", out / "meta"
    audio_dir.mkdir(parents=True)
    meta_dir.mkdir(parents=True)
    rows, provenance = [], []
    for target, category in enumerate(kept):
        for take_index, (source, wave) in enumerate(by_class[category]):
            source_id = len(rows) + 1
            fold = 1 + take_index % 5
            filename = f"{fold}-{source_id}-A-{target}.wav"
            write_audio(audio_dir / filename, to_int16(wave), SAMPLE_RATE)
            rows.append([filename, fold, target, category, "False", source_id, "A"])
            provenance.append([filename, source.package, source.name])
    _write_csv(meta_dir / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    _write_csv(meta_dir / "sources.csv", ["filename", "package", "file"], provenance)
    dropped = {name: len(clips) for name, clips in sorted(by_class.items()) if name not in kept}
    return {"classes": len(kept), "clips": len(rows), "classes_dropped_below_min_clips": len(dropped),
            "clips_in_dropped_classes": sum(dropped.values()), "files": counts.as_dict()}


@dataclass(frozen=True)
class RenderPlan:
    """Which notes to render from the soundfont (General MIDI bank 0)."""

    programs: tuple[int, ...] = tuple(range(128))
    pitches: tuple[int, ...] = (36, 43, 48, 55, 60, 64, 67, 72, 79, 84)
    velocities: tuple[int, ...] = (50, 90, 127)
    held_seconds: float = 3.0
    total_seconds: float = 4.0
    gain: float = 0.5


def render_nsynth_set(soundfont: Path, out: Path, plan: RenderPlan, env: dict[str, str]) -> dict[str, Any]:
    """Render the instrument-note set in a subprocess (so it can load a FluidSynth unpacked here); its counts."""
    request = {"soundfont": str(soundfont), "out": str(out), "sample_rate": SAMPLE_RATE, "silence_peak": SILENCE_PEAK,
               "min_notes": MIN_CLIPS_PER_CLASS, "plan": vars(plan)}
    command = [sys.executable, str(Path(__file__).with_name("render.py")), json.dumps(request)]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"rendering the NSynth-layout set failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mid(label: str) -> str:
    return f"/debian/{label}"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def build_set(out: Path, params: dict[str, Any], write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build one set into ``out`` unless a complete one with the same ``params`` is there; returns its counts.

    The set is written to ``out.partial`` and renamed when complete, so an interrupted build leaves no half set.
    """
    params = json.loads(json.dumps(params))  # as complete.json holds them (tuples become lists), so equal ones match
    marker = out / "complete.json"
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("params") == params:
            LOG.info("%s: complete, reused", out)
            return done["counts"]
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    counts = write(partial)
    (partial / "complete.json").write_text(json.dumps({"params": params, "counts": counts}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return counts


def build(out: Path, plan: RenderPlan = RenderPlan()) -> dict[str, Any]:
    """Fetch, unpack and convert everything into ``out``; returns the manifest (also written as manifest.json)."""
    out = Path(out)
    debs_dir, packages_dir, licences_dir = out / "debs", out / "packages", out / "licences"
    debs = download_packages(DATA_PACKAGES, debs_dir)
    unpacked = {package: unpack(deb, packages_dir / package) for package, deb in debs.items()}
    facts = {package: package_facts(package, debs[package], unpacked[package], licences_dir) for package in debs}
    for package in CORPUS_PACKAGES:
        facts[package]["used_for"] = "fsd50k (pretraining corpus)"
    facts[ESC50_PACKAGE]["used_for"] = "esc50 (sound events)"
    facts[SOUNDFONT_PACKAGE]["used_for"] = "nsynth (instrument notes)"

    corpus_sources = [s for package in CORPUS_PACKAGES for s in audio_sources(package, unpacked[package])]
    esc_sources = audio_sources(ESC50_PACKAGE, unpacked[ESC50_PACKAGE])
    versions = {package: facts[package]["version"] for package in debs}
    sets = {
        "fsd50k": build_set(out / "fsd50k", {"versions": {p: versions[p] for p in CORPUS_PACKAGES}, "format": 1},
                            lambda where: write_fsd50k_corpus(corpus_sources, where)),
        "esc50": build_set(out / "esc50", {"version": versions[ESC50_PACKAGE], "format": 1},
                           lambda where: write_esc50_set(esc_sources, where)),
    }
    soundfonts = sorted(unpacked[SOUNDFONT_PACKAGE].rglob("*.sf2"))
    if not soundfonts:
        raise BuildError(f"{debs[SOUNDFONT_PACKAGE]} holds no .sf2 soundfont")
    renderer_params = {"version": versions[SOUNDFONT_PACKAGE], "plan": vars(plan), "format": 1}

    def render(where: Path) -> dict[str, Any]:
        env, runtime_packages = fluidsynth_runtime(debs_dir, packages_dir)
        for package in runtime_packages:
            deb = downloaded_deb(debs_dir, package)
            facts[package] = {**package_facts(package, deb, packages_dir / "fluidsynth-runtime" / package,
                                              licences_dir), "used_for": "renderer runtime (not in the data)"}
        return render_nsynth_set(soundfonts[0], where, plan, env)

    sets["nsynth"] = build_set(out / "nsynth", renderer_params, render)
    manifest = {"sample_rate": SAMPLE_RATE, "packages": facts, "sets": sets}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def summary(manifest: dict[str, Any], out: Path) -> str:
    sets = manifest["sets"]
    corpus, esc, nsynth = sets["fsd50k"], sets["esc50"], sets["nsynth"]
    lines = [
        f"mini benchmark in {out}",
        f"  fsd50k  (pretraining): {corpus['clips']} clips, {sum(corpus['hours'].values()):.2f} h "
        f"({', '.join(f'{k} {v:.2f} h' for k, v in corpus['hours'].items())}); files: {corpus['files']}",
        f"  esc50   (sound events): {esc['classes']} classes, {esc['clips']} clips; files: {esc['files']}",
        f"  nsynth  (instrument notes): {nsynth['classes']} classes, {nsynth['notes']} notes, "
        f"{nsynth['silent_dropped']} near-silent renders dropped, {nsynth['programs_dropped']} programs dropped",
        f"  licences and sources: {out / 'manifest.json'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/minibench"), help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = build(args.out)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
