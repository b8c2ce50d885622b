"""What every command line of the toolkit shares: logging on rank 0, config subcommands, and error handling.

A known error (a bad config key, a missing file, a data set that does not read) is printed as one line naming the
key or file, exit code 2; a diverged run stops with exit code 3; a run stopped by SIGTERM (after saving its
checkpoint) with exit code 4; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiaudio.config import ConfigError, DataError
from aiaudio.engine.checkpoint import CheckpointWriteError
from aiaudio.engine.files import FolderInUseError
from aiaudio.engine.runtime import tune_cpu_allocator
from aiaudio.engine.trainer import NonFiniteLossError, TrainingStopped


def setup_logging() -> None:
    """INFO on rank 0, warnings only on the other ranks of a distributed run."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def add_config_command(
    sub: argparse._SubParsersAction, name: str, help_text: str, func: Callable[[argparse.Namespace], int],
    example: str = "trainer.lr=5e-4",
) -> argparse.ArgumentParser:
    """A subcommand that takes a CONFIG file and ``key.sub=value`` overrides."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help=f"key.sub=value, e.g. {example}")
    parser.set_defaults(func=func)
    return parser


def run_demo(config: Path, demo: Callable[[Path, Path, list[str]], str], out: str, overrides: list[str]) -> int:
    """Run a modality's demo (``demo(out, config_dir, overrides) -> report``) from its config, print the report and
    the wall time."""
    if not config.is_file():
        raise ConfigError(f"the demo config {config} is missing: run the demo from a source checkout")
    start = time.perf_counter()
    print(demo(Path(out), config.parent, overrides))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; everything it wrote is under {out}")
    return 0


def run_command(
    program: str, parser: argparse.ArgumentParser, argv: list[str] | None,
    known_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run the chosen subcommand, and turn known errors into a one-line message and an exit code."""
    args = parser.parse_args(argv)
    setup_logging()
    tune_cpu_allocator()
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, FolderInUseError, CheckpointWriteError, *known_errors) as error:
        print(f"{program} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"{program} {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except TrainingStopped as error:
        print(f"{program} {args.command}: {error}", file=sys.stderr)
        return 4
