"""The package's shape: modules import each other without a cycle; names other processes read are
written once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import clipsweep
from clipsweep import names

PACKAGE = Path(clipsweep.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(["clipsweep", *parts[: -1 if parts[-1] == "__init__" else None]])


def _imports() -> dict[str, set[str]]:
    """Every ``clipsweep.*`` module each module imports, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "clipsweep":
                found |= {f"clipsweep.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clipsweep."):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("clipsweep.")}
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_package_imports_have_no_cycle() -> None:
    graph = _imports()
    assert graph["clipsweep.cli"] >= {"clipsweep.study_commands", "clipsweep.preflight"}  # the walk sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_package_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_package_names_shared_across_processes_are_spelled_only_in_names() -> None:
    """A study attribute, environment variable or MLflow tag spelled as a literal elsewhere could drift
    from what another process (a worker, ``export``, the UI) reads."""
    shared = re.compile(r"^(clipsweep\.[a-z_]+|CLIPSWEEP_[A-Z_]+|MLFLOW_TRACKING_URI)$")
    values = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    # The package's own module paths look alike (find_spec("clipsweep.conf")); a name spelled like a
    # module (clipsweep.config) is still checked.
    modules = {_module(p) for p in PACKAGE.rglob("*.py")} | {"clipsweep.conf", "clipsweep.models"}
    spelled = {
        f"{path.name}:{node.lineno}: {node.value}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "names.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and shared.match(node.value)
        and node.value not in modules - values
    }
    assert spelled == set()
    assert shared.match(names.ROLE_TAG) and shared.match(names.STORAGE_ENV)  # the pattern sees the real names


MAX_MODULE_LINES = 375
MAX_FUNCTION_LINES = 60


def test_package_modules_and_functions_stay_short_or_say_why() -> None:
    """A module over ~350 lines owns more than one concept; a function over 60 lines does more than one
    thing unless its docstring says why it is long (the word "long" in it)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{_module(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "long" not in (ast.get_docstring(node) or "").lower():
                    too_long.append(f"{_module(path)}.{node.name}: {length} lines, no reason given")
    assert too_long == []
