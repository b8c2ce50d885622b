"""The demo's printout from hand-made reports: every readout's cell, the invariances and the pitch verdicts."""

from __future__ import annotations

from pathlib import Path

from aiaudio.demo import format_report
from aiaudio.eval.fewshot import JOINTLY_READOUT as JOINTLY

FACTORS = ["pitch_shift", "fade_in", "fade_out", "noise", "time_mask", "time_shift", "time_stretch"]


def _report(jointly: float, per_episode: float, chosen_pitch: float, learned_pitch: float) -> dict:
    def row(model: str, readout: str, accuracy: float, **extra) -> dict:
        return {"model": model, "readout": readout, "accuracy": accuracy, "ci95": 0.012, "episodes": 120, **extra}

    return {
        "config": {"episodes": {"ways": 5, "shots": 3, "queries": 2, "test_episodes": 120}},
        "factors": FACTORS,
        "rows": [
            row("amortised", "learned i", per_episode, learned_i=[learned_pitch] + [0.5] * 6),
            row("amortised", "i = all", 0.5, descriptor=[1.0] * 7),
            row("amortised", JOINTLY, jointly, chosen_i=[chosen_pitch] + [0.25] * 6),
            row("baseline", "linear", 0.6),
            row("floor", "MFCC statistics, nearest centroid", 0.45),
        ],
    }


def test_the_demo_report_leads_with_the_invariance_learned_on_validation() -> None:
    reports = {"family": _report(0.787, 0.752, 1.0, 0.88), "midi_note": _report(0.6125, 0.335, 0.0, 0.93)}
    text = format_report({}, reports, {"out_dir": "m"}, Path("out"), 12.0, 5.0)
    lines = text.splitlines()
    header = next(line for line in lines if "task" in line and "MFCC floor" in line)
    assert header.split()[1:4] == ["AI-SimCLR,", "i", "learned"]
    pitch = next(line for line in lines if line.strip().startswith("pitch, MIDI note"))
    assert pitch.split("  ")[-1].strip() == "45.0 ± 1.2"
    cells = [cell for cell in pitch.split("  ") if "±" in cell]
    assert [cell.strip() for cell in cells] == ["61.3 ± 1.2", "33.5 ± 1.2", "50.0 ± 1.2", "60.0 ± 1.2", "45.0 ± 1.2"]
    assert any(line.strip().startswith("midi_note, on validation") and line.split()[3] == "0" for line in lines)
    assert "pitch_shift invariance learned on validation is lower on the pitch task (0 %) than on the timbre task (100 %)" in text
    assert "pitch_shift invariance learned per episode is NOT lower on the pitch task (93 %)" in text
