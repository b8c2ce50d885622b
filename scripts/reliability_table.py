"""Render the fault suite's report (written by the test run with RELIABILITY_REPORT=...) as docs/reliability.md.

    RELIABILITY_REPORT=runs/reliability.json .venv/bin/python -m pytest
    .venv/bin/python scripts/reliability_table.py runs/reliability.json docs/reliability.md
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path


def render(report: dict, commit: str) -> str:
    rows = report["rows"]
    outcomes = Counter(outcome for row in rows for outcome in row["outcomes"])
    held = sum(1 for row in rows if row["outcomes"] and all(o == "passed" for o in row["outcomes"]))
    lines = [
        "# Reliability: the faults injected and what held",
        "",
        f"Made by the test suite itself (`tests/faults.py` lists each fault test; commit {commit[:12]}, "
        f"{platform.machine()} {platform.system()}, Python {platform.python_version()}): "
        f"{len(rows)} fault tests, {sum(outcomes.values())} cases run, {outcomes.get('passed', 0)} held, "
        f"{outcomes.get('failed', 0)} failed, {outcomes.get('skipped', 0)} skipped; {held} of {len(rows)} tests held in "
        "every case. Rerun: `RELIABILITY_REPORT=runs/reliability.json .venv/bin/python -m pytest`, then "
        "`.venv/bin/python scripts/reliability_table.py runs/reliability.json docs/reliability.md`.",
        "",
    ]
    for area in dict.fromkeys(row["area"] for row in rows):
        lines += [f"## {area}", "", "| fault injected | what must hold | cases | outcome | test |", "|---|---|---|---|---|"]
        for row in (r for r in rows if r["area"] == area):
            counts = Counter(row["outcomes"])
            outcome = ", ".join(f"{n} {name}" for name, n in counts.items()) if counts else "not run"
            lines.append(f"| {row['fault']} | {row['holds']} | {len(row['outcomes'])} | {outcome} | "
                         f"`{row['test'].split('::')[-1]}` |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    report = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    Path(sys.argv[2]).write_text(render(report, commit), encoding="utf-8")
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
