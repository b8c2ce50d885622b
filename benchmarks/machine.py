"""What machine a benchmark ran on, for the JSON it prints."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def machine_info(device: torch.device) -> dict[str, object]:
    """CPU model and count, torch version and threads, and the device the benchmark used."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
    }


def commit() -> str:
    """The repository's commit, with ``+changes`` when the working tree differs from it (or "unknown")."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that ran ``script`` (a benchmark's ``__file__``) with ``argv`` (default: this process's
    arguments), its path relative to the repository, for a record."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return " ".join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])
