"""The code stays easy to read: no production function over 80 lines (issue 18's rule; ruff's complexity rules
catch branching and statement counts, not length)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("contracts", "deploy", "gateway", "prompt-service", "registry-service", "dispatch-service")
PRODUCTION += ("stats-service", "ui")
MAX_LINES = 80


def production_files() -> list[Path]:
    files = [path for top in PRODUCTION for path in (ROOT / top / "src").rglob("*.py")]
    return [path for path in files if "migrations" not in path.parts]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_every_service_folder_is_read() -> None:
    assert len(production_files()) > 100


def test_no_production_function_is_over_80_lines() -> None:
    too_long = [entry for path in production_files() for entry in long_functions(path)]
    assert too_long == [], f"split these functions (at most {MAX_LINES} lines each): {too_long}"
