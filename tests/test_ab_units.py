"""The query worker's per-unit A/B totals on the real broker and Triton: event-time bounds against the
Kafka record timestamp, late events for closed windows, exact totals across a take-over, the report."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

from harness.local_services import LocalBroker, LocalTriton
from schemas import ABMetricsV2, DeadLetter, Impression, ProductEmbedding, QueryLog, encode
from schemas.codec import decode_event
from tests.conftest import (
    SERVED_VERSION,
    RunningWorker,
    latest,
    latest_impressions,
    make_settings,
    wait_until,
)
from worker.ab_report import ReportRequest, read_unit_records, render
from worker.experiments import load_experiments
from worker.kafka_io import create_topics, make_producer
from worker.triton_client import RelevanceClient

EXPERIMENT = {
    "experiment_id": "exp-1",
    "unit": "user",
    "split": {"A": 0.5, "B": 0.5},
    "control": "A",
    "start": "2026-01-01T00:00:00Z",
}


def test_event_time_bounds_late_events_and_take_over(
    broker: LocalBroker, triton: LocalTriton, tmp_path: Path
) -> None:
    declared = tmp_path / "experiments.json"
    declared.write_bytes(orjson.dumps([EXPERIMENT]))
    settings = make_settings(
        broker,
        triton,
        ab_window_s=60,
        event_time_grace_s=120,
        experiments_file=declared,
        unknown_product_wait_s=0.5,
    )
    topics = settings.topics
    create_topics(settings)
    producer = make_producer(settings.kafka)
    with RelevanceClient(settings.triton, settings.worker.model_version) as client:
        version, dim = client.model_version(), client.embedding_dim()
    rng = np.random.default_rng(5)
    for pid in ("p1", "p2"):
        vector = rng.normal(size=dim).astype(np.float32)
        state = ProductEmbedding(
            product_id=pid,
            product_type="Tshirts",
            embedding=(vector / np.linalg.norm(vector)).tolist(),
            has_title=True,
            has_image=False,
            model_version=version,
            source_event_id=f"e-{pid}",
            updated_at=datetime.now(UTC),
        )
        producer.send(topics.embeddings_for(SERVED_VERSION), key=pid.encode(), value=encode(state)).get(
            timeout=10
        )
    now = datetime.now(UTC)
    base = datetime.fromtimestamp(int(now.timestamp()) // 60 * 60 - 1800, UTC)  # a window, 30 min ago

    def send(n: int, at_s: float, stamp_s: float, user: str | None = "u1", experiment: str = "exp-1") -> None:
        """Query log n: event time base + at_s, Kafka timestamp base + stamp_s; one partition for all."""
        event = QueryLog(
            event_id=f"ev{n}",
            event_time=base + timedelta(seconds=at_s),
            query_id=f"q{n}",
            query="black tshirt",
            user_id=user,
            experiment_id=experiment,
            variant="A",
            impressions=[
                Impression(product_id="p1", position=1, clicked=True),
                Impression(product_id="p2", position=2),
            ],
        )
        stamp = int((base.timestamp() + stamp_s) * 1000)
        producer.send(topics.query_logs, key=b"k", value=encode(event), timestamp_ms=stamp).get(timeout=10)

    send(1, 5, 5)  # counted in window base+0
    send(2, 10, 10, user="u2")  # counted in window base+0
    send(3, 300, 300)  # counted in base+300; the watermark passes base+60 + 120 s: base+0 closes
    send(4, 20, 100)  # event time within the grace of its record, but its window closed: late
    send(5, 300, 900)  # 600 s from its record timestamp: out of bounds
    send(6, 301, 301, experiment="exp-undeclared")
    send(7, 302, 302, user=None)  # exp-1 randomises by user
    worker = RunningWorker(settings, ["query"])

    def letters() -> dict[str, str]:
        rows = latest(settings, topics.dead_letter).values()
        return {(d := decode_event(DeadLetter, v)).event_id or "": d.reason for v in rows if v}

    def units() -> dict[tuple[str, str], ABMetricsV2]:
        recs = [decode_event(ABMetricsV2, v) for v in latest(settings, topics.ab_units).values() if v]
        return {(r.unit_id, r.window_start.isoformat()): r for r in recs}

    wait_until("dead letters", lambda: len(letters()) == 4)
    assert letters() == {
        "ev4": "late_event",
        "ev5": "event_time_out_of_bounds",
        "ev6": "unknown_experiment",
        "ev7": "missing_unit_id",
    }
    wait_until("A/B totals", lambda: len(units()) == 3)
    w0, w5 = base.isoformat(), (base + timedelta(seconds=300)).isoformat()
    assert {k: r.searches for k, r in units().items()} == {("u1", w0): 1, ("u2", w0): 1, ("u1", w5): 1}
    first = units()[("u1", w0)]
    assert (first.experiment_id, first.unit, first.clicks, first.impressions) == ("exp-1", "user", 1, 2)
    assert first.scored_impressions == 2 and first.model_version == version
    scored = {k.decode() for k in latest_impressions(settings)}
    # late, undeclared and unit-less searches are scored (for the ranker), the out-of-bounds one is not
    assert {k.split(":")[0] for k in scored} == {"q1", "q2", "q3", "q4", "q6", "q7"}
    assert worker.shutdown() == 0

    # a take-over: the new worker restores the open window (base+300) but not the closed one (base+0)
    send(8, 30, 140)  # for the closed window, in bounds: late after the restore too
    send(9, 320, 320)  # into the restored window: its full totals plus this one
    worker = RunningWorker(settings, ["query"])
    wait_until("after the take-over", lambda: units()[("u1", w5)].searches == 2 and len(letters()) == 5)
    assert letters()["ev8"] == "late_event"
    assert units()[("u1", w0)].searches == 1, "a late event reopened a closed window"
    assert worker.shutdown() == 0
    producer.close()

    # the report reads the same topic: exp-1 holds 2 users, all in variant A
    experiments = load_experiments(declared)
    text = render(read_unit_records(settings), experiments, ReportRequest("exp-1", fmt="csv"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["metric"], r["variant"]) for r in rows} >= {("ctr", "B")}
    ctr = next(r for r in rows if r["metric"] == "ctr")
    assert (ctr["control_units"], float(ctr["control_mean"])) == ("2", 0.5)
    records = [rec for rec, _ in latest_impressions(settings).values()]
    assert records and all(r.query_model_version == r.embedding_model_version == version for r in records)
