"""A worker started before its topics exist (topic-init runs later) waits for them instead of exiting:
alive but not ready, logging which topics are missing, stoppable by SIGTERM, then works normally.

The worker runs as a real subprocess (`reliability.faults.WorkerProcess`), so its exit code, its JSON
logs, its HTTP probes and SIGTERM are the real ones."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.local_services import LocalBroker, LocalTriton
from reliability.faults import WorkerProcess
from schemas import ProductEmbedding, QueryLog, encode
from schemas.events import Impression
from tests.conftest import SERVED_VERSION, latest_impressions, make_settings, wait_until
from worker.config import Settings
from worker.kafka_io import create_topics, make_producer
from worker.triton_client import RelevanceClient

RETRY_MAX_S = 0.5  # QL_WORKER_STARTUP_RETRY_MAX_S: the production default (10 s) would slow the test


def topic_waits(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [
        e
        for e in worker.log_events()
        if e.get("event") == "dependency_unavailable" and e.get("what") == "topics"
    ]


def start_query_worker(settings: Settings, log_dir: Path) -> WorkerProcess:
    env = {"QL_WORKER_STARTUP_RETRY_MAX_S": str(RETRY_MAX_S)}
    return WorkerProcess(settings, "query", log_dir, "startup", extra_env=env).start()


def test_query_worker_waits_for_missing_topics_then_scores(
    broker: LocalBroker, triton: LocalTriton, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton, unknown_product_wait_s=5.0)
    topics = settings.topics
    worker = start_query_worker(settings, tmp_path)
    try:
        # waiting, many backoff rounds in: still the same process, alive, not ready, naming the topics
        wait_until("repeated waits for the topics", lambda: len(topic_waits(worker)) >= 6, timeout_s=30)
        last = topic_waits(worker)[-1]
        assert last["level"] == "warning"
        assert topics.embeddings_for(SERVED_VERSION) in last["topics"] and topics.query_logs in last["topics"]
        assert 0 < last["retry_in_s"] <= RETRY_MAX_S
        assert worker.alive() and worker.starts == 1
        assert (worker.probe("/healthz"), worker.probe("/readyz")) == (200, 503)

        # topic-init runs; a product worker's output and a query log arrive
        create_topics(settings)
        with RelevanceClient(settings.triton, settings.worker.model_version) as client:
            vector = client.product_embeddings(["Nike Men Black Tshirt"], ["Tshirts"], [None])[0].embedding
            assert vector is not None
            expected = client.query_relevance(["black tshirt"], np.asarray([vector], dtype=np.float32))[0]
            version = client.model_version()  # the worker scores only against its own model's embeddings
        now = datetime.now(UTC)
        state = ProductEmbedding(
            product_id="p1",
            product_type="Tshirts",
            embedding=[float(x) for x in vector],
            has_title=True,
            has_image=False,
            model_version=version,
            source_event_id="e1",
            updated_at=now,
        )
        query = QueryLog(
            event_id="q1",
            event_time=now,
            query_id="qid1",
            query="black tshirt",
            variant="A",
            impressions=[Impression(product_id="p1", position=1)],
        )
        producer = make_producer(settings.kafka)
        producer.send(topics.embeddings_for(SERVED_VERSION), key=b"p1", value=encode(state)).get(timeout=10)
        producer.send(topics.query_logs, key=b"qid1", value=encode(query)).get(timeout=10)
        producer.close()

        wait_until("the score", lambda: b"qid1:p1" in latest_impressions(settings), timeout_s=30)
        _, score = latest_impressions(settings)[b"qid1:p1"]
        assert score.status == "scored" and score.score is not None
        assert score.score == pytest.approx(expected.score, abs=1e-6)
        assert worker.probe("/readyz") == 200
        assert worker.alive() and worker.starts == 1
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert worker.count("path_crashed") == 0


def test_worker_waiting_for_topics_stops_on_sigterm(
    broker: LocalBroker, triton: LocalTriton, tmp_path: Path
) -> None:
    settings = make_settings(broker, triton)
    worker = start_query_worker(settings, tmp_path)
    try:
        wait_until("a wait for the topics", lambda: len(topic_waits(worker)) >= 1, timeout_s=30)
    finally:
        started = time.monotonic()
        code = worker.stop()  # SIGTERM
    assert code == 0, worker.log()[-3000:]
    assert time.monotonic() - started < 5
    assert worker.count("worker_stopped") == 1
