"""The clients' import graph, read from the source (no module is imported): no cycles.

(That they import nothing of bgd is tests/test_client_imports.py.)

Every `import` counts, at module level or inside a function (a lazy import that leads back is still a
cycle in the design), except those under `if TYPE_CHECKING:`.  Importing `a.b.c` imports packages `a`
and `a.b` first, unless they hold the importing module (then they are already loaded).  bgctl's command
package loads its modules by name (`bgctl.commands.MODULES`); those edges are added from that list.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bgctl import commands

ROOT = Path(__file__).resolve().parent.parent
TREES = {"bgctl": ROOT / "clients" / "bgctl", "bgls": ROOT / "clients" / "bgls", "bgcore": ROOT / "core" / "bgcore"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, top in TREES.items():
        for path in top.rglob("*.py"):
            parts = [package, *path.relative_to(top).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that module `name` imports."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If) and _type_checking(guard.test)
               for stmt in guard.body for node in ast.walk(stmt)}
    wanted: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            wanted.add(target)
            wanted.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    if name == "bgctl.commands":
        wanted.update(f"bgctl.commands.{module}" for module in commands.MODULES)
    loaded = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its packages
    edges = set()
    for target in wanted:
        while target and target not in loaded:  # importing a.b.c imports a and a.b first
            if target in modules:
                edges.add(target)
            target = target.rpartition(".")[0]
    return edges


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, modules) for name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_the_imports_it_must():
    graph = _graph()
    assert "bgctl.cli_common" in graph["bgctl.commands.sessions"]
    assert "bgcore.jsonrpc" in graph["bgctl.client"]
    assert "bgctl.client" in graph["bgls.daemon_link"]       # a lazy import inside a function
    assert "bgctl.commands.sessions" in graph["bgctl.commands"]  # loaded by name
    assert "bgctl.commands" not in graph["bgctl.commands.tasks"]   # its own package: already loaded
    assert "typing" not in graph["bgcore.jsonrpc"]           # not ours, and under TYPE_CHECKING anyway


def test_the_walk_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_clients_or_bgcore():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_command_modules_do_not_import_bgctl_main():
    graph = _graph()
    offenders = sorted(name for name, edges in graph.items()
                       if name.startswith("bgctl.commands") and "bgctl.main" in edges)
    assert offenders == [], offenders

