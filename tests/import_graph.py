"""The repository's module import graph, read from source with `ast` (function-level imports included).

Shared by the import tests: cycles between first-party modules, and what the worker runtime can reach.
Imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "worker", "querylife", "harness", "analysis", "reliability", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> source file, for every .py file of the packages."""
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(path: Path) -> list[str]:
    """Every module name an import statement of the file names, at any depth (`from a import b` gives
    `a` and `a.b`: b may be a module). Relative imports are resolved against the file's package."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: list[str] = []
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.append(base)
            names.extend(f"{base}.{a.name}" for a in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names


def graph(packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports (its own package's `__init__` aside)."""
    known = modules(packages)
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {n for n in imported_names(path) if n in known and n != name}
        out[name] = {t for t in targets if not name.startswith(t + ".")}
    return out


def third_party(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-first-party modules the file imports."""
    tops = {n.split(".")[0] for n in imported_names(path) if n}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in PACKAGES and t != "__future__"}


def reachable(start: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    """Modules reachable from `start` (itself included), following imports and parent packages."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        todo.extend(edges.get(name, set()) | ({parent} if parent in edges else set()))
    return seen


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(root, sorted(edges[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            _node, todo = stack[-1]
            if not todo:
                stack.pop()
                state[path.pop()] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(edges.get(nxt, set()))))
    return None
