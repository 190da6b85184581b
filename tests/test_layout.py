"""Tests mirror the package: `src/rlhfkit/<path>/<module>.py` is tested in
`tests/<path>/test_<module>.py` (a package's `__init__.py` in `tests/<path>/test_<package>.py`),
so a module's test is found by its path. Read from the source tree, nothing imported.

- Every module with behaviour (a function or a method; not only constants, dataclass fields
  or re-exports) has its mirrored test file, unless `NO_MIRROR` below says why not.
- Every test file mirrors a module: `test_<module>.py`, or `test_<module>_<aspect>.py` for a
  second file of one module (`test_dpo_trl.py`: `loops/dpo.py` against TRL), in the folder
  that mirrors the module's package; or it tests the command line as a whole and is listed
  in `CROSS_CUTTING` (those stay at the top of tests/).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rlhfkit"
TESTS = ROOT / "tests"

# Modules with behaviour and no mirrored test file yet, each with where its tests are now
# (none today: the pipeline's and the report's moved to their mirrored files).
NO_MIRROR: dict[str, str] = {}

# Test files of the command line as a whole (several commands, the repository itself).
CROSS_CUTTING = {
    "test_chain.py": "the whole chain on 14 model families",
    "test_cli_errors.py": "bad input: one line, exit 2, before torch loads, for every command",
    "test_chat_format.py": "instruct models see their own chat format in every stage",
    "test_compare_seeds.py": "scripts/compare_seeds.py",
    "test_docs.py": "the MkDocs site builds strictly",
    "test_import_graph.py": "no import circle in src/rlhfkit",
    "test_layout.py": "this file",
    "test_real.py": "the whole chain on a real checkpoint, SmolLM2-135M-Instruct (make test-real)",
    "test_pure_imports.py": "ops/, losses.py and data/ranking.py stay free of heavy imports",
}


def _has_behaviour(path: Path) -> bool:
    """A function or a method anywhere in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))


def _mirror(module: Path) -> Path:
    """The test file of a module: tests/<package path>/test_<module>.py."""
    rel = module.relative_to(SRC)
    if rel.name == "__init__.py":
        return TESTS / rel.parent.parent / f"test_{rel.parent.name}.py"
    return TESTS / rel.parent / f"test_{rel.stem}.py"


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_with_behaviour_has_its_mirrored_test_file():
    missing = [
        f"{m.relative_to(SRC)} -> {_mirror(m).relative_to(ROOT)}"
        for m in _modules()
        if _has_behaviour(m)
        and str(m.relative_to(SRC)) not in NO_MIRROR
        and not _mirror(m).exists()
    ]
    assert not missing, "modules without their test file:\n" + "\n".join(missing)


def test_the_exceptions_are_still_needed():
    """An entry goes once its module has its test file (or lost its behaviour, or went)."""
    stale = [
        name
        for name in NO_MIRROR
        if not (SRC / name).exists()
        or not _has_behaviour(SRC / name)
        or _mirror(SRC / name).exists()
    ]
    assert not stale, f"remove from NO_MIRROR: {stale}"


def test_every_test_file_mirrors_a_module_or_is_cross_cutting():
    stems: dict[Path, set[str]] = {}  # tests folder -> the module names it may mirror
    for m in _modules():
        t = _mirror(m)
        stems.setdefault(t.parent, set()).add(t.stem.removeprefix("test_"))
    stray = []
    for t in sorted(TESTS.rglob("test_*.py")):
        if t.parent == TESTS and t.name in CROSS_CUTTING:
            continue
        name = t.stem.removeprefix("test_")
        here = stems.get(t.parent, set())
        if name not in here and not any(name.startswith(f"{s}_") for s in here):
            stray.append(str(t.relative_to(ROOT)))
    assert not stray, (
        "test files that mirror no module (name them tests/<package path>/test_<module>.py, "
        "or list a command-line-wide one in CROSS_CUTTING):\n" + "\n".join(stray)
    )
    assert all((TESTS / name).exists() for name in CROSS_CUTTING)
