"""The one-way stack: every import statement in the project's packages (function-level ones included) points
down the declared layer order, and no two files import each other, directly or around a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom first: a package may import only itself and the packages before it (docs/architecture.md).
LAYERS = ("spec", "numerics", "checkpoint", "plugins", "runtime", "model_repo", "builder", "deploy", "regression")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in (ROOT / pkg).rglob("*.py"):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[mod.removesuffix(".__init__")] = path
    return out


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `mod` imports, resolved to files (`from pkg import sub` counts as pkg.sub)."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_import_points_down_the_stack(graph):
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = sorted(f"{a} imports {b}" for a, bs in graph.items() for b in bs
                    if rank[b.split(".")[0]] > rank[a.split(".")[0]])
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_file_import_cycles(graph):
    assert _cycles(graph) == []


def test_the_checker_sees_a_cycle():
    """Negative control: a loop through a function-level import, as the stack once had, is found."""
    g = {"builder.calibrate": {"runtime.api"}, "runtime.api": {"checkpoint.convert"},
         "checkpoint.convert": {"builder.calibrate"}, "spec.network": set()}
    assert _cycles(g) == [["builder.calibrate", "checkpoint.convert", "runtime.api"]]


def test_every_package_is_in_the_stack():
    pkgs = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert pkgs <= set(LAYERS) | {"tests"}, f"a package outside the declared stack: {pkgs - set(LAYERS)}"
