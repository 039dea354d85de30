"""The package's import graph: imports point one way along the data flow, with no cycle (issue 26)."""

from __future__ import annotations

import ast
from pathlib import Path

import handeye

SRC = Path(handeye.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The handeye modules ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_the_package_has_no_import_cycle():
    assert len(MODULES) > 20 and GRAPH["handeye.pretrain"]  # the graph was read
    assert find_cycle(GRAPH) is None


def test_rl_backends_and_trainer_never_import_the_stage():
    """train -> envs.isaaclab -> runner, train -> runner: the Isaac Lab entry point reuses the trainer."""
    for name, deps in GRAPH.items():
        if name.startswith(("handeye.rl.envs", "handeye.rl.runner")):
            assert "handeye.rl.train" not in deps, name
    assert "handeye.rl.runner" in GRAPH["handeye.rl.envs.isaaclab.train"]


def test_shared_layers_do_not_import_stages():
    """data and models sit below the stages: neither reaches up into pretrain, features, probe, rl or report."""
    stages = ("handeye.pretrain", "handeye.features", "handeye.probe", "handeye.rl", "handeye.report")
    for name, deps in GRAPH.items():
        if name.startswith(("handeye.data", "handeye.models")):
            assert not {d for d in deps if d.startswith(stages)}, (name, deps)
