"""Only the composition points know the composition root: every other module takes the
collaborators it uses in its constructor or signature. Checked on the source (TYPE_CHECKING and
function-level imports included, which import-linter's contracts here leave out)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "greyproxy"
# runtime.py builds everything; the CLI starts it; the API's blueprints reach it through
# api/context.py runtime() (api/app.py takes its type from there).
ALLOWED = {"runtime.py", "api/context.py"}


def _allowed(rel: str) -> bool:
    return rel in ALLOWED or ("/" not in rel and rel.startswith("cli"))


def _absolute(node: ast.ImportFrom, package: list[str]) -> str:
    """The module an ImportFrom reads from, relative ones resolved against the file's package."""
    if node.level == 0:
        return node.module or ""
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_runtime(tree: ast.AST, package: list[str]) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "greyproxy.runtime" or n.startswith("greyproxy.runtime.") for n in names):
            lines.append(node.lineno)
    return lines


def offenders() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if _allowed(rel):
            continue
        package = ["greyproxy", *path.relative_to(PACKAGE).parent.parts]
        for line in _imports_runtime(ast.parse(path.read_text(), str(path)), package):
            found.append(f"greyproxy/{rel}:{line}")
    return found


def test_only_the_composition_points_import_the_runtime():
    assert offenders() == []


def test_the_check_sees_type_checking_and_relative_imports():
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from greyproxy.runtime import Runtime\n"
           "def f():\n    import greyproxy.runtime\n    from greyproxy import runtime\n    from ..runtime import X\n"
           "    from .. import runtime\n    from .context import runtime\n    from . import runtime\n")
    # in greyproxy/api/: `.context.runtime` is the API's accessor and `.runtime` would be api.runtime
    assert _imports_runtime(ast.parse(src), ["greyproxy", "api"]) == [3, 5, 6, 7, 8]
