"""The ranker's latency goals (#17), measured side by side in one run on the local broker and Triton:

1. candidate scoring on request (20 candidates per `ScoreRequest`): peak replies/s (a burst), then
   p50/p95/p99 from request to published reply in an open loop at 0.1x and 0.5x of that peak
   (goal: p99 <= 50 ms at both), for two query mixes: `head` (50 queries asked again and again,
   as a ranker asks about head queries: after the first round every query is in the request
   worker's query cache) and `unseen` (every request a query never asked before: the text tower
   runs for each, the cache's worst case);
2. from a query log to its records in the relevance table: peak query logs/s (a burst), then the
   same percentiles at 0.5x of that peak (goal: p99 <= 2 s).

Latency is the published output's record timestamp minus the input's (both CreateTime, set by the
producing clients on this machine), so it covers the broker, the worker and Triton, not a reader's
fetch. The products are random unit vectors in the served version's embeddings topic (the request
path's cost is Triton's, per pair, not the vectors' content). The request worker runs as
docs/deploying.md says (`QL_KAFKA_FETCH_MAX_WAIT_MS=5`), the benchmark's ranker sends each request
at once (linger 0). Raw latencies go to reports/bench/ranker_latency.json.

    .venv/bin/python -m benchmarks.ranker_latency [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.end_to_end import Follower, bench_settings, start_worker
from harness.local_services import LocalBroker, LocalTriton, ManagedProcess, prepare_model_repository
from schemas import FusionWeights, Impression, ProductEmbeddingV2, QueryLog, encode
from schemas.ranker import ScoreRequest, normalise_query, table_key
from worker.config import Settings
from worker.kafka_io import create_topics, make_producer
from worker.triton_client import RelevanceClient

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench" / "ranker_latency.json"
CANDIDATES = 20
DIM = 256


def seed_products(settings: Settings, n: int) -> list[str]:
    version = settings.worker.model_version
    assert version is not None
    rng = np.random.default_rng(0)
    producer = make_producer(settings.kafka, linger_ms=20)
    ids = [f"p{i}" for i in range(n)]
    for pid in ids:
        v = rng.standard_normal(DIM).astype(np.float32)
        record = ProductEmbeddingV2.from_array(
            v / np.linalg.norm(v),
            product_id=pid,
            product_type="Tshirts",
            model_version=version,
            fusion_weights=FusionWeights(title=0.5, image=0.5),
            has_title=True,
            has_image=True,
            source_event_id=f"e-{pid}",
            updated_at=datetime.now(UTC),
        )
        producer.send(settings.topics.embeddings_for(version), key=pid.encode(), value=encode(record))
    producer.flush(60)
    producer.close()
    return ids


MIXES = ("head", "unseen")


def request(n: int, tag: str, ids: list[str], mix: str) -> tuple[str, bytes, bytes]:
    rng = np.random.default_rng(n)
    query = f"black cotton tshirt {n % 50}" if mix == "head" else f"{tag} shopper asks {n}"
    req = ScoreRequest(
        request_id=f"{tag}-{n}",
        reply_key=f"{tag}-{n}",
        query=query,
        candidates=[ids[int(i)] for i in rng.choice(len(ids), CANDIDATES, replace=False)],
        sent_at=datetime.now(UTC),
        timeout_ms=60_000,
    )
    return req.reply_key, encode(req), req.reply_key.encode()  # the reply is keyed like the request


def query_log(n: int, tag: str, ids: list[str], version: str) -> tuple[str, bytes, bytes]:
    rng = np.random.default_rng(n)
    log = QueryLog(
        event_id=f"{tag}-{n}",
        event_time=datetime.now(UTC),
        query_id=f"{tag}-{n}",
        query=f"{tag} shopper query {n}",
        user_id=f"u{n % 97}",
        variant="A",
        impressions=[
            Impression(product_id=ids[int(i)], position=k)
            for k, i in enumerate(rng.choice(len(ids), 10, replace=False), start=1)
        ],
    )
    first = table_key(version, normalise_query(log.query), log.impressions[0].product_id)
    return log.query_id, encode(log), first  # its first impression's row in the relevance table


def run_level(
    settings: Settings,
    topic: str,
    make: Callable[[int], tuple[str, bytes, bytes]],
    rate: float | None,
    count: int,
    inputs: Follower,
    outputs: Follower,
    worker: ManagedProcess,
    linger_ms: int = 5,
) -> list[float]:
    """Send `count` inputs (at `rate`/s, or as one burst when None); latency ms of each output."""
    producer = make_producer(settings.kafka, linger_ms=linger_ms)
    keys: list[tuple[bytes, bytes]] = []  # (input key, output key)
    start = time.perf_counter()
    for i in range(count):
        if rate is not None:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        key, value, out = make(i)
        keys.append((key.encode(), out))
        producer.send(topic, key=key.encode(), value=value)
    producer.flush(60)
    producer.close()
    wanted = {out for _, out in keys}
    deadline = time.monotonic() + 300
    while not wanted <= outputs.poll(200).keys():
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"outputs missing: {len(wanted - outputs.last.keys())} of {len(wanted)}")
    while not {k for k, _ in keys} <= inputs.poll(200).keys():
        pass
    return [float(outputs.last[out] - inputs.last[k]) for k, out in keys]


def request_levels(
    requests_at: Callable[[str, float | None, int], list[float]], mix: str, burst: int, seconds: float
) -> dict[str, Any]:
    """One query mix: its peak (a burst), then the open-loop levels at 0.1x and 0.5x of it."""
    t = time.perf_counter()
    requests_at(f"{mix}-peak", None, burst)
    peak = burst / (time.perf_counter() - t)
    out: dict[str, Any] = {"peak_per_s": peak}
    print(f"score requests, {mix} queries: peak {peak:.0f}/s ({CANDIDATES} candidates each)", flush=True)
    for frac in (0.1, 0.5):
        rate = frac * peak
        lat = requests_at(f"{mix}-l{frac}", rate, max(20, int(rate * seconds)))
        out[f"{frac}x"] = summary(lat) | {"rate_per_s": rate, "latencies_ms": lat}  # in send order
        print(f"  {frac} x peak ({rate:.0f}/s): {summary(lat)}", flush=True)
    return out


def triton_breakdown(settings: Settings, calls: int = 40) -> dict[str, float]:
    """p50 ms of the Triton calls behind one request of 20 candidates, while the workers idle: where
    a request's time goes (the ensemble, or the cache's two steps)."""
    client = RelevanceClient(settings.triton, settings.worker.model_version)
    rng = np.random.default_rng(1)
    products = rng.standard_normal((CANDIDATES, DIM)).astype(np.float32)
    query = ["black cotton tshirt"]
    embedded = np.repeat(client.query_embeddings(query), CANDIDATES, axis=0)
    steps: dict[str, Callable[[], object]] = {
        "query_relevance (ensemble)": lambda: client.query_relevance(query * CANDIDATES, products),
        "text_encoder (1 query)": lambda: client.query_embeddings(query),
        "relevance (20 pairs)": lambda: client.pair_relevance(embedded, products),
    }
    out: dict[str, float] = {}
    for name, step in steps.items():
        took = []
        for _ in range(calls):
            t = time.perf_counter()
            step()
            took.append((time.perf_counter() - t) * 1000)
        out[f"{name} p50_ms"] = float(np.percentile(took, 50))
    client.close()
    return out


def summary(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat)
    return {f"p{p}_ms": float(np.percentile(a, p)) for p in (50, 95, 99)} | {"n": float(len(a))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.ranker_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer products and shorter levels (CI)")
    args = parser.parse_args(argv)
    products, seconds, burst = (2000, 8.0, 200) if args.quick else (20000, 20.0, 600)
    work = Path(tempfile.mkdtemp(prefix="ranker-bench-"))
    broker = LocalBroker(log_dir=work / "logs").start()
    triton = LocalTriton(prepare_model_repository(work / "model_repository"), log_dir=work / "logs").start()
    workers: list[ManagedProcess] = []
    try:
        settings = bench_settings(broker, triton, "ranker")
        create_topics(settings)
        version = settings.worker.model_version
        assert version is not None
        ids = seed_products(settings, products)
        # the request worker as docs/deploying.md runs it: 5 ms fetch waits (a ranker is waiting)
        request_kafka = settings.kafka.model_copy(update={"fetch_max_wait_ms": 5})
        request_settings = settings.model_copy(update={"kafka": request_kafka})
        workers = [start_worker(request_settings, "request", work), start_worker(settings, "query", work)]
        topics = settings.topics
        results: dict[str, Any] = {"products": products, "candidates": CANDIDATES, "model_version": version}

        req_in, replies = Follower(settings, topics.score_requests), Follower(settings, topics.score_replies)

        def requests_at(tag: str, rate: float | None, count: int) -> list[float]:
            mix = tag.split("-")[0]
            make = lambda n: request(n, tag, ids, mix)  # noqa: E731
            # a ranker sends a request at once (linger 0): it waits for the answer
            return run_level(
                settings, topics.score_requests, make, rate, count, req_in, replies, workers[0], linger_ms=0
            )

        results["triton_breakdown"] = triton_breakdown(settings)
        print(f"Triton, one request's calls: {results['triton_breakdown']}", flush=True)
        requests_at("head-warm", None, 50)  # every head query asked once: the cache holds them all
        for mix in MIXES:
            results[mix] = request_levels(requests_at, mix, burst, seconds)

        logs_in, table = Follower(settings, topics.query_logs), Follower(settings, topics.relevance_table)

        def logs_at(tag: str, rate: float | None, count: int) -> list[float]:
            make = lambda n: query_log(n, tag, ids, version)  # noqa: E731
            return run_level(settings, topics.query_logs, make, rate, count, logs_in, table, workers[1])

        t = time.perf_counter()
        logs_at("qpeak", None, burst)
        qpeak = burst / (time.perf_counter() - t)
        rate = 0.5 * qpeak
        lat = logs_at("qhalf", rate, max(20, int(rate * seconds)))
        results["query_logs_peak_per_s"] = qpeak
        results["table_0.5x"] = summary(lat) | {"rate_per_s": rate, "latencies_ms": lat}
        print(
            f"query log -> table: peak {qpeak:.0f}/s; 0.5 x peak ({rate:.0f}/s): {summary(lat)}", flush=True
        )
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        print(f"raw samples: {OUT}")
    finally:
        for w in workers:
            w.stop()
        triton.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
