"""`qlworker`: run the worker, create topics, produce demo traffic, tail topics, print the A/B report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import orjson
from tqdm import tqdm

from schemas import ABMetrics, EventError, decode_event, encode
from worker.ab_metrics import merge
from worker.config import Settings
from worker.demo_data import load_catalogue, product_event, query_log_events
from worker.kafka_io import MAX_INPUT_RECORD_BYTES, create_topics, make_producer, read_topic

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-products"


def cmd_run(args: argparse.Namespace) -> int:
    from worker.runner import Path_, run_worker  # imports the Triton client only when running

    settings = Settings()
    paths = ["product", "query"] if args.path == "both" else [args.path]
    return run_worker(settings, cast(list[Path_], paths))


def cmd_create_topics(args: argparse.Namespace) -> int:
    settings = Settings()
    created = create_topics(settings.kafka, settings.topics)
    print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
    return 0


def cmd_produce_catalogue(args: argparse.Namespace) -> int:
    settings = Settings()
    products = load_catalogue(args.data, args.limit)
    producer = make_producer(settings.kafka, max_request_size=MAX_INPUT_RECORD_BYTES)  # inline images
    now = datetime.now(UTC)
    root = args.data / "images" if args.inline_images else None
    for product in tqdm(products, desc="product upserts", unit="ev"):
        event = product_event(product, now, root)
        producer.send(settings.topics.product_upserts, key=event.product_id.encode(), value=encode(event))
    producer.flush()
    producer.close()
    print(f"produced {len(products)} product upserts to {settings.topics.product_upserts}")
    return 0


def cmd_produce_queries(args: argparse.Namespace) -> int:
    settings = Settings()
    products = load_catalogue(args.data, args.limit_products)
    producer = make_producer(settings.kafka)
    sent = 0
    for event, _grades in tqdm(
        query_log_events(products, args.count, seed=args.seed), total=args.count, desc="query logs", unit="ev"
    ):
        producer.send(settings.topics.query_logs, key=event.unit_key(), value=encode(event))
        sent += 1
    producer.flush()
    producer.close()
    print(f"produced {sent} query logs to {settings.topics.query_logs}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    settings = Settings()
    rows = read_topic(settings, args.topic)
    for key, value in rows[-args.max :]:
        text = value.decode(errors="replace") if value is not None else "<tombstone>"
        print(f"{(key or b'').decode(errors='replace')}\t{text[: args.width]}")
    print(f"# {len(rows)} record(s) in {args.topic}", file=sys.stderr)
    return 0


def ab_rows(settings: Settings) -> list[ABMetrics]:
    """Per-variant totals over all windows, merged from the partial aggregates in the metrics topic."""
    partials = []
    for _key, value in read_topic(settings, settings.topics.ab_metrics):
        try:
            partials.append(decode_event(ABMetrics, value))
        except EventError:
            continue
    return merge(partials, per_window=False)


def format_ab_table(rows: list[ABMetrics]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        "| variant | queries | impressions | mean relevance shown | top-3 | clicked | CTR (95% CI) "
        "| conversion (95% CI) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ctr_ci = f" [{pct(r.ctr_ci.low)}, {pct(r.ctr_ci.high)}]" if r.ctr_ci else ""
        conv_ci = f" [{pct(r.conversion_ci.low)}, {pct(r.conversion_ci.high)}]" if r.conversion_ci else ""
        lines.append(
            f"| {r.variant} | {r.queries} | {r.impressions} | {num(r.mean_relevance_shown)} | "
            f"{num(r.mean_relevance_top3)} | {num(r.mean_relevance_clicked)} | {pct(r.ctr)}{ctr_ci} | "
            f"{pct(r.conversion_rate)}{conv_ci} |"
        )
    return "\n".join(lines)


def cmd_ab_report(args: argparse.Namespace) -> int:
    rows = ab_rows(Settings())
    if args.json:
        print(orjson.dumps([r.model_dump(mode="json") for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_ab_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import main as demo_main

    return demo_main(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qlworker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "run": (cmd_run, "run the streaming worker"),
        "create-topics": (cmd_create_topics, "create the pipeline's topics (idempotent)"),
        "produce-catalogue": (cmd_produce_catalogue, "send the catalogue as product upserts"),
        "produce-queries": (cmd_produce_queries, "send simulated A/B query logs"),
        "tail": (cmd_tail, "print the last records of a topic"),
        "ab-report": (cmd_ab_report, "per-variant A/B table merged from the metrics topic"),
        "demo": (cmd_demo, "the local end-to-end demo (starts broker + Triton)"),
    }
    subs = {name: sub.add_parser(name, help=help_) for name, (_, help_) in commands.items()}
    for name, (func, _) in commands.items():
        subs[name].set_defaults(func=func)
    subs["run"].add_argument("--path", choices=["product", "query", "both"], default="both")
    for name in ("produce-catalogue", "produce-queries"):
        subs[name].add_argument("--data", type=Path, default=DEFAULT_DATA)
    subs["produce-catalogue"].add_argument("--limit", type=int, default=None)
    subs["produce-catalogue"].add_argument(
        "--inline-images", action="store_true", help="send image bytes instead of paths"
    )
    subs["produce-queries"].add_argument("--count", type=int, default=2000)
    subs["produce-queries"].add_argument("--seed", type=int, default=7)
    subs["produce-queries"].add_argument("--limit-products", type=int, default=None)
    subs["tail"].add_argument("topic")
    subs["tail"].add_argument("--max", type=int, default=20)
    subs["tail"].add_argument("--width", type=int, default=240)
    subs["ab-report"].add_argument("--json", action="store_true")
    subs["demo"].add_argument("demo_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
