"""End to end on the real broker and the real Triton: products and query logs in, exactly the expected
keys out, scores equal to the model's direct output, a restart mid-stream loses nothing, bad events
are dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from harness.demo_data import load_catalogue, product_event, query_log_events
from harness.local_services import LocalBroker, LocalTriton
from schemas import (
    ABMetricsV2,
    DeadLetter,
    ProductEmbedding,
    ProductEmbeddingV2,
    ProductUpsert,
    QueryLog,
    decode_event,
    encode,
)
from schemas.events import Impression
from tests.conftest import (
    SERVED_VERSION,
    RunningWorker,
    latest,
    latest_impressions,
    make_settings,
    wait_until,
)
from worker.ab_metrics import UnitAggregator
from worker.kafka_io import create_topics, make_producer
from worker.triton_client import RelevanceClient

N_PRODUCTS = 20
N_QUERIES = 30


@pytest.fixture(scope="module")
def catalogue(data_dir: Path) -> list[dict[str, Any]]:
    return load_catalogue(data_dir, N_PRODUCTS)


def test_pipeline_end_to_end(
    broker: LocalBroker, triton: LocalTriton, data_dir: Path, catalogue: list[dict[str, Any]], model: Any
) -> None:
    settings = make_settings(
        broker, triton, image_root=data_dir / "images", batch_max_events=8, unknown_product_wait_s=0.5
    )
    create_topics(settings)
    producer = make_producer(settings.kafka)
    topics = settings.topics
    now = datetime.now(UTC)

    # --- products: all valid ones, one delete, and two hostile events
    for product in catalogue:
        event = product_event(product, now)
        producer.send(topics.product_upserts, key=event.product_id.encode(), value=encode(event))
    deleted = str(catalogue[-1]["product_id"])
    producer.send(
        topics.product_upserts,
        key=deleted.encode(),
        value=encode(ProductUpsert(event_id="del-1", event_time=now, op="delete", product_id=deleted)),
    )
    producer.send(topics.product_upserts, value=b'{"op": "upsert", "product_id": ')  # truncated JSON
    bad_path = product_event(catalogue[0], now).model_dump(mode="json")
    bad_path["image"] = {"path": "../../../etc/passwd"}
    producer.send(topics.product_upserts, value=encode_json(bad_path))
    producer.flush()

    worker = RunningWorker(settings)
    live_ids = {str(p["product_id"]) for p in catalogue} - {deleted}
    wait_until(
        "product embeddings",
        lambda: (
            set(latest(settings, topics.embeddings_for(SERVED_VERSION)))
            == {pid.encode() for pid in live_ids | {deleted}}
            and latest(settings, topics.embeddings_for(SERVED_VERSION))[deleted.encode()] is None
        ),
    )

    # --- queries, first half, then a graceful restart mid-stream, then the second half
    queries = [ev for ev, _ in query_log_events(catalogue[:-1], N_QUERIES, seed=3)]
    unknown = QueryLog(
        event_id="q-unknown",
        event_time=now,
        query_id="qid-unknown",
        query="red saree",
        variant="A",
        impressions=[Impression(product_id="no-such-product", position=1)],
    )
    queries.append(unknown)
    partitions: dict[str, int] = {}
    half = len(queries) // 2
    for ev in queries[:half]:
        meta = producer.send(topics.query_logs, key=ev.query_id.encode(), value=encode(ev)).get(timeout=10)
        partitions[ev.event_id] = meta.partition
    first_pairs = sum(len(ev.impressions) for ev in queries[:half])
    wait_until("first half scored", lambda: len(latest_impressions(settings)) >= first_pairs)
    assert worker.shutdown() == 0

    for ev in queries[half:]:
        meta = producer.send(topics.query_logs, key=ev.query_id.encode(), value=encode(ev)).get(timeout=10)
        partitions[ev.event_id] = meta.partition
    producer.send(topics.query_logs, value=b'{"query": 5}').get(timeout=10)
    producer.close()
    worker = RunningWorker(settings)
    expected_score_keys = {
        f"{ev.query_id}:{imp.product_id}".encode() for ev in queries for imp in ev.impressions
    }
    wait_until("all scores", lambda: set(latest_impressions(settings)) == expected_score_keys)
    window_start = UnitAggregator(settings.worker.ab_window_s, 1.0, {}).window_start
    expected_unit_keys = {  # no experiment: the unit is the user, else the session, else the search
        orjson.dumps(
            [
                "",
                ev.user_id or ev.session_id or ev.query_id,
                ev.variant,
                model.version,
                window_start(ev.event_time).isoformat(),
                partitions[ev.event_id],
            ]
        )
        for ev in queries
    }

    def unit_records() -> list[ABMetricsV2]:
        return [decode_event(ABMetricsV2, v) for v in latest(settings, topics.ab_units).values() if v]

    def metrics_complete() -> bool:
        return sum(r.searches for r in unit_records()) == len(queries)

    wait_until("A/B metrics", metrics_complete)
    wait_until("dead letters", lambda: len(latest(settings, topics.dead_letter)) == 4)
    assert worker.shutdown() == 0

    # --- embeddings: exactly the live products, equal to the model's own product embedding
    state = latest(settings, topics.embeddings_for(SERVED_VERSION))
    embeddings = {k.decode(): decode_event(ProductEmbeddingV2, v) for k, v in state.items() if v is not None}
    assert set(embeddings) == live_ids
    assert {e.model_version for e in embeddings.values()} == {model.version}
    assert {(e.dtype, e.dim) for e in embeddings.values()} == {("float32", model.embed_dim)}
    for e in embeddings.values():  # the weights that made each embedding: title only, or both
        weights = e.fusion_weights
        assert abs(weights.title + weights.image - 1) < 1e-4
        assert weights.image == 0.0 if not e.has_image else 0.0 <= weights.image <= 1.0
    sample = [p for p in catalogue if str(p["product_id"]) in live_ids][:4]
    direct = product_embeddings_in_process(model, data_dir, sample)
    got = np.stack([embeddings[str(p["product_id"])].array() for p in sample])
    np.testing.assert_allclose(got, direct, atol=1e-5)

    # --- scores: one per impression, equal to the model's direct output; unknown products reported
    scores = latest_impressions(settings)
    assert set(scores) == expected_score_keys
    reported_search, reported = scores[b"qid-unknown:no-such-product"]
    assert reported.status == "unknown_product" and reported.score is None
    scored = [(rec, s) for rec, s in scores.values() if s.status == "scored"]
    assert len(scored) == len(expected_score_keys) - 1
    q = model.encode_texts([rec.query for rec, _ in scored])
    p = torch.tensor(np.stack([embeddings[s.product_id].array() for _, s in scored]), dtype=torch.float32)
    sim, prob = model.relevance(q, p)
    np.testing.assert_allclose([s.score for _, s in scored], prob.numpy(), atol=1e-5)
    np.testing.assert_allclose([s.similarity for _, s in scored], sim.numpy(), atol=1e-5)
    assert {(rec.query_model_version, rec.embedding_model_version) for rec, _ in scored} == {
        (model.version, model.version)
    }

    # --- A/B metrics: exactly the expected keys; counts exact despite the restart
    metric_records = unit_records()
    assert {r.key() for r in metric_records} == expected_unit_keys
    for variant in ("A", "B"):
        mine = [ev for ev in queries if ev.variant == variant]
        rows = [r for r in metric_records if r.variant == variant]
        assert sum(r.searches for r in rows) == len(mine)
        assert sum(r.impressions for r in rows) == sum(len(ev.impressions) for ev in mine)
        assert sum(r.clicks for r in rows) == sum(imp.clicked for ev in mine for imp in ev.impressions)

    # --- dead letters: the three hostile inputs, each with a specific reason and its original bytes,
    # and the query log naming an unknown product (scored for the rest, but not fully processed)
    letters = [decode_event(DeadLetter, v) for v in latest(settings, topics.dead_letter).values() if v]
    assert sorted(d.reason for d in letters) == [
        "invalid_json",
        "missing",
        "path_traversal",
        "unknown_product",
    ]
    assert any(d.original == b'{"query": 5}' for d in letters)
    (unknown_letter,) = [d for d in letters if d.reason == "unknown_product"]
    assert unknown_letter.event_id == reported_search.event_id
    assert "no-such-product" in unknown_letter.error_message


def test_embedding_of_the_wrong_width_is_ignored_not_fatal(broker: LocalBroker, triton: LocalTriton) -> None:
    """Embedding-state records whose width is not the model's (Triton's query_relevance input) are
    skipped, counted and logged, whether read at start or while following; valid products still score."""
    from prometheus_client import REGISTRY

    def rejected() -> float:
        value = REGISTRY.get_sample_value(
            "querylife_state_records_rejected_total", {"reason": "embedding_dim"}
        )
        return value or 0.0

    settings = make_settings(broker, triton, unknown_product_wait_s=0.5)
    topics = settings.topics
    create_topics(settings)
    producer = make_producer(settings.kafka)
    now = datetime.now(UTC)
    rng = np.random.default_rng(7)
    with RelevanceClient(settings.triton, settings.worker.model_version) as client:
        version = client.model_version()  # the worker scores only against its own model's embeddings

    def embed(product_id: str, width: int) -> None:
        vector = rng.normal(size=width).astype(np.float32)
        state = ProductEmbedding(
            product_id=product_id,
            product_type="Tshirts",
            embedding=(vector / np.linalg.norm(vector)).tolist(),
            has_title=True,
            has_image=False,
            model_version=version,
            source_event_id=f"e-{product_id}",
            updated_at=now,
        )
        producer.send(
            topics.embeddings_for(SERVED_VERSION), key=product_id.encode(), value=encode(state)
        ).get(timeout=10)

    def query(query_id: str, products: list[str]) -> None:
        event = QueryLog(
            event_id=f"ev-{query_id}",
            event_time=now,
            query_id=query_id,
            query="black cotton tshirt",
            variant="A",
            impressions=[Impression(product_id=p, position=i + 1) for i, p in enumerate(products)],
        )
        producer.send(topics.query_logs, key=query_id.encode(), value=encode(event)).get(timeout=10)

    def statuses() -> dict[str, str]:
        return {k.decode(): imp.status for k, (_, imp) in latest_impressions(settings).items()}

    before = rejected()
    # read when the state loads: two valid products, one too short, one too long, one valid then replaced
    for product_id, width in [("p-good", 256), ("p-short", 255), ("p-long", 512), ("p-replaced", 256)]:
        embed(product_id, width)
    embed("p-replaced", 128)
    query("q1", ["p-good", "p-short", "p-long", "p-replaced"])
    worker = RunningWorker(settings, ["query"])
    wait_until("first query scored", lambda: len(statuses()) == 4)
    # read while following the state
    embed("p-late", 300)
    embed("p-good-2", 256)
    query("q2", ["p-good", "p-late", "p-good-2"])
    wait_until("second query scored", lambda: len(statuses()) == 7)
    producer.close()
    assert worker.shutdown() == 0  # the worker never crashed
    assert statuses() == {
        "q1:p-good": "scored",
        "q1:p-short": "unknown_product",
        "q1:p-long": "unknown_product",
        "q1:p-replaced": "unknown_product",
        "q2:p-good": "scored",
        "q2:p-late": "unknown_product",
        "q2:p-good-2": "scored",
    }
    assert rejected() - before == 4
    letters = [decode_event(DeadLetter, v) for v in latest(settings, topics.dead_letter).values() if v]
    assert sorted((d.event_id, d.reason) for d in letters) == [
        ("ev-q1", "unknown_product"),
        ("ev-q2", "unknown_product"),
    ]


def encode_json(obj: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(obj)


def product_embeddings_in_process(model: Any, data_dir: Path, products: list[dict[str, Any]]) -> np.ndarray:
    """The model's own product path (same functions Triton calls), without Triton or Kafka."""
    from querylife.imaging import decode_image, preprocess

    titles = model.encode_texts([p["title"] for p in products])
    pixels = preprocess(
        [
            decode_image((data_dir / "images" / p["image_path"]).read_bytes(), image_size=model.image_size)
            for p in products
        ],
        model.image_size,
    )
    images = model.encode_images(pixels)
    ones = torch.ones(len(products), dtype=torch.bool)
    fused = model.fuse(titles, images, [p["product_type"] for p in products], ones, ones)
    return np.asarray(fused.detach().numpy())
