"""The import graph of edgedx and export/ stays a tree: no cycles, no private names across modules.

Built with ``ast`` over the sources (nothing is imported), counting every import: module level,
inside functions and under ``TYPE_CHECKING`` alike, since a cycle that only a lazy import hides is
still two modules that need each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgedx", "export")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file at ``path``."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in known else (base, alias.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    private = []
    for name, path in known.items():
        for target, imported, line in imports(name, path, known):
            while target not in known and "." in target:  # `import edgedx.backends.base` names a module
                target = target.rsplit(".", 1)[0]
            if target != name:
                edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                private.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{imported}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_built_from_real_imports():
    edges, _ = graph()
    assert "edgedx.pipeline" in edges["edgedx.api"]
    assert "edgedx.results" in edges["edgedx.report"]
    assert "edgedx.dicom" in edges["edgedx.decode"]  # the lazy import inside decode_bytes counts
    assert "edgedx.backends.base" in edges["edgedx.backends.onnxruntime"]
    assert "export.cli" in edges["edgedx.cli"]


def test_there_are_no_import_cycles():
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_another_modules_private_names():
    _, private = graph()
    assert private == []


def test_results_is_a_leaf():
    edges, _ = graph()
    assert edges["edgedx.results"] == set()


@pytest.mark.parametrize("module", ["edgedx.api"])
def test_the_facade_stays_small(module):
    lines = modules()[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"{module} has {lines} lines: move logic into the stage modules"
