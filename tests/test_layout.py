"""The layers point one way: no sub-package (or top-level module) of sharpcli imports one that
imports it back, the CLI is imported by nothing but `sharp`'s entry point, and the numerical
core (linalg) knows nothing of models, data or files."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sharpcli"


def _unit(parts: tuple[str, ...]) -> str | None:
    """The layer a dotted name under sharpcli belongs to; None for the package itself (its
    __init__ only re-exports, lazily, and __version__ is read from it)."""
    return parts[1] if len(parts) > 1 else None


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("").parts
        source = _unit(rel if rel[-1] != "__init__" else rel[:-1]) or "__init__"
        if source == "__init__":
            continue
        source = source.removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = tuple(name.split("."))
                if parts[0] == "sharpcli" and (target := _unit(parts)) not in (None, source):
                    edges[source].add(target)
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_layer_imports_one_that_imports_it_back():
    edges = import_graph()
    assert {"cli", "training", "spectra", "hessian", "linalg", "sources"} <= set(edges)
    cycles = sorted((a, b) for a in edges for b in edges[a] if a in reachable(edges, b))
    assert not cycles


def test_the_cli_is_on_top_and_linalg_at_the_bottom():
    edges = import_graph()
    assert [a for a in edges if "cli" in edges[a]] == ["__main__"]
    assert reachable(edges, "linalg") <= {"checks", "errors", "sizes"}
    assert not reachable(edges, "sources") & {"hessian", "training", "spectra", "cli", "workload"}
