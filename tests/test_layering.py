"""The package's dependencies run one way, checked on the source (no imports run):
``data``/``registry`` import no package above them, ``tasks`` no training or study code,
``train`` no task or study, ``probe`` no study at module level, and no module imports another
package's private (underscore) name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxreason"

# package (or module) -> packages it must never import, at any depth of the file
FORBIDDEN = {
    "data.py": ("jaxreason.train", "jaxreason.tasks", "jaxreason.studies", "jaxreason.probe"),
    "registry.py": ("jaxreason.train", "jaxreason.tasks", "jaxreason.studies",
                    "jaxreason.probe", "jaxreason.models"),
    "tasks": ("jaxreason.train", "jaxreason.studies"),
    "train": ("jaxreason.tasks", "jaxreason.studies"),
    "models": ("jaxreason.train", "jaxreason.tasks", "jaxreason.studies"),
}


def _parse(path: Path) -> ast.Module:
    """``ast.parse`` of a file, retried when CPython 3.11's AST builder raises its spurious
    "recursion depth mismatch" SystemError (CPython gh-106905: the builder's depth counter
    is shared by the interpreter's threads, so a parse in another thread of the same worker
    can trip it; the file itself is fine)."""
    source = path.read_text()
    for _ in range(2):
        try:
            return ast.parse(source)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e):
                raise
    return ast.parse(source)


def _imports(path: Path, top_level_only: bool = False):
    tree = _parse(path)
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from jaxreason import tasks` imports jaxreason.tasks
                yield node.lineno, f"{node.module}.{a.name}", a.name


def _files(where: str):
    target = PKG / where
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_no_upward_imports(where):
    bad = [f"{p.relative_to(PKG)}:{line} imports {mod}"
           for p in _files(where) for line, mod, _ in _imports(p)
           if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN[where])]
    assert not bad, bad


def test_probe_imports_no_study_at_module_level():
    bad = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _files("probe")
           for line, mod, _ in _imports(p, top_level_only=True)
           if mod.startswith("jaxreason.studies")]
    assert not bad, bad


def test_no_private_names_across_packages():
    bad = []
    for p in _files("."):
        here = p.relative_to(PKG).parts[0]
        for line, mod, name in _imports(p):
            if name and name.startswith("_") and mod.startswith("jaxreason."):
                there = mod.split(".")[1]  # the package (or top-level module) imported from
                if there != here.removesuffix(".py"):
                    bad.append(f"{p.relative_to(PKG)}:{line} imports {mod}")
    assert not bad, bad
