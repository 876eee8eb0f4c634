"""Catalogue-scale benchmark of the query worker's embedding state: cold load, warm restart, memory.

`python -m benchmarks.state_scale --sizes 100000 1000000` (`make bench-scale`) starts a real broker
(Tansu), and for each size N:

1. writes N random unit vectors (256-d, v2 records; random, so nothing compresses) over 3 partitions,
   then a second version of 5 % of the keys (updates) and 1 % tombstones;
2. measures the write rate of the product path's publisher: the worker's `Publisher` with its
   producer settings (acks=all, one request in flight), on batches of the worker's size;
3. cold load: a fresh process builds `EmbeddingState` from the topic (no snapshot), writes a snapshot;
4. writes a further 1 % of new records, then a warm restart: a fresh process restores the snapshot
   and reads only the tail;
5. for float32 and float16 storage: the state's own bytes and the process's peak RSS.

Each load runs in its own process (`python -m benchmarks.state_scale load ...`) so that its peak RSS
and its time are its own. Prints a table and writes every raw sample to reports/bench/state_scale.json.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from harness.local_services import LocalBroker
from worker.backoff import Backoff
from worker.config import KafkaSettings, Settings, TopicSettings, WorkerSettings
from worker.kafka_io import create_topics, make_producer
from worker.outputs import Output
from worker.publisher import Publisher

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench"
DIM = 256
VERSION = "querylife-bench-scale"
GOALS = {  # docs/deploying.md "Catalogue scale": the goals on the 2-core machine
    1_000_000: {"cold_s": 60.0, "warm_s": 10.0, "state_gib_float32": 1.2, "state_gib_float16": 0.7},
    100_000: {"cold_s": 8.0},
}


def record(pid: str, vector: np.ndarray, event: str) -> bytes:
    """A v2 `ProductEmbedding` as the product path writes it (built without pydantic, for speed)."""
    return orjson.dumps(
        {
            "schema_version": 2,
            "product_id": pid,
            "product_type": "Tshirts",
            "model_version": VERSION,
            "dtype": "float32",
            "dim": DIM,
            "vector": base64.b64encode(vector.tobytes()).decode("ascii"),
            "fusion_weights": {"title": 0.6, "image": 0.4},
            "has_title": True,
            "has_image": True,
            "source_event_id": event,
            "updated_at": "2026-12-03T00:00:00Z",
        }
    )


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(kafka: KafkaSettings, topic: str, items: list[tuple[str, bytes | None]]) -> float:
    """Bulk write (a backfill's producer: batched, 5 requests in flight); returns records/s."""
    producer = make_producer(
        kafka, linger_ms=50, batch_size=1 << 20, max_in_flight_requests_per_connection=5, retries=10
    )
    started = time.perf_counter()
    for pid, value in items:
        producer.send(topic, key=pid.encode(), value=value)
    producer.flush(600)
    producer.close()
    return len(items) / (time.perf_counter() - started)


def fill(kafka: KafkaSettings, topic: str, n: int, seed: int, start: int = 0) -> tuple[float, int]:
    """n new products from id `start`, in chunks (bounded memory); returns (records/s, bytes/record)."""
    rng = np.random.default_rng(seed)
    rates, size, chunk = [], 0, 50_000
    for lo in range(start, start + n, chunk):
        hi = min(start + n, lo + chunk)
        vecs = unit_vectors(rng, hi - lo)
        items: list[tuple[str, bytes | None]] = [
            (f"p{i}", record(f"p{i}", vecs[i - lo], f"e{i}")) for i in range(lo, hi)
        ]
        size = len(items[0][1] or b"")
        rates.append(write(kafka, topic, items))
    return float(np.median(rates)), size


def publisher_rate(kafka: KafkaSettings, topic: str, n: int, batch: int = 64) -> float:
    """The product path's publisher: the worker's producer and Publisher, one batch of outputs at a time."""
    rng = np.random.default_rng(9)
    vecs = unit_vectors(rng, n)
    publisher = Publisher(kafka, make_producer(kafka), "product", time.sleep, Backoff(0.1, 1.0))
    started = time.perf_counter()
    for lo in range(0, n, batch):
        outs = [
            Output(topic, f"pub{i}".encode(), record(f"pub{i}", vecs[i], f"pe{i}"))
            for i in range(lo, min(n, lo + batch))
        ]
        publisher.publish(outs, give_up=lambda: False)
    rate = n / (time.perf_counter() - started)
    publisher.producer.close()
    return rate


def load_in_child(bootstrap: str, topic: str, state_dir: Path | None, dtype: str) -> dict[str, Any]:
    """One state load in a fresh process: its seconds, products, state bytes and peak RSS."""
    cmd = [sys.executable, "-m", "benchmarks.state_scale", "load", "--bootstrap", bootstrap, "--topic", topic]
    cmd += ["--dtype", dtype] + (["--state-dir", str(state_dir)] if state_dir else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def child_load(args: argparse.Namespace) -> int:
    """`load` subcommand: build the state as a query worker does, print one JSON line."""
    from worker.embedding_state import EmbeddingState

    prefix = args.topic.removesuffix(f".{VERSION}")  # the state reads `<prefix>.<version>`
    topics = TopicSettings(product_embeddings=prefix)
    worker = WorkerSettings(state_dtype=args.dtype, state_dir=args.state_dir, state_stall_s=60)
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=args.bootstrap), topics=topics, worker=worker)
    rss_before = _peak_rss()
    started = time.perf_counter()
    state = EmbeddingState(settings, DIM, VERSION)
    state.load()
    seconds = time.perf_counter() - started
    matrix = state.matrix(VERSION)
    snapshot_s = 0.0
    if args.state_dir is not None:  # what the worker writes between batches after a load
        t = time.perf_counter()
        state.snapshot()
        snapshot_s = time.perf_counter() - t
    out = {
        "seconds": seconds,
        "restored": state.restored,
        "products": len(matrix),
        "vector_bytes": matrix.nbytes,
        "ids_bytes_estimate": sys.getsizeof(matrix.ids) + sum(sys.getsizeof(k) + 32 for k in matrix.ids),
        "peak_rss_bytes": _peak_rss(),
        "baseline_rss_bytes": rss_before,
        "snapshot_write_s": snapshot_s,
    }
    state.close()
    print(orjson.dumps(out).decode())
    return 0


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_size(broker: LocalBroker, n: int, dtypes: list[str]) -> dict[str, Any]:
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
    topics = TopicSettings.namespaced(f"scale{n}-{uuid.uuid4().hex[:6]}")
    create_topics(Settings(kafka=kafka, topics=topics, worker=WorkerSettings(model_version=VERSION)))
    topic = topics.embeddings_for(VERSION)
    sample: dict[str, Any] = {"n": n}
    t = time.perf_counter()
    sample["write_rate"], sample["record_bytes"] = fill(kafka, topic, n, seed=1)
    rng = np.random.default_rng(2)
    updated = rng.choice(n, size=n // 20, replace=False)
    vecs = unit_vectors(rng, len(updated))
    write(kafka, topic, [(f"p{i}", record(f"p{i}", v, f"u{i}")) for i, v in zip(updated, vecs, strict=True)])
    deleted = rng.choice(n, size=n // 100, replace=False)
    write(kafka, topic, [(f"p{i}", None) for i in deleted])
    sample["fill_s"] = time.perf_counter() - t
    expected = n - len(deleted)
    sample["publisher_rate"] = publisher_rate(kafka, topic + ".publisher", min(20_000, n))
    for k, dtype in enumerate(dtypes):
        with tempfile.TemporaryDirectory(prefix="ql-state-") as tmp:
            cold = load_in_child(broker.bootstrap, topic, Path(tmp), dtype)
            assert cold["products"] == expected and not cold["restored"], (cold, expected)
            sample[f"cold_{dtype}"] = cold
            # the further 1 %: new products the warm restart must read from the topic's tail
            fill(kafka, topic, n // 100, seed=3 + k, start=n + k * (n // 100))
            expected += n // 100
            warm = load_in_child(broker.bootstrap, topic, Path(tmp), dtype)
            assert warm["restored"] and warm["products"] == expected, (warm, expected)
            sample[f"warm_{dtype}"] = warm
        print(_row(sample, dtype), flush=True)
    return sample


def _row(s: dict[str, Any], dtype: str) -> str:
    cold, warm = s[f"cold_{dtype}"], s[f"warm_{dtype}"]
    gib = 2**30
    return (
        f"| {s['n']:,} | {dtype} | {cold['seconds']:.1f} s ({cold['products'] / cold['seconds']:,.0f}/s) "
        f"| {warm['seconds']:.1f} s | {(cold['vector_bytes'] + cold['ids_bytes_estimate']) / gib:.2f} GiB "
        f"| {cold['peak_rss_bytes'] / gib:.2f} GiB | {s['record_bytes']} B | {s['publisher_rate']:,.0f}/s |"
    )


HEADER = (
    "| products | storage | cold load | warm restart (+1 %) | state (vectors + ids) | peak RSS "
    "| record | product-path publisher |\n|---:|---|---:|---:|---:|---:|---:|---:|"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    child = sub.add_parser("load", help="(internal) one state load in this process, printed as JSON")
    child.add_argument("--bootstrap", required=True, help="broker address")
    child.add_argument("--topic", required=True, help="embeddings topic")
    child.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="state storage")
    child.add_argument("--state-dir", type=Path, default=None, help="snapshot directory")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="catalogue sizes N")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"], help="state storage dtypes")
    ap.add_argument("--out", type=Path, default=OUT / "state_scale.json", help="raw samples (JSON)")
    args = ap.parse_args(argv)
    if args.cmd == "load":
        return child_load(args)
    samples = []
    with tempfile.TemporaryDirectory(prefix="ql-scale-broker-") as logs:
        broker = LocalBroker(log_dir=Path(logs)).start()
        try:
            print(HEADER, flush=True)
            for n in args.sizes:
                samples.append(run_size(broker, n, args.dtypes))
        finally:
            broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "goals": GOALS, "dim": DIM}
    args.out.write_bytes(
        orjson.dumps({"meta": meta, "samples": samples}, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    print(f"raw samples: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
