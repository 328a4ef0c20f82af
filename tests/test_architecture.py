"""The floors of the code base (docs/architecture.md), checked on the import statements themselves.

utils/ (ground) imports nothing of the project; data/ (the training input) and models/ import only utils/
(and their own package); prepare/ (a real city's preparation, which writes the training input) stands on
data/; synthetic/ (the built-in city, drawn with the preparation's graph and tile index) on prepare/;
engine/ imports all of those; the scripts and benchmarks stand on top. No project import
may hide inside a function or class body, where it would dodge a cycle instead of removing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "data", "models", "prepare", "synthetic", "engine")
# What each package may import from the project, besides itself.
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "models": {"utils"},
    "prepare": {"utils", "data"},
    "synthetic": {"utils", "data", "prepare"},
    "engine": {"utils", "data", "models", "prepare", "synthetic"},
}
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py"))


def _project_module(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Top-level project packages or scripts an import statement names."""
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative import: stays inside its own package
            return []
        names = [node.module or ""]
    else:
        names = [a.name for a in node.names]
    top = [n.split(".")[0] for n in names]
    return [t for t in top if t in PACKAGES or f"{t}.py" in SCRIPTS]


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported project package, at module level)`` of every project import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module_level = {id(n) for n in tree.body}
    # Imports under a module-level ``if``/``try`` (optional dependencies, TYPE_CHECKING) count as
    # module level; anything inside a def or class does not.
    for top in tree.body:
        if isinstance(top, (ast.If, ast.Try)):
            module_level |= {id(n) for n in ast.walk(top) if not isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for pkg in _project_module(node):
                out.append((node.lineno, pkg, id(node) in module_level))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_runs_upward(package):
    wrong = [
        f"{p.relative_to(ROOT)}:{line} imports {pkg}"
        for p in _files(package)
        for line, pkg, _ in _imports(p)
        if pkg != package and pkg not in ALLOWED[package]
    ]
    assert not wrong, "imports that run upward or sideways: " + "; ".join(wrong)


@pytest.mark.parametrize("where", [*PACKAGES, "scripts", "benchmarks"])
def test_no_project_import_hides_in_a_function(where):
    files = [ROOT / s for s in SCRIPTS] if where == "scripts" else _files(where)
    hidden = [
        f"{p.relative_to(ROOT)}:{line} imports {pkg} inside a function"
        for p in files
        for line, pkg, top in _imports(p)
        if not top
    ]
    assert not hidden, "; ".join(hidden)


def test_the_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom engine.pretrain import x\n\ndef f():\n    from prepare.graph import y\n")
    found = _imports(bad)
    assert (2, "engine", True) in found and (5, "prepare", False) in found
