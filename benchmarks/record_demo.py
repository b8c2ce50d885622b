"""Record an ``aiaudio demo`` or ``aivision demo`` run's figures as JSON: scores per task and readout, learned i,
machine, commit and seeds.

    aiaudio demo --out runs/demo
    python benchmarks/record_demo.py runs/demo benchmarks/results/demo_<machine>.json
    aivision demo --out runs/vision_demo
    python benchmarks/record_demo.py runs/vision_demo benchmarks/results/vision_demo_<machine>.json

The demo's figures depend on the CPU's SIMD path (see the README), so each file names the machine and its
``torch.backends.cpu.get_cpu_capability()``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import commit, machine_info  # noqa: E402


def record_vision(demo_dir: Path) -> dict:
    """Scores and learned i per task and readout of an ``aivision demo`` run."""
    tasks = {}
    for task_dir in sorted((demo_dir / "linear").iterdir()):
        reports = {run.name: json.loads((run / "results.json").read_text(encoding="utf-8")) for run in task_dir.iterdir()}
        tasks[task_dir.name] = {
            f"{run}: {name}": {"metric": report["metric"], "test_score": result["test_score"],
                               "val_score": result["val_score"], "descriptor": result["descriptor"]}
            for run, report in reports.items() for name, result in report["readouts"].items()
        }
    return tasks


def record(demo_dir: Path, command: str | None = None) -> dict:
    """The record of one demo run; ``command``: the command that ran it, when not the plain default."""
    if (demo_dir / "linear").is_dir():
        pretrain = yaml_config(demo_dir / "ai_simclr" / "config.yaml")
        return {
            "benchmark": "vision_demo", "command": command or f"aivision demo --out {demo_dir}", "commit": commit(),
            "machine": {**machine_info(torch.device("cpu")), "cpu_capability": torch.backends.cpu.get_cpu_capability()},
            "seeds": {"pretraining": pretrain["trainer"]["seed"], "splits": 0}, "config": {"pretraining": pretrain},
            "tasks": record_vision(demo_dir),
        }
    tasks = {}
    for results in sorted((demo_dir / "fewshot").glob("*/results.json")):
        report = json.loads(results.read_text(encoding="utf-8"))
        rows = {f"{row['model']}: {row['readout']}": {key: row[key] for key in ("accuracy", "ci95", "episodes", "chosen_i")
                                                       if key in row}
                for row in report["rows"]}
        learned = next((row["learned_i"] for row in report["rows"] if row.get("learned_i")), None)
        tasks[results.parent.name] = {"rows": rows, "learned_i": dict(zip(report["factors"], learned or []))}
        config = report["config"]
    if not tasks:
        raise SystemExit(f"{demo_dir} holds no fewshot/*/results.json: run `aiaudio demo --out {demo_dir}` first")
    pretrain = yaml_config(demo_dir / "ai_simclr" / "config.yaml")
    return {
        "benchmark": "demo",
        "command": command or f"aiaudio demo --out {demo_dir}",
        "commit": commit(),
        "machine": {**machine_info(torch.device("cpu")), "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "seeds": {"pretraining": pretrain["trainer"]["seed"], "episodes": config["episodes"]["seed"]},
        "config": {"pretraining": pretrain, "episodes": config["episodes"], "learner": config["learner"]},
        "tasks": tasks,
    }


def yaml_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", help="the command that ran the demo (with its environment and overrides)")
    args = parser.parse_args()
    report = record(args.demo_dir, args.command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["tasks"], indent=2))


if __name__ == "__main__":
    main()
