"""The package's layout follows its pipeline: stage folders import one way, and modules stay small.

Stages in order: capture -> store -> scoring -> decide -> publish -> run. A module in a stage folder may
import its own stage and earlier ones, never a later stage nor a flat module (``probe_callback/*.py``);
the flat modules (the callback and what wires it) may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "probe_callback"
STAGES = ["capture", "store", "scoring", "decide", "publish", "run"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Dotted names of the package modules (or packages) ``path`` imports, anywhere in it."""
    package = path.relative_to(PACKAGE.parent).parent.parts  # a module's package, or an __init__'s own
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "probe_callback" or n.startswith("probe_callback.")}


def _stage(module: str) -> int | None:
    """Index of a dotted module's stage folder; None for the package itself and its flat modules."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


@pytest.mark.parametrize("path", [p for p in _modules() if p.parent != PACKAGE], ids=lambda p: p.name)
def test_stage_folders_import_one_way(path: Path) -> None:
    own = STAGES.index(path.parent.name)
    for module in _imported(path):
        stage = _stage(module)
        assert stage is not None, f"{path.relative_to(PACKAGE)} imports the flat module {module}"
        assert stage <= own, f"{path.relative_to(PACKAGE)} ({STAGES[own]}) imports {module} ({STAGES[stage]})"


def test_every_module_is_in_a_stage_folder_or_flat() -> None:
    folders = {p.parent.name for p in _modules() if p.parent != PACKAGE}
    assert folders == set(STAGES)


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)
