"""Repeated queries and unknown products (#18): a Zipf query stream through the real query worker and
through the in-process model, side by side in one run on the local broker and Triton.

The stream draws each query log's query from `--distinct` queries with Zipf exponent 1.0 (rank r is
asked with weight 1/r), 10 impressions each: the query's own result list, the same each time it is
asked, with 2 of 10 positions on average given to other products (`results_for`). One run measures:

1. the pipeline (Kafka -> query worker -> Triton -> Kafka) without the query-embedding cache
   (`QL_WORKER_QUERY_CACHE_SIZE=0`) and with it: query logs/s of each, the cache's speed-up and hit
   share;
2. the in-process model on the same logs, in the worker's batches, with the very same cache class
   (`worker.query_cache.QueryEmbeddingCache` over the model's own text tower and relevance head), at
   1 and at 2 torch threads, the faster taken: the pipeline with the cache against it;
3. the same stream with 1 % of impressions naming products that have no embedding, through the
   pipeline with the cache: its rate against the clean stream's (goal: within 10 %);
4. the clean stream with the cache through two query worker processes in one consumer group (one per
   core), the way the query path scales out.

Pipeline rates are taken between the 10th and 90th percentile of the published `QueryScores` times
of a backlog (no start-up, no tail), as in `benchmarks.end_to_end`. Every
output timestamp and every figure goes to reports/bench/zipf_cache.json.

    .venv/bin/python -m benchmarks.zipf_cache [--logs 20000] [--distinct 50000]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import urllib.request
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from benchmarks.end_to_end import (
    Follower,
    bench_settings,
    load_vectors,
    start_worker,
    steady_rate,
    wait_outputs,
)
from benchmarks.ranker_latency import seed_products
from harness.local_services import LocalBroker, LocalTriton, free_port, prepare_model_repository
from schemas import Impression, QueryLog, encode
from worker.config import Settings
from worker.kafka_io import create_topics, make_producer
from worker.query_cache import QueryEmbeddingCache
from worker.triton_client import PairScore

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


def results_for(query: str, ids: list[str], rng: np.random.Generator, swapped: float = 0.2) -> list[str]:
    """The 10 products a search shows: the query's own result list (the same each time it is asked,
    seeded by the query text) with `swapped` of the positions given to other products of the state
    (new products, personalisation, ranking changes)."""
    own = np.random.default_rng(zlib.crc32(query.encode())).choice(len(ids), 10, replace=False)
    shown: list[str] = []
    for i in own:
        pick = ids[int(rng.integers(len(ids)))] if rng.random() < swapped else ids[int(i)]
        shown.append(pick if pick not in shown else ids[int(i)])
    return list(dict.fromkeys(shown))


def make_logs(queries: list[str], ids: list[str], tag: str, unknown_share: float = 0.0) -> list[QueryLog]:
    """One query log per query, 10 random products shown; `unknown_share` of the impressions name a
    product that has no embedding (deleted, never embedded, image refused)."""
    rng = np.random.default_rng(1)
    logs = []
    for n, query in enumerate(queries):
        shown = results_for(query, ids, rng)
        shown = [
            f"gone-{tag}-{n}-{k}" if rng.random() < unknown_share else pid for k, pid in enumerate(shown)
        ]
        logs.append(
            QueryLog(
                event_id=f"{tag}-{n}",
                event_time=datetime.now(UTC),
                query_id=f"{tag}-{n}",
                query=query,
                user_id=f"u{n % 997}",
                variant="A",
                impressions=[Impression(product_id=pid, position=k) for k, pid in enumerate(shown, 1)],
            )
        )
    return logs


def produce_logs(settings: Settings, logs: list[QueryLog], topic: str) -> set[bytes]:
    producer = make_producer(settings.kafka, linger_ms=20)
    for log in logs:
        producer.send(topic, key=log.unit_key(), value=encode(log))
    producer.flush(120)
    producer.close()
    return {log.query_id.encode() for log in logs}


class InProcessScorer:
    """The in-process model behind the two steps the cache calls (Triton's `text_encoder` and
    `relevance`), so the in-process side runs the very same `QueryEmbeddingCache`."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def query_embeddings(self, queries: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(self.model.encode_texts(queries).float().numpy())

    def pair_relevance(self, query_embeddings: np.ndarray, product_embeddings: np.ndarray) -> list[PairScore]:
        with torch.inference_mode():
            sim, prob = self.model.relevance(
                torch.from_numpy(query_embeddings), torch.from_numpy(product_embeddings)
            )
        return [
            PairScore(float(s), float(p), str(self.model.label(float(p))))
            for s, p in zip(sim.tolist(), prob.tolist(), strict=True)
        ]


def in_process(
    model: Any, logs: list[QueryLog], vectors: dict[str, np.ndarray], batch: int, cache_size: int
) -> dict[str, Any]:
    """Query logs/s of the model with the same cache on the worker's batches, at 1 and 2 threads."""
    rates = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        cache, scorer = QueryEmbeddingCache(cache_size), InProcessScorer(model)
        started = time.perf_counter()
        for start in range(0, len(logs), batch):
            pairs = [
                (ev.query, imp.product_id) for ev in logs[start : start + batch] for imp in ev.impressions
            ]
            pairs = [(q, pid) for q, pid in pairs if pid in vectors]
            cache.scores(scorer, [q for q, _ in pairs], np.stack([vectors[pid] for _, pid in pairs]))
        rates[threads] = len(logs) / (time.perf_counter() - started)
    torch.set_num_threads(1)
    best = max(rates, key=lambda t: rates[t])
    return {
        "query_logs_per_s_by_threads": {str(t): round(r, 1) for t, r in rates.items()},
        "threads": best,
        "query_logs_per_s": round(rates[best], 1),
    }


def cache_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(r'querylife_query_cache_total\{outcome="(hit|miss)"\} ([0-9.e+]+)', text)
    return {outcome: float(value) for outcome, value in found}


def run(
    settings: Settings,
    work: Path,
    logs_topic: str,
    keys: set[bytes],
    cache_size: int,
    name: str,
    processes: int = 1,
) -> dict[str, Any]:
    """Consume a whole backlog with a fresh group of `processes` query workers; query logs/s between
    the 10th and 90th percentile of the output times (no start-up, no tail), as `end_to_end`."""
    topics = settings.topics.model_copy(
        update={"query_logs": logs_topic, "query_scores": f"{settings.topics.query_scores}-{name}"}
    )
    create_topics(settings.model_copy(update={"topics": topics}))  # its own output topic
    ports = [free_port() for _ in range(processes)]
    procs = []
    scores = Follower(settings.model_copy(update={"topics": topics}), topics.query_scores)
    scores.poll(0)
    started = time.monotonic()
    try:
        for n, port in enumerate(ports):
            worker = settings.worker.model_copy(
                update={
                    "query_group": f"zipf-{name}",
                    "query_cache_size": cache_size,
                    "metrics_port": port,
                    "name": f"{name}-{n}",
                }
            )
            mine = settings.model_copy(update={"worker": worker, "topics": topics})
            procs.append(start_worker(mine, "query", work, name=f"{name}-{n}"))
        done = wait_outputs(scores, keys, procs[0], timeout_s=1800)
        counts = [cache_counts(port) for port in ports] if cache_size else []
    finally:
        for proc in procs:
            proc.stop()
        scores.close()
    hits = sum(c.get("hit", 0.0) for c in counts)
    misses = sum(c.get("miss", 0.0) for c in counts)
    first = min(done.values())
    return {
        "name": name,
        "cache_size": cache_size,
        "worker_processes": processes,
        "query_logs": len(keys),
        "first_to_last_s": round((max(done.values()) - first) / 1000.0, 2),
        "wall_s": round(time.monotonic() - started, 1),
        "query_logs_per_s": round(steady_rate(done.values()), 1),
        "hit_share": round(hits / (hits + misses), 3) if hits + misses else None,
        "output_ms_from_first": sorted(ts - first for ts in done.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks.zipf_cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--logs", type=int, default=20_000, help="query logs in the stream")
    parser.add_argument("--distinct", type=int, default=50_000, help="distinct queries the stream draws from")
    parser.add_argument("--products", type=int, default=5_000, help="products in the state")
    parser.add_argument("--cache-size", type=int, default=100_000, help="query embeddings the cache holds")
    args = parser.parse_args(argv)
    from querylife.model import load_model

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="zipf-bench-"))
    broker = LocalBroker(log_dir=work / "logs").start()
    triton = LocalTriton(prepare_model_repository(work / "model_repository"), log_dir=work / "logs").start()
    try:
        settings = bench_settings(broker, triton, "zipf")
        create_topics(settings)
        ids = seed_products(settings, args.products)
        queries = zipf_queries(args.logs, args.distinct)
        clean, holed = make_logs(queries, ids, "z"), make_logs(queries, ids, "u", unknown_share=0.01)
        clean_keys = produce_logs(settings, clean, settings.topics.query_logs)
        holed_topic = f"{settings.topics.query_logs}-unknown"
        create_topics(
            settings.model_copy(
                update={"topics": settings.topics.model_copy(update={"query_logs": holed_topic})}
            )
        )
        holed_keys = produce_logs(settings, holed, holed_topic)
        unknown = sum(imp.product_id.startswith("gone-") for ev in holed for imp in ev.impressions)
        results: dict[str, Any] = {
            "command": "python -m benchmarks.zipf_cache "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_at_start": list(os.getloadavg()),
            "logs": args.logs,
            "distinct_queries": args.distinct,
            "distinct_in_stream": len(set(queries)),
            "products": args.products,
            "batch_max_events": settings.worker.batch_max_events,
            "unknown_impressions": unknown,
        }
        runs = [
            ("no_cache", settings.topics.query_logs, clean_keys, 0, 1),
            ("cache", settings.topics.query_logs, clean_keys, args.cache_size, 1),
            ("cache_1pct_unknown", holed_topic, holed_keys, args.cache_size, 1),
            ("cache_2_processes", settings.topics.query_logs, clean_keys, args.cache_size, 2),
        ]
        for name, topic, keys, size, processes in runs:
            results[name] = run(settings, work, topic, keys, size, name, processes)
            print(f"{name}: {_brief(results[name])}", flush=True)
        vectors = load_vectors(settings)
        results["in_process_cache"] = in_process(
            load_model(), clean, vectors, settings.worker.batch_max_events, args.cache_size
        )
        print(f"in-process with the same cache: {results['in_process_cache']}", flush=True)
        results["ratios"] = ratios(results)
        for name, value in results["ratios"].items():
            print(f"  {name}: {value:.2f}")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        print(f"raw figures: {OUT}")
    finally:
        triton.stop()
        broker.stop()
    return 0


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "output_ms_from_first"}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """The goals' ratios (#18): cache vs in-process with the cache (>= 0.9), cache vs none, 1 % unknown
    vs clean (>= 0.9)."""
    names = ("no_cache", "cache", "cache_1pct_unknown", "cache_2_processes")
    rate = {name: r[name]["query_logs_per_s"] for name in names}
    in_process = r["in_process_cache"]["query_logs_per_s"]
    return {
        "pipeline_cache_vs_in_process_cache": rate["cache"] / in_process,
        "pipeline_cache_2_processes_vs_in_process_cache": rate["cache_2_processes"] / in_process,
        "cache_speedup": rate["cache"] / rate["no_cache"],
        "unknown_1pct_vs_clean": rate["cache_1pct_unknown"] / rate["cache"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
