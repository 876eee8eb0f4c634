"""How long a model rollout's backfill takes per million products (docs/deploying.md "Model upgrade").

Starts the local broker and Triton (CPU configs), writes a catalogue export of N products of a catalogue
(default: the large one, 60x80 JPEGs, by path under its image root) and runs `worker.rollout.backfill`
into the served version's topic, as `qlworker rollout backfill` does. Prints products/s and seconds per
million, and writes the run's figures to reports/bench/backfill_rate.json.

    .venv/bin/python -m benchmarks.backfill_rate [--products 2000] [--data DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson

from harness.demo_data import load_catalogue, product_event
from harness.local_services import LocalBroker, LocalTriton, prepare_model_repository
from querylife.catalogue import catalogue_dir
from schemas import encode
from worker import rollout
from worker.config import KafkaSettings, Settings, TopicSettings, TritonSettings, WorkerSettings
from worker.kafka_io import create_topics
from worker.triton_client import RelevanceClient

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench" / "backfill_rate.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.backfill_rate", description=__doc__)
    parser.add_argument("--products", type=int, default=2000, help="products in the export")
    parser.add_argument(
        "--data", type=Path, default=None, help="catalogue (default: the large one beside the small one)"
    )
    args = parser.parse_args(argv)
    data = args.data or catalogue_dir().parent / "fashion-products-large"
    work = Path(tempfile.mkdtemp(prefix="backfill-bench-"))
    broker = LocalBroker(log_dir=work / "logs").start()
    triton = LocalTriton(prepare_model_repository(work / "model_repository"), log_dir=work / "logs").start()
    try:
        with RelevanceClient(TritonSettings(url=triton.grpc_url)) as client:
            version = client.resolve_version()
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap),
            topics=TopicSettings.namespaced("bench-backfill"),
            triton=TritonSettings(url=triton.grpc_url, timeout_s=60),
            worker=WorkerSettings(model_version=version, image_root=data / "images"),
        )
        create_topics(settings)
        export = work / "catalogue.jsonl"
        now = datetime.now(UTC)
        rows = load_catalogue(data, args.products)
        export.write_bytes(b"".join(encode(product_event(p, now)) + b"\n" for p in rows))
        result = rollout.backfill(settings, version, export, progress=True)
        sample = {
            "catalogue": str(data),
            "products": len(rows),
            "embedded": result.embedded,
            "dead_lettered": result.dead_lettered,
            "seconds": round(result.seconds, 2),
            "products_per_s": round(result.embedded / max(result.seconds, 1e-9), 1),
            "seconds_per_million": round(result.per_million_s),
            "hours_per_million": round(result.per_million_s / 3600, 2),
            "device": "cpu (Triton CPU configs, 1 instance per model)",
        }
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(orjson.dumps(sample, option=orjson.OPT_INDENT_2))
        print(orjson.dumps(sample).decode())
        print(f"raw samples: {OUT}")
    finally:
        triton.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
