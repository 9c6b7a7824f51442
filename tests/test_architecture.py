"""How the code is laid out: trace-forge's modules import one way (grounding <- tasks <- teachers <- search <-
linearize/dataset <- publish <- cli) with no cycle, and grounded-rl uses trace-forge's public API only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACE_FORGE = ROOT / "packages" / "trace-forge" / "src" / "trace_forge"
GROUNDED_RL = ROOT / "packages" / "grounded-rl" / "src" / "grounded_rl"

# Layer of each part of trace-forge; a module may import its own layer and the layers below.
LAYERS = [
    {"trace_forge", "trace_forge.errors", "trace_forge.durable"},
    {"trace_forge.grounding"},
    {"trace_forge.tasks"},
    {"trace_forge.teachers"},
    {"trace_forge.search", "trace_forge.stats"},
    {"trace_forge.linearize", "trace_forge.dataset", "trace_forge.card", "trace_forge.show"},
    {"trace_forge.publish"},
    {"trace_forge.cli"},
]


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == part or module.startswith(part + ".") for part in layer if part != "trace_forge"):
            return i
    assert module == "trace_forge", module
    return 0


def _imports(path: Path, package: str) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import of ``package`` in a file, type-checking-only imports left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == package:
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == package]
    return found


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in TRACE_FORGE.rglob("*.py"):
        module = _module_name(path, TRACE_FORGE)
        graph[module] = {target for target, _, _ in _imports(path, "trace_forge")}
    return graph


def test_trace_forge_imports_point_one_way():
    wrong = []
    for path in sorted(TRACE_FORGE.rglob("*.py")):
        module = _module_name(path, TRACE_FORGE)
        for target, _, line in _imports(path, "trace_forge"):
            if _layer(target) > _layer(module):
                wrong.append(f"{module}:{line} imports {target}")
    assert wrong == []


def test_trace_forge_has_no_import_cycle():
    graph = _edges()

    def resolve(target: str) -> str | None:
        while target and target not in graph:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in (resolve(x) for x in targets) if t and t != m} for m, targets in graph.items()}
    # A package imports its own submodules to re-export them; that is not a dependency loop.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("path", sorted(GROUNDED_RL.rglob("*.py")), ids=lambda p: p.name)
def test_grounded_rl_uses_the_public_api_of_trace_forge(path):
    for module, names, line in _imports(path, "trace_forge"):
        assert not any(part.startswith("_") for part in module.split(".")), f"{path.name}:{line}: {module}"
        imported = importlib.import_module(module)
        public = set(getattr(imported, "__all__", ()))
        for name in names:
            is_module = importlib.util.find_spec(f"{module}.{name}") is not None if hasattr(imported, "__path__") \
                else False
            assert name in public or is_module, f"{path.name}:{line}: {name} is not in {module}.__all__"
