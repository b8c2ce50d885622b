"""What the mini benchmarks' ``run`` scripts share: paths relative to the repository, stage reports reused when their
configuration is unchanged, and the command line (a config file plus ``key=value`` overrides)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from aiaudio.config import ConfigError, apply_overrides, from_dict, load_yaml
from aiaudio.engine.files import atomic_write_text

LOG = logging.getLogger("benchmarks.pipeline")
REPO = Path(__file__).resolve().parents[1]
ConfigT = TypeVar("ConfigT")


def repo_path(text: str) -> Path:
    """``text`` as a path; a relative one is relative to the repository root."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else REPO / path


def reused_report(path: Path, config: dict[str, Any], run: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """The report in ``path`` when it was made with ``config``; else ``run()``'s, timed (``seconds``) and saved there."""
    if path.is_file():
        report = json.loads(path.read_text(encoding="utf-8"))
        if report.get("config") == config and "seconds" in report:
            LOG.info("%s: done before, reused", what)
            return report
    started = time.perf_counter()
    report = run()
    report["seconds"] = time.perf_counter() - started
    atomic_write_text(path, json.dumps(report, indent=2, default=str))
    LOG.info("%s: %.0f s", what, report["seconds"])
    return report


def run_main(config_class: type[ConfigT], run: Callable[[ConfigT], str], default_config: str, description: str,
             argv: list[str] | None = None) -> int:
    """Parse ``[CONFIG] [key=value ...]``, run, print the results; exit code 2 with the message on a config error."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", nargs="?", default=default_config, help="default %(default)s")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out_dir=runs/mine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        config = from_dict(config_class, apply_overrides(load_yaml(repo_path(args.config)), args.overrides))
        print(run(config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
