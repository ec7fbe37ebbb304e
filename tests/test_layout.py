"""The package's import graph has no circle: no module imports one that imports it back.

Every import statement counts — at module level, inside functions and under ``if TYPE_CHECKING:``
— because each one is a dependency a reader has to hold in mind. Run this file alone to check a
layout change: ``pytest -q tests/test_layout.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "autoprompt_kit"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package's modules one import statement reaches (``from . import x`` reaches submodule x)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
    reached = set()
    for name in names:
        while name and name not in known:  # ``a.b.C`` (a class) is module ``a.b``
            name = name.rpartition(".")[0]
        if name and name != module:
            reached.add(name)
    return reached


def import_graph() -> dict[str, set[str]]:
    """Each module of the package → the modules of the package it imports."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for module, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(module, is_package, node, known)
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per circle found by depth-first search (``a → b → a``), empty when there is none."""
    found, state = [], {}  # state: 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_imports_of_every_kind():
    graph = import_graph()
    # A relative import, a function-level one and a submodule imported by name are all seen.
    assert "autoprompt_kit.errors" in graph["autoprompt_kit.data.task"]
    assert "autoprompt_kit.methods" in graph["autoprompt_kit"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" → ".join(c) for c in found)
