"""The code's shape, kept: short functions, imports at the top, model knowledge in the models.

(The import layers and the absence of cycles are import-linter's contracts in pyproject.toml,
which ``make test`` runs.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ulsad_bench"
MAX_FUNCTION_LINES = 80
MODEL_NAMES = (
    "ulsad",
    "padim",
    "patchcore",
    "dfr",
    "efficientad",
    "cflow",
    "fastflow",
    "draem",
    "reverse_distillation",
)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_project_is_imported_at_the_top_of_a_module_unless_a_comment_says_why() -> None:
    hidden = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                own = isinstance(inner, ast.ImportFrom) and (inner.level > 0 or str(inner.module).startswith("ulsad"))
                own = own or (isinstance(inner, ast.Import) and any(a.name.startswith("ulsad") for a in inner.names))
                if own and not any("#" in lines[i] for i in (inner.lineno - 2, inner.lineno - 1)):
                    hidden.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}")
    assert not hidden, hidden


def test_no_branch_on_a_model_name_outside_the_models_and_the_report() -> None:
    names = "|".join(MODEL_NAMES)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']""")
    found = []
    for path in _modules():
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("models", "report"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, found
