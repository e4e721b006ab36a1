"""docs/architecture.md tells the truth about sizes, and the tests keep their own layering."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "knapsack_trl"
MODULE_LIMIT, FUNCTION_LIMIT = 600, 80


def _listed_modules() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    sizes = text.split("## Sizes", 1)[1]
    assert f"over {MODULE_LIMIT} lines" in sizes and f"function over {FUNCTION_LIMIT}" in sizes
    return {
        m for line in sizes.splitlines() if line.startswith("- ") for m in re.findall(r"`([\w/]+\.py)`", line)
    }


def _modules() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}


def test_every_module_over_the_limit_is_listed_with_a_reason_and_no_other() -> None:
    sizes = _modules()
    listed = _listed_modules()
    over = {name for name, lines in sizes.items() if lines > MODULE_LIMIT}
    assert listed <= sizes.keys(), f"listed but not in the package: {sorted(listed - sizes.keys())}"
    assert over - listed == set(), (
        f"over {MODULE_LIMIT} lines, not in docs/architecture.md: {sorted(over - listed)}"
    )
    assert listed - over == set(), f"listed in docs/architecture.md but now short: {sorted(listed - over)}"


def test_no_function_is_over_the_limit() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LIMIT:
                    long.append(f"{path.relative_to(PACKAGE)}::{node.name} ({lines})")
    assert long == []


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py), never in a test module."""
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    offenders = []
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[-1] in tests or n.split(".")[0] in tests
            ]
    assert offenders == []
