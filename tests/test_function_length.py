"""No function of the worker runtime is longer than a reader can hold (60 lines of body).

The limit is on the body, from its first statement (the docstring counts) to its last line, so a long
signature does not count against it; nested functions count within their parent too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BODY_LINES = 60


def long_functions(source: str, limit: int = MAX_BODY_LINES) -> list[tuple[str, int, int]]:
    """(name, line of `def`, body lines) of every function whose body is longer than `limit`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
            if body > limit:
                found.append((node.name, node.lineno, body))
    return found


def test_no_worker_function_is_longer_than_60_lines() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}: {body} lines"
        for path in sorted((ROOT / "worker").glob("*.py"))
        for name, line, body in long_functions(path.read_text())
    ]
    assert not offenders, "split these into named steps:\n" + "\n".join(offenders)


def test_counts_body_lines_not_the_signature() -> None:
    signature = "def f(\n" + "    a: int,\n" * 20 + ") -> None:\n"
    at_limit = signature + "    x = 1\n" * MAX_BODY_LINES
    assert long_functions(at_limit) == []
    over = "class C:\n    async def g(self) -> None:\n" + "        x = 1\n" * (MAX_BODY_LINES + 1)
    assert long_functions(over) == [("g", 2, MAX_BODY_LINES + 1)]
