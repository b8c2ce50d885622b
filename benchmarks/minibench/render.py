"""Render the mini benchmark's instrument notes with FluidSynth into NSynth's layout (run by ``build.py``).

Runs as a subprocess, ``python render.py '<json request>'``, so that it can load a FluidSynth library that
``build.py`` unpacked from Debian packages: ``MINIBENCH_FLUIDSYNTH_LIBRARY`` names that library (its dependencies are
on ``LD_LIBRARY_PATH``, which only a new process reads), and pyfluidsynth is pointed at it. Prints its counts as one
JSON line on stdout.

Each note: program change on channel 0 (bank 0), note on, ``held_seconds`` of sound, note off, the rest of
``total_seconds`` as release, then all sounds off and a short silence so no tail reaches the next note. Reverb and
chorus are off. The stereo output is mixed to mono. A render whose peak is below ``silence_peak`` is dropped, and a
program left with fewer than ``min_notes`` notes is dropped whole. Notes go to ``nsynth-{train,valid,test}`` by a hash
of their name (80/10/10), as the released NSynth folders; MetaAudio merges the three and splits by instrument.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np

from aiaudio.audio.io import write_audio

#: General MIDI program groups (8 programs each) and the NSynth instrument family name used for each.
GM_FAMILIES: tuple[str, ...] = (
    "keyboard", "mallet", "organ", "guitar", "bass", "string", "ensemble", "brass",
    "reed", "flute", "synth_lead", "synth_pad", "synth_effect", "ethnic", "percussive", "sound_effect",
)
PARTS: tuple[tuple[str, float], ...] = (("nsynth-train", 0.8), ("nsynth-valid", 0.9), ("nsynth-test", 1.0))


def load_fluidsynth():
    """Import pyfluidsynth, loading the library named by ``MINIBENCH_FLUIDSYNTH_LIBRARY`` when it is set."""
    library = os.environ.get("MINIBENCH_FLUIDSYNTH_LIBRARY")
    if library:
        system_find = ctypes.util.find_library
        ctypes.util.find_library = lambda name: library if "fluidsynth" in name else system_find(name)
    import fluidsynth  # noqa: PLC0415 (after the library is made findable)

    return fluidsynth


def part_of(note_str: str) -> str:
    bucket = int(hashlib.sha1(note_str.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return next(part for part, upper in PARTS if bucket < upper)


def render(request: dict) -> dict:
    fluidsynth = load_fluidsynth()
    plan, rate = request["plan"], int(request["sample_rate"])
    out = Path(request["out"])
    synth = fluidsynth.Synth(gain=plan["gain"], samplerate=rate,
                             **{"synth.reverb.active": 0, "synth.chorus.active": 0})
    soundfont = synth.sfload(request["soundfont"])
    if soundfont < 0:
        raise RuntimeError(f"FluidSynth could not load the soundfont {request['soundfont']}")
    held = int(plan["held_seconds"] * rate)
    release = int(plan["total_seconds"] * rate) - held
    notes_by_program: dict[int, list[tuple[str, dict, np.ndarray]]] = {}
    silent = 0
    for program in plan["programs"]:
        synth.program_select(0, soundfont, 0, program)
        family = GM_FAMILIES[program // 8]
        instrument_str = f"{family}_synthetic_{program:03d}"
        notes = []
        for pitch in plan["pitches"]:
            for velocity in plan["velocities"]:
                synth.noteon(0, pitch, velocity)
                on = synth.get_samples(held)
                synth.noteoff(0, pitch)
                off = synth.get_samples(release)
                synth.all_sounds_off(0)
                synth.get_samples(rate // 10)
                stereo = np.concatenate([on, off]).reshape(-1, 2).astype(np.float32)
                wave = stereo.mean(axis=1) / 32768.0
                if np.abs(wave).max() < request["silence_peak"]:
                    silent += 1
                    continue
                note_str = f"{instrument_str}-{pitch:03d}-{velocity:03d}"
                example = {
                    "note_str": note_str, "instrument_str": instrument_str, "instrument": program,
                    "instrument_family_str": family, "instrument_family": program // 8,
                    "instrument_source_str": "synthetic", "instrument_source": 2, "pitch": pitch,
                    "velocity": velocity, "sample_rate": rate, "qualities": [0] * 10, "qualities_str": [],
                }
                notes.append((note_str, example, wave))
        notes_by_program[program] = notes
    synth.delete()

    kept = {program: notes for program, notes in notes_by_program.items() if len(notes) >= request["min_notes"]}
    examples: dict[str, dict] = {part: {} for part, _ in PARTS}
    for notes in kept.values():
        for note_str, example, wave in notes:
            part = part_of(note_str)
            write_audio(out / part / "audio" / f"{note_str}.wav", wave, rate)
            examples[part][note_str] = example
    for part, part_examples in examples.items():
        (out / part).mkdir(parents=True, exist_ok=True)
        (out / part / "examples.json").write_text(json.dumps(part_examples, indent=1, sort_keys=True) + "\n")
    return {
        "classes": len(kept), "notes": sum(len(notes) for notes in kept.values()),
        "notes_by_part": {part: len(part_examples) for part, part_examples in examples.items()},
        "silent_dropped": silent, "programs_dropped": len(notes_by_program) - len(kept),
        "pyfluidsynth": importlib.metadata.version("pyfluidsynth"),
        "fluidsynth_library": os.environ.get("MINIBENCH_FLUIDSYNTH_LIBRARY") or ctypes.util.find_library("fluidsynth"),
    }


if __name__ == "__main__":
    print(json.dumps(render(json.loads(sys.argv[1]))))
