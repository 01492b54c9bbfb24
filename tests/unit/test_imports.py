"""The package's modules import each other without cycles, counting every import: at module
level, inside functions and under TYPE_CHECKING alike."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sparkdbn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports (`from a import b` counts a.b if it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert {"sparkdbn.logs", "sparkdbn.engine.training", "sparkdbn.outputs"} <= set(graph)
    assert "sparkdbn.logs" in graph["sparkdbn.metrics"]  # edges are seen at all
    assert cycle(graph) is None, " → ".join(cycle(graph) or [])


# docs/architecture.md's table: a module imports only from its own layer and those below.
LAYERS = {
    "kernels": {
        "kernels", "kernels.checks", "kernels.rbm", "kernels.mlp", "kernels.rates",
        "kernels.averaging", "kernels.likelihood", "kernels.monitors",
    },
    "foundations": {
        "config", "data", "datasets", "columns", "staging", "model", "logs", "metrics",
        "errors", "fsutil", "settings", "tables",
    },
    "engine": {"engine"},  # and every engine.* module
    "front": {
        "ml", "outputs", "plots", "prepare", "scaling", "session", "cli", "tracking", "serving",
        "resources.sparkdbn_daemon", "bench", "bench.common", "bench.references",
        "bench.epochs", "bench.layer_core", "bench.suite",
    },
    "jobs": {"jobs"},  # and every jobs.* module
}


def layer_of(module: str) -> int:
    name = module.removeprefix("sparkdbn").removeprefix(".")
    if name == "" or name.startswith("engine"):
        return list(LAYERS).index("engine") if name else 0
    if name.startswith("jobs"):
        return list(LAYERS).index("jobs")
    for rank, members in enumerate(LAYERS.values()):
        if name in members:
            return rank
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def test_modules_import_only_from_their_layer_and_below() -> None:
    upward = [
        f"{module} → {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []
