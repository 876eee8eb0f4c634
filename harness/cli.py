"""`qlharness`: the local demo, demo traffic for a running pipeline, and the sample catalogue.

Development tools, kept out of the worker package so the worker image stays free of torch and
querylife; `qlworker` runs the worker itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from harness import demo, sample
from harness.demo_data import load_catalogue, product_event, query_log_events
from querylife.catalogue import FLAG_HELP, Catalogue, resolve_catalogue
from schemas import encode
from worker.config import Settings
from worker.kafka_io import MAX_INPUT_RECORD_BYTES, make_producer
from worker.observability import add_cli_flags, configure_logging


def _catalogue(args: argparse.Namespace) -> Catalogue:
    source = resolve_catalogue(args.data, allow_sample=True)
    print(f"catalogue: {source.describe()}")
    return source


def cmd_produce_catalogue(args: argparse.Namespace) -> int:
    settings = Settings()
    source = _catalogue(args)
    products = load_catalogue(source.path, args.limit)
    producer = make_producer(settings.kafka, max_request_size=MAX_INPUT_RECORD_BYTES)  # inline images
    now = datetime.now(UTC)
    root = source.images if args.inline_images else None
    for product in tqdm(products, desc="product upserts", unit="ev"):
        event = product_event(product, now, root)
        producer.send(settings.topics.product_upserts, key=event.product_id.encode(), value=encode(event))
    producer.flush()
    producer.close()
    print(f"produced {len(products)} product upserts to {settings.topics.product_upserts}")
    return 0


def cmd_produce_queries(args: argparse.Namespace) -> int:
    settings = Settings()
    products = load_catalogue(_catalogue(args).path, args.limit_products)
    producer = make_producer(settings.kafka)
    sent = 0
    events = query_log_events(products, args.count, seed=args.seed)
    for event, _grades in tqdm(events, total=args.count, desc="query logs", unit="ev"):
        producer.send(settings.topics.query_logs, key=event.unit_key(), value=encode(event))
        sent += 1
    producer.flush()
    producer.close()
    print(f"produced {sent} query logs to {settings.topics.query_logs}")
    return 0


def _add_produce_flags(subs: dict[str, argparse.ArgumentParser]) -> None:
    for name in ("produce-catalogue", "produce-queries"):
        subs[name].add_argument("--data", type=Path, default=None, help=FLAG_HELP)
    catalogue = subs["produce-catalogue"]
    catalogue.add_argument("--limit", type=int, default=None, help="send only the first N products")
    catalogue.add_argument(
        "--inline-images", action="store_true", help="send image bytes instead of paths under the image root"
    )
    queries = subs["produce-queries"]
    queries.add_argument("--count", type=int, default=2000, help="query logs to send")
    queries.add_argument("--seed", type=int, default=7, help="seed of the simulated queries and shoppers")
    queries.add_argument(
        "--limit-products", type=int, default=None, help="draw queries from the first N products only"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qlharness", description=__doc__)
    add_cli_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "demo": (demo.run, "the local end-to-end demo (starts a broker and Triton, replays, summarises)"),
        "produce-catalogue": (cmd_produce_catalogue, "send the catalogue as product upserts"),
        "produce-queries": (cmd_produce_queries, "send simulated A/B query logs"),
        "make-sample-catalogue": (sample.run, "draw the committed sample catalogue from the full one"),
    }
    subs = {name: sub.add_parser(name, help=h, description=h) for name, (_, h) in commands.items()}
    for name, (func, _) in commands.items():
        subs[name].set_defaults(func=func)
    demo.add_arguments(subs["demo"])
    _add_produce_flags(subs)
    sample.add_arguments(subs["make-sample-catalogue"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
