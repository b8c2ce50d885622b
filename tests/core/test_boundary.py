"""The core knows no modality, and commands sit on top: two import rules, checked statically and at run time.

1. The core (``aiaudio.invariance``, ``seeding``, ``config``, ``nn``, ``methods``, ``engine``, ``eval``) imports nothing
   of ``aiaudio.audio``, the command modules, ``aiaudio.encoder``, torchaudio, soundfile, librosa or audiomentations,
   and neither do the tests under ``tests/core``.
2. No module below the commands imports a command module (only ``demo`` and ``cli`` wire commands together).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "aiaudio"
CORE = ("aiaudio.invariance", "aiaudio.seeding", "aiaudio.config", "aiaudio.nn", "aiaudio.methods", "aiaudio.engine",
        "aiaudio.eval")
COMMANDS = ("aiaudio.pretrain", "aiaudio.fewshot", "aiaudio.readout", "aiaudio.measure", "aiaudio.embed",
            "aiaudio.demo", "aiaudio.cli")
FORBIDDEN_IN_CORE = ("aiaudio.audio", "aiaudio.encoder", *COMMANDS, "torchaudio", "soundfile", "librosa",
                     "audiomentations", "aivision")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (a function-level import counts too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def falls_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def core_files() -> list[Path]:
    files = [path for path in PACKAGE.rglob("*.py") if falls_under(module_name(path), CORE)]
    assert len(files) > 20, files  # the walk found the core
    return files


def test_the_core_imports_no_modality_and_no_command_statically() -> None:
    offences = {
        module_name(path): sorted(name for name in imported_modules(path) if falls_under(name, FORBIDDEN_IN_CORE))
        for path in [*core_files(), *sorted((REPO / "tests" / "core").glob("*.py"))]
    }
    assert {name: bad for name, bad in offences.items() if bad} == {}


def test_aivision_imports_only_the_core() -> None:
    """The vision side reuses the core and never the audio side (nor an audio command)."""
    audio_side = ("aiaudio.audio", "aiaudio.encoder", *COMMANDS, "torchaudio", "soundfile", "librosa", "audiomentations")
    files = sorted((REPO / "aivision").rglob("*.py"))
    assert files
    offences = {
        module_name(path): sorted(m for m in imported_modules(path) if falls_under(m, audio_side))
        for path in files
    }
    assert {name: bad for name, bad in offences.items() if bad} == {}


def test_nothing_below_the_commands_imports_a_command() -> None:
    wiring = ("aiaudio.demo", "aiaudio.cli", "aiaudio.__main__")
    offences = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if falls_under(name, wiring):
            continue
        bad = sorted(m for m in imported_modules(path) if falls_under(m, COMMANDS) and not falls_under(name, (m,)))
        if bad:
            offences[name] = bad
    assert offences == {}


def test_the_core_and_its_tests_import_with_the_audio_packages_made_unimportable() -> None:
    """Importing every core module and every test module of tests/core works with the audio side blocked."""
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys
        blocked = {FORBIDDEN_IN_CORE!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in blocked):
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}, {str(REPO / "tests" / "core")!r}]
        import aiaudio
        names = []
        for core in {CORE!r}:
            module = importlib.import_module(core)
            names.append(core)
            if hasattr(module, "__path__"):
                for info in pkgutil.walk_packages(module.__path__, core + "."):
                    importlib.import_module(info.name)
                    names.append(info.name)
        for test in {sorted(p.stem for p in (REPO / "tests" / "core").glob("*.py"))!r}:
            importlib.import_module(test)
        leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in blocked))
        assert not leaked, leaked
        print(len(names))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) > 20


def test_every_fault_listed_in_the_fault_suite_is_a_real_test() -> None:
    """tests/faults.py names tests by file and function: each must exist, so the reliability table never lists a
    fault no test injects."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from faults import FAULTS

    missing = []
    for key in FAULTS:
        path, name = key.split("::")
        source = (REPO / path).read_text(encoding="utf-8") if (REPO / path).is_file() else ""
        if f"def {name}(" not in source:
            missing.append(key)
    assert missing == [] and len(FAULTS) > 40
