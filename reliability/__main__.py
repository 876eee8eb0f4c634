"""`python -m reliability [--quick] [--only NAME ...]`: run the fault scenarios and the hostile corpus
on a real broker + Triton started here, print the figures table, write reports/reliability.{md,json}."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.local_services import LocalBroker, LocalTriton, prepare_model_repository
from reliability.faults import ALL_FAULTS, REPO, ScenarioResult, Sizes, Stack
from reliability.hostile import HostileSizes, scenario_hostile
from reliability.poison import POISON, PoisonSizes


def _dlq(result: ScenarioResult) -> str:
    if not result.dlq_by_reason:
        return "0"
    total = sum(result.dlq_by_reason.values())
    return f"{total} ({len(result.dlq_by_reason)} reasons)"


def _dead_lettered(result: ScenarioResult) -> str:
    """Share of the events sent that were dead-lettered (each with its reason): 100% for hostile input."""
    letters = sum(result.dlq_by_reason.values())
    if not letters or not result.events_sent:
        return "-"
    return f"{100.0 * letters / result.events_sent:.1f}%"


def _seconds(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def figures_table(results: list[ScenarioResult]) -> str:
    lines = [
        "| scenario | events sent | lost | duplicated (identical) | DLQ'd by reason | dead-lettered "
        "| restarts survived | longest stall | slowest health probe | result | time |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.events_sent} | {r.lost} | {r.duplicated} ({r.duplicated_identical}) | "
            f"{_dlq(r)} | {_dead_lettered(r)} | {r.restarts_survived} | "
            f"{_seconds(r.longest_stall_s, 1)} | {_seconds(r.probe_max_s, 3)} | "
            f"{'PASS' if r.passed else 'FAIL'} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def reasons_table(results: list[ScenarioResult]) -> str:
    lines = ["| scenario | reason | dead letters |", "|---|---|---:|"]
    for r in results:
        for reason, n in r.dlq_by_reason.items():
            lines.append(f"| {r.name} | `{reason}` | {n} |")
    return "\n".join(lines)


def write_reports(results: list[ScenarioResult], mode: str, seconds: float, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": mode,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"python -m reliability{' --quick' if mode == 'quick' else ''}",
    }
    (out_dir / "reliability.json").write_bytes(
        orjson.dumps(
            {"meta": meta, "scenarios": [r.to_json() for r in results]},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
    )
    parts = [
        "# Reliability and hostile-input figures",
        "",
        f"`{meta['command']}` ({mode} run, {meta['seconds']:.0f} s, {meta['machine']}, "
        f"finished {meta['finished_at']}). Real Tansu broker, real Triton (CPU), worker as subprocesses. "
        "How each scenario works: docs/reliability.md.",
        "",
        figures_table(results),
        "",
        "*lost*: input events with at least one expected output missing. *duplicated*: output keys "
        "written more than once (at-least-once replays), with how many of them carry identical values "
        "in every copy. *dead-lettered*: dead letters (each with a specific reason) over events sent. "
        "A valid query log naming products the worker does not know gets the letter `unknown_product` "
        "and, beside it, an `unknown_product` score per missing product; its known products are scored "
        "and its A/B counts kept.",
        "",
        "## Dead letters by reason",
        "",
        reasons_table(results),
        "",
        "## Checks per scenario",
        "",
    ]
    for r in results:
        parts.append(f"### {r.name}: {'PASS' if r.passed else 'FAIL'}")
        parts.append("")
        for key, value in r.checks.items():
            parts.append(f"- {key}: {value}")
        for note in r.notes:
            parts.append(f"- note: {note[:800]}")
        if r.error:
            parts.append(f"- **error**: {r.error}")
        parts.append("")
    (out_dir / "reliability.md").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the small CI sizes (the tests use these)")
    names = [*ALL_FAULTS, "hostile", *POISON]
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=REPO / "reports", help="where the reports go")
    parser.add_argument("--no-report", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    sizes = Sizes.quick() if args.quick else Sizes.full()
    hostile_sizes = HostileSizes.quick() if args.quick else HostileSizes.full()
    poison_sizes = PoisonSizes.quick() if args.quick else PoisonSizes.full()
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="querylife-reliability-"))
    print(f"logs: {log_dir}", file=sys.stderr)
    broker = LocalBroker(log_dir=log_dir / "broker").start()
    repo = prepare_model_repository(log_dir / "model_repository")
    triton = LocalTriton(repo, log_dir=log_dir / "triton").start()
    stack = Stack(broker, triton, repo, log_dir)
    results: list[ScenarioResult] = []
    runners: dict[str, Callable[[], ScenarioResult]] = {
        name: functools.partial(fn, stack, sizes) for name, fn in ALL_FAULTS.items()
    }
    runners["hostile"] = lambda: scenario_hostile(stack, hostile_sizes)
    runners |= {name: functools.partial(fn, stack, poison_sizes) for name, fn in POISON.items()}
    try:
        for name in args.only:
            print(f"== {name}", file=sys.stderr, flush=True)
            result = runners[name]()
            print(
                f"   {'PASS' if result.passed else 'FAIL'} in {result.seconds:.0f}s"
                + (f": {result.error}" if result.error else ""),
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    finally:
        triton.stop()
        broker.stop()
    print(figures_table(results))
    if not args.no_report:
        write_reports(results, "quick" if args.quick else "full", time.monotonic() - started, args.out)
        print(f"wrote {args.out / 'reliability.md'} and reliability.json", file=sys.stderr)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
