"""The layout shows the data flow: index -> assistant -> eval; prompts is a leaf (../shared/STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "index": {"assistant", "eval", "prompts"},
    "assistant": {"eval"},
    "prompts": {"assistant", "index", "eval"},
}
# The `madoguchi` command is the composition root of every sub-command (serve, index, eval): it may
# reach every package (assistant/voc_cli.py holds some of its voc sub-commands).
ENTRY_POINTS = {"assistant/cli.py", "assistant/voc_cli.py"}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downstream(package: str) -> None:
    offenders = {
        str(f.relative_to(REPO)): sorted(_imported_packages(f) & FORBIDDEN[package])
        for f in (REPO / package).rglob("*.py")
        if _imported_packages(f) & FORBIDDEN[package] and str(f.relative_to(REPO)) not in ENTRY_POINTS
    }
    assert offenders == {}


def test_nobody_imports_the_eval_package_bare() -> None:
    for f in REPO.rglob("*.py"):
        if ".venv" in f.parts:
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        bare = [
            n for n in ast.walk(tree) if isinstance(n, ast.Import) and any(a.name == "eval" for a in n.names)
        ]
        assert not bare, f"{f}: `import eval` shadows the builtin; use `from eval.x import y`"
