"""Repeated queries (#18): a Zipf query stream through the real query worker, with and without the
query-embedding cache, side by side in one run on the local broker and Triton.

The stream draws each query log's query from `--distinct` queries with Zipf exponent 1.0 (rank r is
asked with weight 1/r), 10 impressions each over random products of the state; the same backlog is
consumed by a query worker with `QL_WORKER_QUERY_CACHE_SIZE=0` and then by one with the cache. It
prints query logs/s of each, the ratio, and the cache's hit share, and writes the figures to
reports/bench/zipf_cache.json. Not here yet (#18): the in-process model with the same cache, and the
stream with 1 % unknown products.

    .venv/bin/python -m benchmarks.zipf_cache [--logs 20000] [--distinct 50000]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.end_to_end import Follower, bench_settings, start_worker, wait_outputs
from benchmarks.ranker_latency import seed_products
from harness.local_services import LocalBroker, LocalTriton, free_port, prepare_model_repository
from schemas import Impression, QueryLog, encode
from worker.config import Settings
from worker.kafka_io import create_topics, make_producer

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench" / "zipf_cache.json"
WORDS = ["black", "white", "red", "blue", "green", "navy", "grey", "pink", "yellow", "brown"]
KINDS = [
    "tshirt",
    "shirt",
    "jeans",
    "shoes",
    "sneakers",
    "watch",
    "kurta",
    "dress",
    "bag",
    "sandals",
    "cap",
    "jacket",
]
WHO = ["men", "women", "kids", "boys", "girls", "unisex"]


def zipf_queries(n_logs: int, distinct: int, seed: int = 0) -> list[str]:
    """`n_logs` query texts drawn from `distinct` ones with weight 1/rank (exponent 1.0)."""
    rng = np.random.default_rng(seed)
    texts = [
        f"{WORDS[i % len(WORDS)]} {KINDS[(i // len(WORDS)) % len(KINDS)]} for {WHO[i % len(WHO)]} {i}"
        for i in range(distinct)
    ]
    weights = 1.0 / np.arange(1, distinct + 1)
    picks = rng.choice(distinct, size=n_logs, p=weights / weights.sum())
    return [texts[int(i)] for i in picks]


def produce_logs(settings: Settings, queries: list[str], ids: list[str], tag: str) -> set[bytes]:
    rng = np.random.default_rng(1)
    producer = make_producer(settings.kafka, linger_ms=20)
    keys = set()
    for n, query in enumerate(queries):
        shown = rng.choice(len(ids), 10, replace=False)
        log = QueryLog(
            event_id=f"{tag}-{n}",
            event_time=datetime.now(UTC),
            query_id=f"{tag}-{n}",
            query=query,
            user_id=f"u{n % 997}",
            variant="A",
            impressions=[Impression(product_id=ids[int(i)], position=k) for k, i in enumerate(shown, 1)],
        )
        producer.send(settings.topics.query_logs, key=log.unit_key(), value=encode(log))
        keys.add(log.query_id.encode())
    producer.flush(120)
    producer.close()
    return keys


def cache_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(r'querylife_query_cache_total\{outcome="(hit|miss)"\} ([0-9.e+]+)', text)
    return {outcome: float(value) for outcome, value in found}


def run(settings: Settings, work: Path, keys: set[bytes], cache_size: int) -> dict[str, Any]:
    """Consume the whole backlog with a fresh group; query logs/s from first to last score."""
    port = free_port()
    worker = settings.worker.model_copy(
        update={"query_group": f"zipf-{cache_size}", "query_cache_size": cache_size, "metrics_port": port}
    )
    topics = settings.topics.model_copy(
        update={"query_scores": f"{settings.topics.query_scores}-{cache_size}"}
    )
    mine = settings.model_copy(update={"worker": worker, "topics": topics})  # its own output topic
    create_topics(mine)
    scores = Follower(mine, mine.topics.query_scores)
    scores.poll(0)
    proc = start_worker(mine, "query", work)
    try:
        started = time.monotonic()
        done = wait_outputs(scores, keys, len(keys), False, proc, timeout_s=1800)
        seconds = (max(done.values()) - min(done.values())) / 1000.0
        counts = cache_counts(port) if cache_size else {}
    finally:
        proc.stop()
        scores.close()
    hits, misses = counts.get("hit", 0.0), counts.get("miss", 0.0)
    return {
        "cache_size": cache_size,
        "query_logs": len(keys),
        "seconds": round(seconds, 2),
        "wall_s": round(time.monotonic() - started, 1),
        "query_logs_per_s": round(len(keys) / max(seconds, 1e-9), 1),
        "hit_share": round(hits / (hits + misses), 3) if hits + misses else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.zipf_cache", description=__doc__)
    parser.add_argument("--logs", type=int, default=20_000, help="query logs in the stream")
    parser.add_argument("--distinct", type=int, default=50_000, help="distinct queries the stream draws from")
    parser.add_argument("--products", type=int, default=5_000, help="products in the state")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zipf-bench-"))
    broker = LocalBroker(log_dir=work / "logs").start()
    triton = LocalTriton(prepare_model_repository(work / "model_repository"), log_dir=work / "logs").start()
    try:
        settings = bench_settings(broker, triton, "zipf")
        create_topics(settings)
        ids = seed_products(settings, args.products)
        queries = zipf_queries(args.logs, args.distinct)
        keys = produce_logs(settings, queries, ids, "z")
        results: dict[str, Any] = {
            "logs": args.logs,
            "distinct_queries": args.distinct,
            "distinct_in_stream": len(set(queries)),
            "products": args.products,
        }
        results["no_cache"] = run(settings, work, keys, 0)
        print(f"no cache: {results['no_cache']}", flush=True)
        results["cache"] = run(settings, work, keys, 100_000)
        print(f"cache:    {results['cache']}", flush=True)
        ratio = results["cache"]["query_logs_per_s"] / max(results["no_cache"]["query_logs_per_s"], 1e-9)
        results["cache_speedup"] = round(ratio, 2)
        print(f"cache speed-up {ratio:.2f}x; distinct queries in the stream {results['distinct_in_stream']}")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        print(f"raw figures: {OUT}")
    finally:
        triton.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
