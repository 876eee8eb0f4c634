"""The local end-to-end demo: real Tansu broker + real Triton, the fashion catalogue, simulated A/B traffic.

Starts everything it needs, shows progress while it runs, prints a summary a search engineer can
read (top-scored products for sample queries, the A/B table, throughput, where outputs are), and
stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from harness.demo_data import (
    DEMO_EXPERIMENT_ID,
    demo_experiment,
    load_catalogue,
    product_event,
    query_log_events,
)
from harness.local_services import (
    LocalBroker,
    LocalTriton,
    ManagedProcess,
    free_port,
    prepare_model_repository,
)
from harness.reference_ranker import ReferenceRanker
from querylife.catalogue import FLAG_HELP, resolve_catalogue
from schemas import EventError, decode_event, encode
from schemas.ranker import QueryScores
from worker.ab_report import ReportError, ReportRequest, read_unit_records, render
from worker.config import Settings, TritonSettings
from worker.experiments import load_experiments
from worker.kafka_io import create_topics, make_producer, read_topic
from worker.triton_client import RelevanceClient

REPO = Path(__file__).resolve().parents[1]


def _count_keys(settings: Settings, topic: str) -> int:
    return len({k for k, _ in read_topic(settings, topic, idle_s=0.5)})


def _wait_for(
    settings: Settings, topic: str, expected: int, desc: str, procs: list[ManagedProcess], timeout_s: float
) -> float:
    """Progress bar over distinct keys in an output topic; returns the seconds it took."""
    started = time.monotonic()
    with tqdm(total=expected, desc=desc, unit="key") as bar:
        while True:
            n = _count_keys(settings, topic)
            bar.update(n - bar.n)
            if n >= expected:
                return time.monotonic() - started
            for proc in procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited; log {proc.log_path}:\n{proc.log_tail()}")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"only {n}/{expected} keys in {topic} after {timeout_s:.0f}s")
            time.sleep(1.0)


def _summary(
    settings: Settings,
    products: dict[str, dict[str, Any]],
    sample_queries: list[tuple[str, str]],
) -> list[str]:
    searches: dict[str, QueryScores] = {}
    for _, value in read_topic(settings, settings.topics.query_scores):
        try:
            record = decode_event(QueryScores, value)
        except EventError:
            continue
        searches[record.query_id] = record
    lines = []
    for query_id, text in sample_queries:
        search = searches.get(query_id)
        rows = sorted(
            (r for r in search.impressions if r.score is not None) if search else [],
            key=lambda r: -(r.score or 0.0),
        )
        if search is None or not rows:
            continue
        lines.append(f"\n  query: {text!r}  (variant {search.variant}, {len(rows)} products shown)")
        for r in rows[:5]:
            p = products.get(r.product_id, {})
            lines.append(
                f"    {r.score:.3f}  {r.label!s:<10}  pos {r.position:>2}  "
                f"[{p.get('product_type', '?')}] {p.get('title', '?')}"
            )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags, on `qlharness demo`."""
    parser.add_argument("--data", type=Path, default=None, help=FLAG_HELP)
    parser.add_argument("--products", type=int, default=None, help="limit the catalogue (default: all)")
    parser.add_argument("--queries", type=int, default=3000, help="simulated A/B query logs to replay")
    parser.add_argument(
        "--out", type=Path, default=REPO / "reports" / "demo", help="folder for the summary and A/B table"
    )


def _declare_experiment(work: Path) -> Path:
    """The demo's experiment declaration, for the query worker and the report."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    path = work / "experiments.json"
    path.write_bytes(orjson.dumps([demo_experiment(start).model_dump(mode="json")]))
    return path


def _ab_report(settings: Settings, experiments_file: Path, out: Path) -> str:
    """The lift table by user (written to `out`), and the per-window plot beside it."""
    records = read_unit_records(settings)
    experiments = load_experiments(experiments_file)
    out.mkdir(parents=True, exist_ok=True)
    try:
        table = render(records, experiments, ReportRequest(DEMO_EXPERIMENT_ID, plot=out / "ab_windows.png"))
    except ReportError as exc:  # a worker-only install: the figures are on the topic, not here
        return f"(no A/B report: {exc})"
    (out / "ab_lift.md").write_text(table + "\n")
    return table + f"\n(plot: {out / 'ab_windows.png'})"


def run(args: argparse.Namespace) -> int:
    """Start everything, replay, print the summary, stop everything; returns an exit code."""
    # the demo's own consumers would print kafka-python's connection chatter through the progress bars
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    source = resolve_catalogue(args.data, allow_sample=True)
    if not source.exists():
        print(f"catalogue not found at {source.describe()}; pass --data", file=sys.stderr)
        return 2
    args.data = source.path

    work = Path(tempfile.mkdtemp(prefix="querylife-demo-"))
    logs = work / "logs"
    print(f"== Query-LIFE demo (work dir {work})")
    print(f"   catalogue: {source.describe()}")
    broker = LocalBroker(log_dir=logs)
    triton: LocalTriton | None = None
    workers: list[ManagedProcess] = []
    try:
        print("-- exporting the model into a Triton model repository")
        repo = prepare_model_repository(work / "model_repository")
        print("-- starting Tansu (Kafka protocol) and Triton on 127.0.0.1")
        broker.start()
        triton = LocalTriton(repo, log_dir=logs).start()
        with RelevanceClient(TritonSettings(url=triton.grpc_url)) as client:
            version = client.resolve_version()  # the one version exported: the committed head
        env = {
            **os.environ,
            "QL_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "QL_TRITON_URL": triton.grpc_url,
            "QL_WORKER_IMAGE_ROOT": str(args.data / "images"),
            "QL_WORKER_EXPERIMENTS_FILE": str(_declare_experiment(work)),
            "QL_WORKER_AB_WINDOW_S": "60",  # a window a minute: the plot shows the demo's 10 minutes
            "QL_WORKER_MODEL_VERSION": version,
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("QL_")})
        settings = Settings()
        create_topics(settings)
        print(f"   broker {broker.bootstrap}, triton grpc {triton.grpc_url}, metrics {triton.metrics_url}")

        catalogue = load_catalogue(args.data, args.products)
        by_id = {str(p["product_id"]): p for p in catalogue}
        producer = make_producer(settings.kafka)
        now = datetime.now(UTC)
        for product in tqdm(catalogue, desc="replay catalogue", unit="ev"):
            event = product_event(product, now)
            producer.send(settings.topics.product_upserts, key=event.product_id.encode(), value=encode(event))
        producer.flush()

        for path in ("product", "query", "request"):
            port = free_port()
            proc = ManagedProcess(
                f"worker-{path}",
                [sys.executable, "-m", "worker.cli", "run", "--path", path],
                logs / f"worker-{path}.log",
                env={**env, "QL_WORKER_NAME": f"demo-{path}", "QL_WORKER_METRICS_PORT": str(port)},
            )
            proc.start()
            workers.append(proc)
            print(f"   {proc.name}: pid {proc.pid}, metrics :{port}/metrics, log {proc.log_path}")

        product_s = _wait_for(
            settings,
            settings.topics.embeddings_for(version),
            len(by_id),
            "product embeddings",
            workers,
            timeout_s=1800,
        )
        sample: list[tuple[str, str]] = []
        sent = 0
        ranker = ReferenceRanker(settings, version, name="demo-ranker")  # variant B's ranker
        replay_started = time.monotonic()  # B's ranker paces the replay: time it from the first log
        for event, _ in tqdm(
            query_log_events(catalogue, args.queries, experiment_id=DEMO_EXPERIMENT_ID, rerank=ranker.rerank),
            total=args.queries,
            desc="replay query logs",
            unit="ev",
        ):
            producer.send(settings.topics.query_logs, key=event.unit_key(), value=encode(event))
            if len(sample) < 4 and sent % 97 == 5:
                sample.append((event.query_id, event.query))
            sent += 1
        producer.flush()
        producer.close()
        ranker.close()
        impressions = 0
        for _, value in read_topic(settings, settings.topics.query_logs, idle_s=0.5):
            impressions += len(orjson.loads(value or b"{}").get("impressions", []))
        _wait_for(settings, settings.topics.query_scores, sent, "scored query logs", workers, 1800)
        query_s = time.monotonic() - replay_started

        ab = _ab_report(settings, Path(env["QL_WORKER_EXPERIMENTS_FILE"]), args.out)
        dead = read_topic(settings, settings.topics.dead_letter)

        args.out.mkdir(parents=True, exist_ok=True)
        lines = [
            "",
            "== Summary",
            f"model version: {version}",
            f"catalogue used: {source.describe()}",
            f"catalogue: {len(by_id)} products embedded in {product_s:.1f}s "
            f"({len(by_id) / max(product_s, 1e-9):.1f} products/s incl. image decode)",
            f"query logs: {sent} queries, {impressions} impressions scored {query_s:.1f}s after the first "
            f"({sent / max(query_s, 1e-9):.1f} queries/s, {impressions / max(query_s, 1e-9):.0f} pairs/s)",
            f"dead letters: {len(dead)}",
            "",
            "Sample queries, top-5 shown products by relevance score:",
            *_summary(settings, by_id, sample),
            "",
            "A/B test (A: overlap ranking's top 10; B: the reference ranker (harness/reference_ranker.py)",
            "re-ranks A's top 20 by calibrated relevance, shows 10; simulated shoppers click by true grade):",
            f"reference ranker: {ranker.from_table} scores from the relevance table, {ranker.asked} asked "
            "for on request",
            "variants by a hash of the user; intervals by user, delta method (docs/ab_analysis.md):",
            ab,
            "",
            "Outputs (topics on the demo broker, gone when it stops; copies under "
            f"{args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}):",
            f"  scores per search:      {settings.topics.query_scores}",
            f"  relevance table:        {settings.topics.relevance_table} (compacted)",
            f"  requests / replies:     {settings.topics.score_requests} / {settings.topics.score_replies}",
            f"  embeddings state:       {settings.topics.embeddings_for(version)} (compacted)",
            f"  A/B totals per user:    {settings.topics.ab_units}",
            f"  dead letters:           {settings.topics.dead_letter}",
            f"  worker and server logs: {logs}",
        ]
        text = "\n".join(lines)
        (args.out / "summary.txt").write_text(text + "\n")
        print(text)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        for proc in workers:
            proc.stop(timeout_s=30)
        if triton:
            triton.stop()
        broker.stop()
        print("-- stopped workers, Triton and the broker")
