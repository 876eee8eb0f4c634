"""End-to-end benchmark: the Kafka + Triton pipeline against the in-process model, as ratios.

`python -m benchmarks.end_to_end [--quick]` (or `make bench`) starts a real broker (Tansu) and a real
Triton on an exported copy of model_repository/, runs the real worker as a subprocess
(`python -m worker.cli run --path ...`, settings from the same QL_* variables as production) and
measures, in one run on this machine:

1. throughput vs batch size: one synchronous Triton round trip (`query_relevance`, `product_embedding`)
   vs the in-process model at batch 1/8/32/64 (and the raw image encoder: decode + preprocess + tower);
2. product upserts: P events backlogged in the broker -> product path -> embeddings topic (events/s),
   vs the in-process model on the same products in the worker's batches (full product embedding, and
   the raw image encoder alone);
3. query logs: K events backlogged -> query path -> scores topic (events/s and pairs/s), vs in-process
   scoring of the same events in the worker's batches (query encoding + calibrated relevance);
4. latency under open-loop load: query logs produced at fractions of the measured peak; p50/p95/p99 of
   (output record timestamp - input record timestamp), both Kafka CreateTime, matched by key; the load
   at which p99 crosses 50 ms.

Pipeline throughput is measured on the output timestamps between the 10th and 90th percentile of
completed events (no start-up, no tail). Triton's per-model metrics (requests, executions, queue and
compute time) are recorded per phase. `--profile` also runs the query path once in this process under
cProfile. Writes reports/bench/end_to_end.json (gitignored), summary.md and two PNGs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from kafka.structs import TopicPartition

from benchmarks.bench_encoders import _rate as items_per_s
from harness.demo_data import load_catalogue, product_event, query_log_events
from harness.local_services import (
    LocalBroker,
    LocalTriton,
    ManagedProcess,
    prepare_model_repository,
    worker_env,
)
from querylife.catalogue import catalogue_dir
from worker.config import KafkaSettings, Settings, TopicSettings, TritonSettings, WorkerSettings
from worker.kafka_io import create_topics, make_consumer, make_producer, read_topic
from worker.triton_client import RelevanceClient

REPO = Path(__file__).resolve().parents[1]
DATA = catalogue_dir()  # the full catalogue (flag-free: $QUERYLIFE_DATA or ../shared)
OUT = REPO / "reports" / "bench"
P99_TARGET_MS = 50.0


# ---------------------------------------------------------------------------------------------- kafka
class Follower:
    """Follows a topic incrementally: the last record timestamp (ms) per key, from the beginning."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = make_consumer(settings.kafka, None, max_poll_records=20000)
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or [])]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.last: dict[bytes, int] = {}

    def poll(self, timeout_ms: int = 200) -> dict[bytes, int]:
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for r in records:
                if r.key is not None:
                    self.last[r.key] = r.timestamp
        return self.last

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def wait_outputs(
    follower: Follower, wanted: set[bytes], worker: ManagedProcess | None, timeout_s: float
) -> dict[bytes, int]:
    """Follow the output topic until every wanted key has an output; returns their output timestamps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outputs = follower.poll(500)
        if wanted <= outputs.keys():
            return {k: outputs[k] for k in wanted}
        if worker is not None and not worker.alive():
            raise RuntimeError(f"worker exited early; log {worker.log_path}:\n{worker.log_tail()}")
    raise TimeoutError(f"{len(wanted)} inputs not all completed after {timeout_s:.0f}s")


def steady_rate(done_ms: Iterable[int]) -> float:
    """Events/s between the 10th and 90th percentile of completion times (excludes start-up and tail)."""
    t = np.sort(np.asarray(list(done_ms), dtype=float)) / 1000.0
    lo, hi = int(0.1 * (len(t) - 1)), int(0.9 * (len(t) - 1))
    if hi <= lo or t[hi] <= t[lo]:
        return float("nan")
    return float((hi - lo) / (t[hi] - t[lo]))


# ---------------------------------------------------------------------------------------------- triton
_METRIC = re.compile(r'^(nv_inference_[a-z_]+)\{model="([^"]+)",version="[^"]*"\} ([0-9.e+]+)$')


def triton_metrics(triton: LocalTriton) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return out


def metrics_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per model: requests, executions, items, mean batch, mean queue ms/request, compute ms/execution."""
    out: dict[str, dict[str, float]] = {}
    for model, a in after.items():
        b = before.get(model, {})

        def d(name: str, a: dict[str, float] = a, b: dict[str, float] = b) -> float:
            return a.get(name, 0.0) - b.get(name, 0.0)

        requests, execs = d("nv_inference_request_success"), d("nv_inference_exec_count")
        if requests <= 0:
            continue
        compute = (
            d("nv_inference_compute_input_duration_us")
            + d("nv_inference_compute_infer_duration_us")
            + d("nv_inference_compute_output_duration_us")
        )
        out[model] = {
            "requests": requests,
            "executions": execs,
            "items": d("nv_inference_count"),
            "mean_batch": d("nv_inference_count") / execs if execs else float("nan"),
            "request_ms": d("nv_inference_request_duration_us") / requests / 1000,
            "queue_ms_per_request": d("nv_inference_queue_duration_us") / requests / 1000,
            "compute_ms_per_execution": compute / execs / 1000 if execs else float("nan"),
            "compute_s_total": compute / 1e6,
        }
    return out


def print_metrics(title: str, delta: dict[str, dict[str, float]]) -> None:
    print(f"  triton ({title}): model, requests, mean batch, queue ms/req, compute ms/exec, compute s")
    for model, m in sorted(delta.items()):
        print(
            f"    {model:<18} {m['requests']:7.0f} {m['mean_batch']:7.1f} {m['queue_ms_per_request']:8.2f}"
            f" {m['compute_ms_per_execution']:8.2f} {m['compute_s_total']:7.2f}"
        )


# ---------------------------------------------------------------------------------------------- setup
def bench_settings(broker: LocalBroker, triton: LocalTriton, tag: str) -> Settings:
    """Defaults from worker/config.py (and QL_* overrides), on the local services and fresh topics."""
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, session_timeout_ms=6000),
        topics=TopicSettings.namespaced(f"bench{tag}"),
        triton=TritonSettings(url=triton.grpc_url),
        worker=WorkerSettings(
            product_group=f"bench{tag}-product",
            query_group=f"bench{tag}-query",
            image_root=DATA / "images",
            name=f"bench{tag}",
            unknown_product_wait_s=0.5,
            model_version=RelevanceClient(TritonSettings(url=triton.grpc_url)).resolve_version(),
        ),
    )


def start_worker(settings: Settings, path: str, log_dir: Path, name: str = "") -> ManagedProcess:
    label = f"worker-{path}{'-' + name if name else ''}"
    proc = ManagedProcess(
        label,
        [sys.executable, "-m", "worker.cli", "run", "--path", path],
        log_dir / f"{label}.log",
        env=worker_env(settings),
    )
    proc.start()
    return proc


# ---------------------------------------------------------------------------------------------- in-process
def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def in_process_products(model: Any, jpegs: list[bytes], rows: list[dict[str, Any]], batch: int) -> float:
    """Full product embedding (decode, preprocess, both towers, fusion), in the worker's batches."""
    from querylife.imaging import decode_image, preprocess

    started = time.perf_counter()
    with torch.inference_mode():
        for idx in chunks(list(range(len(rows))), batch):
            titles = model.encode_texts([rows[i]["title"] for i in idx])
            pixels = preprocess([decode_image(jpegs[i]) for i in idx], model.image_size)
            ones = torch.ones(len(idx), dtype=torch.bool)
            model.fuse(
                titles, model.encode_images(pixels), [rows[i]["product_type"] for i in idx], ones, ones
            )
    return len(rows) / (time.perf_counter() - started)


def in_process_images(model: Any, jpegs: list[bytes], batch: int) -> float:
    """The raw image encoder: decode + preprocess + image tower, in the worker's batches."""
    from querylife.imaging import decode_image, preprocess

    started = time.perf_counter()
    with torch.inference_mode():
        for part in chunks(jpegs, batch):
            model.encode_images(preprocess([decode_image(j) for j in part], model.image_size))
    return len(jpegs) / (time.perf_counter() - started)


def in_process_queries(model: Any, events: list[Any], vectors: dict[str, np.ndarray], batch: int) -> float:
    """Query encoding (each distinct query of a batch once) + calibrated relevance of every pair."""
    started = time.perf_counter()
    with torch.inference_mode():
        for part in chunks(events, batch):
            pairs = [(ev.query, imp.product_id) for ev in part for imp in ev.impressions]
            unique = sorted({q for q, _ in pairs})
            row = {q: j for j, q in enumerate(unique)}
            enc = model.encode_texts(unique)
            q = enc[[row[q] for q, _ in pairs]]
            p = torch.from_numpy(np.stack([vectors[pid] for _, pid in pairs]))
            _, prob = model.relevance(q, p)
            _ = [model.label(float(x)) for x in prob]
    return len(events) / (time.perf_counter() - started)


def in_process_query_rates(
    model: Any, events: list[Any], vectors: dict[str, np.ndarray], batch: int
) -> dict[int, float]:
    """`in_process_queries` at 1 and at 2 torch threads: the pipeline is compared with the faster."""
    rates = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates[threads] = in_process_queries(model, events, vectors, batch)
    torch.set_num_threads(1)
    return rates


def batch_sweep(
    model: Any,
    triton: LocalTriton,
    rows: list[dict[str, Any]],
    jpegs: list[bytes],
    sizes: tuple[int, ...],
    seconds: float,
) -> list[dict[str, Any]]:
    """Items/s of one synchronous caller at each batch size: Triton round trip vs in-process."""
    from querylife.imaging import decode_image, preprocess

    client = RelevanceClient(TritonSettings(url=triton.grpc_url, max_batch=64))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((64, model.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    counter = iter(range(10**9))
    out: list[dict[str, Any]] = []

    def queries(b: int) -> list[str]:  # distinct every call: no cache and no dedupe gain
        n = next(counter)
        return [f"{rows[(n * b + j) % len(rows)]['title'].lower()} #{n}" for j in range(b)]

    try:
        for b in sizes:
            idx = list(range(b))
            titles = [rows[i]["title"] for i in idx]
            types = [rows[i]["product_type"] for i in idx]
            pics = [jpegs[i] for i in idx]

            def text_local(b: int = b) -> object:
                _, prob = model.relevance(model.encode_texts(queries(b)), torch.from_numpy(emb[:b]))
                return [model.label(float(x)) for x in prob]

            def product_local(
                b: int = b, titles: list[str] = titles, types: list[str] = types, pics: list[bytes] = pics
            ) -> object:
                pixels = preprocess([decode_image(j) for j in pics], model.image_size)
                ones = torch.ones(b, dtype=torch.bool)
                return model.fuse(model.encode_texts(titles), model.encode_images(pixels), types, ones, ones)

            def text_triton(b: int = b) -> object:
                return client.query_relevance(queries(b), emb[:b])

            def product_triton(
                titles: list[str] = titles, types: list[str] = types, pics: list[bytes] = pics
            ) -> object:
                return client.product_embeddings(list(titles), types, list(pics))

            def raw_image_local(pics: list[bytes] = pics) -> object:
                return model.encode_images(preprocess([decode_image(j) for j in pics], model.image_size))

            cells: dict[str, Callable[[], object]] = {
                "text triton (query_relevance)": text_triton,
                "text in-process": text_local,
                "product triton (product_embedding)": product_triton,
                "product in-process": product_local,
                "raw image encoder in-process": raw_image_local,
            }
            with torch.inference_mode():
                for name, fn in cells.items():
                    rate = items_per_s(fn, b, seconds)
                    out.append({"batch": b, "path": name, "items_per_s": rate})
                    print(f"  batch {b:>3}  {name:<36} {rate:8.1f} items/s", flush=True)
    finally:
        client.close()
    return out


# ---------------------------------------------------------------------------------------------- phases
def produce_products(settings: Settings, rows: list[dict[str, Any]]) -> None:
    producer = make_producer(settings.kafka)
    now = datetime.now(UTC)
    for p in rows:
        ev = product_event(p, now)
        producer.send(
            settings.topics.product_upserts, key=ev.product_id.encode(), value=ev.model_dump_json().encode()
        )
    producer.flush()
    producer.close()


def load_vectors(settings: Settings) -> dict[str, np.ndarray]:
    from schemas import decode_product_embedding
    from schemas.embeddings import embedding_array

    vectors = {}
    assert settings.worker.model_version is not None
    for key, value in read_topic(settings, settings.topics.embeddings_for(settings.worker.model_version)):
        if key and value:
            vectors[key.decode()] = embedding_array(decode_product_embedding(value))
    return vectors


def open_loop_level(
    settings: Settings,
    pool: list[Any],
    frac: float,
    rate: float,
    seconds: float,
    inputs: Follower,
    scores: Follower,
    worker: ManagedProcess,
) -> dict[str, Any]:
    """Produce query logs at `rate`/s on a fixed schedule (open loop); latency of each from CreateTimes."""
    producer = make_producer(settings.kafka)
    n = max(20, int(rate * seconds))
    ids = [f"l{frac:.3f}-{i}" for i in range(n)]
    start = time.perf_counter()
    for i, qid in enumerate(ids):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ev = pool[i % len(pool)].model_copy(update={"query_id": qid, "event_id": qid})
        producer.send(settings.topics.query_logs, key=qid.encode(), value=ev.model_dump_json().encode())
    producer.flush()
    achieved = n / (time.perf_counter() - start)
    producer.close()
    wanted = {q.encode() for q in ids}
    done = wait_outputs(scores, wanted, worker, timeout_s=180)
    inputs.poll(1000)
    while not wanted <= inputs.last.keys():
        inputs.poll(500)
    lat = np.asarray([done[k] - inputs.last[k] for k in wanted], dtype=float)
    level = {
        "fraction_of_peak": frac,
        "rate_per_s": rate,
        "achieved_rate_per_s": achieved,
        "events": n,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "latencies_ms": sorted(lat.tolist()),
    }
    print(
        f"  load {frac:.2f} x peak ({rate:.0f} ev/s, achieved {achieved:.0f}): p50 {level['p50_ms']:.0f} ms,"
        f" p95 {level['p95_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms",
        flush=True,
    )
    return level


def crossing(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The load at which p99 first exceeds the target, interpolated linearly between measured levels."""
    prev: dict[str, Any] | None = None
    for lv in sorted(levels, key=lambda x: x["rate_per_s"]):
        if lv["p99_ms"] > P99_TARGET_MS:
            if prev is None:
                return {
                    "rate_per_s": None,
                    "fraction": None,
                    "note": "above 50 ms already at the lowest load",
                }
            f = (P99_TARGET_MS - prev["p99_ms"]) / (lv["p99_ms"] - prev["p99_ms"])
            rate = prev["rate_per_s"] + f * (lv["rate_per_s"] - prev["rate_per_s"])
            frac = prev["fraction_of_peak"] + f * (lv["fraction_of_peak"] - prev["fraction_of_peak"])
            return {"rate_per_s": rate, "fraction": frac, "note": "interpolated"}
        prev = lv
    return {"rate_per_s": None, "fraction": None, "note": "not crossed up to the highest load"}


def profile_query_path(settings: Settings, events: list[Any], out: Path) -> None:
    """Run the query path's ConsumerLoop in this thread under cProfile on a fresh backlog."""
    from worker.observability import Liveness
    from worker.runner import build_loop

    producer = make_producer(settings.kafka)
    ids = [f"prof-{i}" for i in range(len(events))]
    for qid, ev in zip(ids, events, strict=True):
        ev2 = ev.model_copy(update={"query_id": qid, "event_id": qid})
        producer.send(settings.topics.query_logs, key=qid.encode(), value=ev2.model_dump_json().encode())
    producer.flush()
    producer.close()
    wanted = {q.encode() for q in ids}
    expected = sum(len(ev.impressions) for ev in events)
    stop = threading.Event()
    loop = build_loop("query", settings, stop, Liveness())  # same group: resumes after the levels
    assert loop is not None
    scores = Follower(settings, settings.topics.query_scores)

    def watch() -> None:
        wait_outputs(scores, wanted, None, timeout_s=300)
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    loop.run(stop)
    prof.disable()
    elapsed = time.perf_counter() - started
    scores.close()
    buf = io.StringIO()
    buf.write(f"query path, {len(events)} events ({expected} pairs) in {elapsed:.1f} s, one thread\n\n")
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    out.write_text(buf.getvalue())
    print(f"  profile of the query path written to {out}")


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="benchmarks.end_to_end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="~2 minutes: fewer events, batches and load levels")
    ap.add_argument("--products", type=int, default=None, help="product upserts (default 1000, quick 200)")
    ap.add_argument("--queries", type=int, default=None, help="query logs (default 3000, quick 600)")
    ap.add_argument(
        "--fractions", default=None, help="open-loop loads as fractions of the peak, e.g. 0.25,0.5"
    )
    ap.add_argument("--level-seconds", type=float, default=None, help="seconds per load level (10, quick 5)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep")
    ap.add_argument("--profile", action="store_true", help="also cProfile the query path (in this process)")
    ap.add_argument(
        "--triton-max-batch-size",
        type=int,
        default=None,
        help="override max_batch_size in every exported config (tuning; set QL_TRITON_MAX_BATCH to match)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    n_products = args.products or (200 if args.quick else 1000)
    n_queries = args.queries or (600 if args.quick else 3000)
    default_fracs = "0.25,0.5,1.0" if args.quick else "0.1,0.25,0.5,0.75,1.0"
    fractions = [float(f) for f in (args.fractions or default_fracs).split(",")]
    level_s = args.level_seconds or (5.0 if args.quick else 10.0)
    torch.set_num_threads(1)  # as the CPU Triton configs (num_threads 1 per stub)

    from querylife.model import load_model

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="querylife-bench-"))
    broker = LocalBroker(log_dir=work).start()
    repo = prepare_model_repository(work / "model_repository")
    if args.triton_max_batch_size:
        for cfg in repo.glob("*/config.pbtxt"):
            text = re.sub(
                r"max_batch_size: \d+", f"max_batch_size: {args.triton_max_batch_size}", cfg.read_text()
            )
            cfg.write_text(text)
    triton = LocalTriton(repo, log_dir=work).start()
    print(f"broker and triton ready in {time.perf_counter() - t_start:.0f} s (logs in {work})", flush=True)
    settings = bench_settings(broker, triton, datetime.now(UTC).strftime("%H%M%S"))
    # the same work on both sides: each batch's distinct queries encoded once, no memory across
    # batches (the query-embedding cache has its own comparison, with the same cache on both sides,
    # in benchmarks/zipf_cache.py)
    settings.worker.query_cache_size = 0
    w = settings.worker
    results: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": list(os.getloadavg()),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.end_to_end " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "batch_max_events": w.batch_max_events,
            "batch_max_wait_ms": w.batch_max_wait_ms,
            "triton_max_batch": settings.triton.max_batch,
            "query_cache_size": settings.worker.query_cache_size,
            "torch_threads_in_process": "1 (products, sweep); the faster of 1 and 2 (query logs)",
        },
        "triton_configs": triton_config_numbers(work / "model_repository"),
    }
    print(f"settings: {results['settings']}", flush=True)
    workers: list[ManagedProcess] = []
    try:
        model = load_model()
        rows = load_catalogue(DATA, n_products)
        jpegs = [(DATA / "images" / p["image_path"]).read_bytes() for p in rows]
        create_topics(settings)

        if not args.no_sweep:
            print("1. throughput vs batch size (one synchronous caller)", flush=True)
            sizes = (1, 32) if args.quick else (1, 8, 32, 64)
            results["batch_sweep"] = batch_sweep(
                model, triton, rows, jpegs, sizes, 0.6 if args.quick else 2.0
            )

        # ---- product upserts, backlogged
        print(f"2. product upserts: {len(rows)} backlogged", flush=True)
        produce_products(settings, rows)
        assert settings.worker.model_version is not None
        embeddings = Follower(settings, settings.topics.embeddings_for(settings.worker.model_version))
        m0 = triton_metrics(triton)
        worker = start_worker(settings, "product", work)
        workers.append(worker)
        wanted = {str(p["product_id"]).encode() for p in rows}
        done = wait_outputs(embeddings, wanted, worker, timeout_s=600)
        product_delta = metrics_delta(m0, triton_metrics(triton))
        worker.stop()
        embeddings.close()
        pipe_p = steady_rate(done.values())
        full_p = in_process_products(model, jpegs, rows, w.batch_max_events)
        raw_p = in_process_images(model, jpegs, w.batch_max_events)
        results["products"] = {
            "events": len(rows),
            "pipeline_per_s": pipe_p,
            "in_process_full_per_s": full_p,
            "in_process_raw_image_encoder_per_s": raw_p,
            "ratio_vs_full": pipe_p / full_p,
            "ratio_vs_raw_image_encoder": pipe_p / raw_p,
            "triton": product_delta,
        }
        print(
            f"  pipeline {pipe_p:.1f}/s; in-process full {full_p:.1f}/s (ratio {pipe_p / full_p:.2f}); "
            f"raw image encoder {raw_p:.1f}/s (ratio {pipe_p / raw_p:.2f})",
            flush=True,
        )
        print_metrics("product path", product_delta)

        # ---- query logs, backlogged
        vectors = load_vectors(settings)
        events = [ev for ev, _ in query_log_events(rows, n_queries, seed=11)]
        n_pairs = sum(len(ev.impressions) for ev in events)
        print(f"3. query logs: {len(events)} backlogged ({n_pairs} pairs)", flush=True)
        producer = make_producer(settings.kafka)
        for ev in events:
            producer.send(
                settings.topics.query_logs, key=ev.query_id.encode(), value=ev.model_dump_json().encode()
            )
        producer.flush()
        producer.close()
        scores = Follower(settings, settings.topics.query_scores)
        inputs = Follower(settings, settings.topics.query_logs)
        m0 = triton_metrics(triton)
        worker = start_worker(settings, "query", work)
        workers.append(worker)
        wanted = {ev.query_id.encode() for ev in events}
        done = wait_outputs(scores, wanted, worker, timeout_s=600)
        query_delta = metrics_delta(m0, triton_metrics(triton))
        pipe_q = steady_rate(done.values())
        by_threads = in_process_query_rates(model, events, vectors, w.batch_max_events)
        threads_q = max(by_threads, key=lambda t: by_threads[t])  # the fastest in-process setting
        inproc_q = by_threads[threads_q]
        pairs_per_event = n_pairs / len(events)
        results["queries"] = {
            "events": len(events),
            "pairs": n_pairs,
            "pipeline_per_s": pipe_q,
            "pipeline_pairs_per_s": pipe_q * pairs_per_event,
            "in_process_per_s": inproc_q,
            "in_process_threads": threads_q,
            "in_process_per_s_by_threads": {str(t): r for t, r in by_threads.items()},
            "ratio": pipe_q / inproc_q,
            "triton": query_delta,
        }
        print(
            f"  pipeline {pipe_q:.1f} ev/s ({pipe_q * pairs_per_event:.0f} pairs/s); in-process "
            f"{inproc_q:.1f} ev/s at {threads_q} torch thread(s) (by threads: "
            f"{', '.join(f'{t}: {r:.1f}' for t, r in by_threads.items())}); ratio {pipe_q / inproc_q:.2f}",
            flush=True,
        )
        print_metrics("query path", query_delta)

        # ---- open-loop latency at fractions of the measured peak (the same query worker keeps running)
        print("4. query path latency under open-loop load", flush=True)
        pool = [ev for ev, _ in query_log_events(rows, 2000, seed=12)]
        levels = []
        m0 = triton_metrics(triton)
        for frac in fractions:
            levels.append(
                open_loop_level(settings, pool, frac, frac * pipe_q, level_s, inputs, scores, worker)
            )
        results["latency_triton"] = metrics_delta(m0, triton_metrics(triton))
        worker.stop()
        inputs.close()
        scores.close()
        results["latency_levels"] = levels
        results["p99_crossing"] = crossing(levels)
        half = min(levels, key=lambda lv: abs(lv["fraction_of_peak"] - 0.5))
        results["p99_at_half_peak_ms"] = (
            half["p99_ms"] if abs(half["fraction_of_peak"] - 0.5) < 1e-6 else None
        )
        c = results["p99_crossing"]
        print(
            "  p99 crosses 50 ms at "
            + (f"{c['rate_per_s']:.0f} ev/s ({c['fraction']:.2f} x peak)" if c["rate_per_s"] else c["note"]),
            flush=True,
        )
        if args.profile:
            print("5. cProfile of the query path", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            profile_query_path(settings, pool[: min(1000, n_queries)], args.out / "profile_query.txt")
        results["load_average_at_end"] = list(os.getloadavg())
        results["wall_s"] = time.perf_counter() - t_start
        save(results, args.out)
    finally:
        for proc in workers:
            proc.stop()
        triton.stop()
        broker.stop()
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def triton_config_numbers(repo: Path) -> dict[str, dict[str, Any]]:
    """The batching numbers of each python model's exported config (what this run served with)."""
    out: dict[str, dict[str, Any]] = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        text = cfg.read_text()
        if "dynamic_batching" not in text:
            continue
        num = re.search(r"max_batch_size:\s*(\d+)", text)
        delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", text)
        pref = re.search(r"preferred_batch_size:\s*\[([^\]]*)\]", text)
        count = re.search(r"count:\s*(\d+)", text)
        threads = re.search(r'key: "num_threads"\s*value: \{ string_value: "(\d+)"', text)
        out[cfg.parent.name] = {
            "max_batch_size": int(num.group(1)) if num else None,
            "max_queue_delay_us": int(delay.group(1)) if delay else None,
            "preferred_batch_size": [int(x) for x in pref.group(1).split(",")] if pref else None,
            "instances": int(count.group(1)) if count else None,
            "num_threads": int(threads.group(1)) if threads else None,
        }
    return out


# ---------------------------------------------------------------------------------------------- output
def save(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "end_to_end.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    load = results["load_average_at_start"][0]
    subtitle = f"{results['machine']}\n{results['command'].strip()}, load average {load:.1f}"

    if "batch_sweep" in results:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        sweep = results["batch_sweep"]
        for ax, prefix, pipeline in (
            (
                axes[0],
                "text",
                (
                    "query path end-to-end, pairs/s (~10 pairs share a query)",
                    results["queries"]["pipeline_pairs_per_s"],
                ),
            ),
            (axes[1], "product", ("product path end-to-end", results["products"]["pipeline_per_s"])),
        ):
            names = sorted({r["path"] for r in sweep if r["path"].startswith(prefix)})
            if prefix == "product":
                names.append("raw image encoder in-process")
            for name in names:
                pts = [(r["batch"], r["items_per_s"]) for r in sweep if r["path"] == name]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.axhline(pipeline[1], color="k", linestyle="--", linewidth=1, label=pipeline[0])
            ax.set_xscale("log", base=2)
            sizes = sorted({r["batch"] for r in sweep})
            ax.set_xticks(sizes, [str(x) for x in sizes])
            ax.set_xlabel("batch size (items per call)")
            ax.set_ylabel("items / s")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
        axes[0].set_title("Query scoring: pairs/s vs batch")
        axes[1].set_title("Product embedding: products/s vs batch")
        fig.suptitle(subtitle, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_batch.png", dpi=100)
        plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for lv in results["latency_levels"]:
        lat = np.asarray(lv["latencies_ms"])
        ax1.plot(
            lat,
            np.arange(1, len(lat) + 1) / len(lat),
            label=f"{lv['fraction_of_peak']:.2f} x peak ({lv['rate_per_s']:.0f} ev/s)",
        )
    ax1.axvline(P99_TARGET_MS, color="k", linestyle="--", linewidth=1)
    ax1.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    ax1.set_xscale("log")
    ax1.set_xlabel("latency, ms (output minus input record CreateTime)")
    ax1.set_ylabel("fraction of query logs")
    ax1.set_title("Query path latency CDF, open-loop load")
    ax1.legend(fontsize=8)
    levels = results["latency_levels"]
    rates = [lv["rate_per_s"] for lv in levels]
    for q in ("p50_ms", "p95_ms", "p99_ms"):
        ax2.plot(rates, [lv[q] for lv in levels], marker="o", label=q.replace("_ms", ""))
    ax2.axhline(P99_TARGET_MS, color="k", linestyle="--", linewidth=1, label="50 ms")
    ax2.axvline(results["queries"]["pipeline_per_s"], color="grey", linestyle=":", label="backlog peak")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load, query logs / s")
    ax2.set_ylabel("latency, ms")
    ax2.set_title("Latency percentiles vs load")
    ax2.legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=100)
    plt.close(fig)
    (out / "summary.md").write_text(summary_markdown(results))
    print(f"wrote {out}/end_to_end.json, summary.md, throughput_vs_batch.png, latency_cdf.png")


def summary_markdown(r: dict[str, Any]) -> str:
    p, q, c = r["products"], r["queries"], r["p99_crossing"]
    s = r["settings"]
    lines = [
        "# End-to-end benchmark summary",
        "",
        f"`{r['command'].strip()}`, {r['when']}, {r['machine']}; load average "
        f"{r['load_average_at_start'][0]:.2f} at start, {r.get('load_average_at_end', [float('nan')])[0]:.2f}"
        f" at end; {r.get('wall_s', 0):.0f} s. Worker: batch_max_events {s['batch_max_events']}, "
        f"batch_max_wait_ms {s['batch_max_wait_ms']}, triton max_batch {s['triton_max_batch']}, "
        f"query cache {s.get('query_cache_size', 0)} (off: each batch's distinct queries encoded once on "
        "both sides).",
        "",
        "| measure | pipeline | in-process | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| query logs, events/s ({q['pairs'] / q['events']:.1f} pairs each) | {q['pipeline_per_s']:.1f} | "
        f"{q['in_process_per_s']:.1f} ({q.get('in_process_threads', 1)} thread(s), the faster of 1 and 2) | "
        f"**{q['ratio']:.2f}** | >= 0.9 |",
        f"| product upserts vs raw image encoder, /s | {p['pipeline_per_s']:.1f} | "
        f"{p['in_process_raw_image_encoder_per_s']:.1f} | "
        f"**{p['ratio_vs_raw_image_encoder']:.2f}** | >= 0.9 |",
        f"| product upserts vs full in-process embedding, /s | {p['pipeline_per_s']:.1f} | "
        f"{p['in_process_full_per_s']:.1f} | {p['ratio_vs_full']:.2f} | |",
        "",
        "| load (x peak) | offered ev/s | p50 ms | p95 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for lv in r["latency_levels"]:
        lines.append(
            f"| {lv['fraction_of_peak']:.2f} | {lv['rate_per_s']:.0f} | {lv['p50_ms']:.0f} | "
            f"{lv['p95_ms']:.0f} | {lv['p99_ms']:.0f} |"
        )
    where = (
        f"{c['rate_per_s']:.0f} ev/s ({c['fraction']:.2f} x peak, {c['note']})"
        if c["rate_per_s"]
        else c["note"]
    )
    half = r.get("p99_at_half_peak_ms")
    lines += [
        "",
        "p99 at half of peak: "
        + (f"{half:.0f} ms (goal <= 500 ms, #18)." if half is not None else "not measured.")
        + f" p99 crosses 50 ms at: {where}.",
        "",
    ]
    if "batch_sweep" in r:
        lines += ["| batch | " + " | ".join(sorted({x["path"] for x in r["batch_sweep"]})) + " |"]
        names = sorted({x["path"] for x in r["batch_sweep"]})
        lines += ["| ---: |" + " ---: |" * len(names)]
        for b in sorted({x["batch"] for x in r["batch_sweep"]}):
            vals = {x["path"]: x["items_per_s"] for x in r["batch_sweep"] if x["batch"] == b}
            lines.append(f"| {b} | " + " | ".join(f"{vals.get(n, float('nan')):.1f}" for n in names) + " |")
        lines.append("")
    lines += ["Plots: `throughput_vs_batch.png`, `latency_cdf.png`. Full numbers: `end_to_end.json`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
