"""The package's shape: every module imports on its own, imports never form a cycle, modules stay short."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = Path(REPO_ROOT) / "skdeep"
MAX_MODULE_LINES = 750  # "about 700": a module past this wants splitting


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _resolve(current: str, level: int, target: str | None) -> str:
    """Absolute module name of a (possibly relative) import made in ``current``."""
    if level == 0:
        return target or ""
    base = current.split(".")
    if not _is_package(current):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _existing(name: str) -> str | None:
    """``name`` if it is a skdeep module, else its closest skdeep parent module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Every skdeep -> skdeep import, including those deferred inside functions."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        current = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(current, node.level, node.module)
                # `from . import x` imports the submodule x when there is one.
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
            for target in targets:
                if target == "skdeep" or target.startswith("skdeep."):
                    found = _existing(target)
                    if found and found != current:
                        graph[current].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_imports_form_no_cycle_even_counting_deferred_imports():
    graph = import_graph()
    # A package's __init__ importing its own submodules is how packages work, not a cycle, as long as
    # the submodules do not import the __init__ back; drop only those parent -> child edges.
    for module, targets in graph.items():
        if _is_package(module):
            graph[module] = {t for t in targets if not t.startswith(module + ".")}
    assert _cycles(graph) == []
    # The graph sees the imports it should (guards the parser itself).
    assert "skdeep.cache" in graph["skdeep.engine"] and "skdeep.sources" in graph["skdeep.engine"]


def test_the_graph_finds_a_cycle_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module is imported with no other skdeep module loaded before it (in any order)."""
    code = textwrap.dedent(
        f"""
        import importlib, sys, traceback
        failures = []
        for name in {MODULES!r}:
            for loaded in [m for m in sys.modules if m == "skdeep" or m.startswith("skdeep.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failures.append(name + ": " + traceback.format_exc(limit=3))
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_short(module):
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
