"""The package's import graph, read from its source (ast, every ``import`` statement, lazy ones
inside functions included): no circles, and nothing imports upward.

Layers, lowest first (README, "Where things live"):

0. helpers: ``_checks``, ``_settings``, ``_shards``, ``_text``, ``_files``;
1. measure and prune: ``counting/``, ``pruning/``, ``patterns``, ``schedules``, ``speed``,
   ``compact``, ``ort``;
2. decide: ``control/``;
3. the Lightning side: ``callback``, ``lightning``, ``_lightning``, ``lightning_cli``,
   ``loggers/``, ``averaging``;
4. applications: ``demo/``, ``sweeps/``, ``cli/``;
5. the package root (``__init__``, which exports from every layer) and ``_moved`` (old paths).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "lightning_sparsity"
PACKAGE = "lightning_sparsity"

LAYERS = {
    0: ("_checks", "_settings", "_shards", "_text", "_files"),
    1: ("counting", "pruning", "patterns", "schedules", "speed", "compact", "ort"),
    2: ("control",),
    3: ("callback", "lightning", "_lightning", "lightning_cli", "loggers", "averaging"),
    4: ("demo", "sweeps", "cli"),
    5: ("__init__", "_moved"),
}
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities")
APPLICATIONS = ("cli", "sweeps", "demo")
LIGHTNING_FREE = ("counting", "pruning", "control")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def imported(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for each module ``name``'s source imports (names resolved to the
    module that defines them when they are modules themselves)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno


def edges() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    out: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        out[name] = {m for m, _ in imported(name, path) if m in MODULES and m != name}
    return out


def piece(name: str) -> str:
    """The part of the package a module belongs to: its first name under the package."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    found = [n for n, pieces in LAYERS.items() if piece(name) in pieces]
    assert len(found) == 1, f"{name} is in no layer (or in several): add it to LAYERS"
    return found[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_lazy_imports_and_relative_ones() -> None:
    # a lazy import inside a function, and a name imported from a package that is a module
    demo = dict(
        imported("lightning_sparsity.cli.commands", MODULES["lightning_sparsity.cli.commands"])
    )
    assert "lightning_sparsity.demo.run" in demo  # inside the demo command's body
    assert "lightning_sparsity.cli.targets" in demo
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_circles() -> None:
    assert cycles(edges()) == []


def test_no_circles_between_the_parts_of_the_package() -> None:
    parts: dict[str, set[str]] = {}
    for source, targets in edges().items():
        if piece(source) == "__init__":
            continue  # the root exports from every part
        parts.setdefault(piece(source), set()).update(
            piece(t) for t in targets if piece(t) not in (piece(source), "__init__")
        )
    assert cycles(parts) == []


def test_nothing_imports_a_higher_layer() -> None:
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in edges().items()
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]
    assert upward == []


@pytest.mark.parametrize("part", LIGHTNING_FREE)
def test_measure_prune_and_decide_import_no_lightning_and_no_application(part: str) -> None:
    bad = [
        f"{name}:{line} imports {target}"
        for name, path in MODULES.items()
        if piece(name) == part
        for target, line in imported(name, path)
        if target.split(".")[0] in LIGHTNING
        or (target.startswith(PACKAGE + ".") and piece(target) in APPLICATIONS)
    ]
    assert bad == []


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        layer(name)
