"""`qlworker`: run the worker, create topics, tail topics, print the A/B report.

The development harness (local broker and Triton, demo, demo traffic) is `qlharness`, outside the
worker package, so this CLI runs in the slim worker image (no torch, no querylife).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import cast

from worker import ab_report, rollout
from worker.config import Settings
from worker.kafka_io import create_topics, read_topic
from worker.observability import add_cli_flags, configure_logging


def cmd_run(args: argparse.Namespace) -> int:
    from worker.runner import Path_, run_worker  # imports the Triton client only when running

    settings = Settings()
    groups = {"both": ["product", "query"], "all": ["product", "query", "request"]}
    paths = groups.get(args.path, [args.path])
    return run_worker(settings, cast(list[Path_], paths), log_level=args.log_level)


def cmd_create_topics(args: argparse.Namespace) -> int:
    settings = Settings()
    created = create_topics(settings, args.model_version)
    print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    settings = Settings()
    rows = read_topic(settings, args.topic)
    for key, value in rows[-args.max :]:
        text = value.decode(errors="replace") if value is not None else "<tombstone>"
        print(f"{(key or b'').decode(errors='replace')}\t{text[: args.width]}")
    print(f"# {len(rows)} record(s) in {args.topic}", file=sys.stderr)
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    return ab_report.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qlworker", description=__doc__)
    add_cli_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "run": (cmd_run, "run the streaming worker"),
        "create-topics": (cmd_create_topics, "create the pipeline's topics (idempotent)"),
        "tail": (cmd_tail, "print the last records of a topic"),
        "ab-report": (cmd_ab_report, "A/B lift table by unit (SRM, intervals) from the ab-units topic"),
        "rollout": (rollout.run, "model upgrade steps: load, backfill, status, report"),
    }
    subs = {
        name: sub.add_parser(name, help=help_, description=help_) for name, (_, help_) in commands.items()
    }
    for name, (func, _) in commands.items():
        subs[name].set_defaults(func=func)
    subs["run"].add_argument(
        "--path",
        choices=["product", "query", "request", "both", "all"],
        default="both",
        help="which consumer group(s) this process joins: product embeddings, query scoring, score requests; "
        "both = product + query, all = the three (each query or request path holds its own embedding state)",
    )
    subs["tail"].add_argument("topic", help="topic name, e.g. querylife.dead-letter")
    subs["tail"].add_argument("--max", type=int, default=20, help="print at most this many last records")
    subs["tail"].add_argument(
        "--width", type=int, default=240, help="cut each value after this many characters"
    )
    ab_report.add_arguments(subs["ab-report"])
    rollout.add_arguments(subs["rollout"])
    subs["create-topics"].add_argument(
        "--model-version",
        action="append",
        default=[],
        help="also create this version's embeddings topic (repeatable; default: QL_WORKER_MODEL_VERSION "
        "and QL_WORKER_SHADOW_MODEL_VERSION)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
