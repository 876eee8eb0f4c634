"""The ranker's ways in, on the real broker and Triton: one `QueryScores` record per query log, the
relevance table, and candidate scoring on request (unknown candidates answered as unknown, expired
requests answered `expired`, a request for another version dead-lettered)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from prometheus_client import REGISTRY

from harness.local_services import LocalBroker, LocalTriton
from schemas import (
    DeadLetter,
    FusionWeights,
    ProductEmbeddingV2,
    QueryLog,
    decode_event,
    encode,
)
from schemas.events import Impression
from schemas.ranker import QueryScores, RelevanceEntry, ScoreReply, ScoreRequest, normalise_query, table_key
from tests.conftest import SERVED_VERSION, RunningWorker, latest, make_settings, wait_until
from worker.kafka_io import create_topics, make_producer, topic_specs
from worker.triton_client import RelevanceClient

TITLES = {
    "p-shirt": ("Nike Men Black Tshirt", "Tshirts"),
    "p-shoe": ("Puma Men Red Casual Shoes", "Casual Shoes"),
}
# what each product's embedding record says made it: the per-log records and replies must carry these
WEIGHTS = {"p-shirt": FusionWeights(title=0.75, image=0.25), "p-shoe": FusionWeights(title=1.0, image=0.0)}


def embedding_record(pid: str, vector: np.ndarray, product_type: str, weights: FusionWeights) -> bytes:
    """The served version's embedding record of a product (an image part when its weight is > 0)."""
    record = ProductEmbeddingV2.from_array(
        vector,
        product_id=pid,
        product_type=product_type,
        model_version=SERVED_VERSION,
        fusion_weights=weights,
        has_title=True,
        has_image=weights.image > 0,
        source_event_id=f"e-{pid}",
        updated_at=datetime.now(UTC),
    )
    return encode(record)


def test_query_scores_table_and_requests(broker: LocalBroker, triton: LocalTriton) -> None:
    settings = make_settings(broker, triton)
    topics = settings.topics
    create_topics(settings)
    producer = make_producer(settings.kafka)
    now = datetime.now(UTC)
    with RelevanceClient(settings.triton, SERVED_VERSION) as client:
        made = client.product_embeddings(
            [t for t, _ in TITLES.values()], [k for _, k in TITLES.values()], [None] * len(TITLES)
        )
        vectors = {pid: r.embedding for pid, r in zip(TITLES, made, strict=True) if r.embedding is not None}
        assert list(vectors) == list(TITLES)
        query = "  BLACK   T-shirt for Men "
        expected = {
            pid: s
            for pid, s in zip(
                TITLES,
                client.query_relevance([query] * len(TITLES), np.stack(list(vectors.values()))),
                strict=True,
            )
        }
    for pid, vector in vectors.items():
        record = embedding_record(pid, vector, TITLES[pid][1], WEIGHTS[pid])
        producer.send(topics.embeddings_for(SERVED_VERSION), key=pid.encode(), value=record)
    producer.flush(10)
    worker = RunningWorker(settings, ["query", "request"])
    try:
        requests = [
            ScoreRequest(
                request_id="r-ok",
                reply_key="ranker-1",
                query=query,
                sent_at=now,
                timeout_ms=60_000,
                candidates=["p-shoe", "never-embedded", "p-shirt"],
            ),
            ScoreRequest(
                request_id="r-old",
                reply_key="ranker-2",
                query=query,
                sent_at=now - timedelta(seconds=30),
                timeout_ms=100,
                candidates=["p-shirt"],
            ),
            ScoreRequest(
                request_id="r-pinned",
                reply_key="ranker-3",
                query=query,
                sent_at=now,
                candidates=["p-shirt"],
                model_version="querylife-v0-other",
            ),
        ]
        for request in requests:
            producer.send(topics.score_requests, key=request.reply_key.encode(), value=encode(request))
        log = QueryLog(
            event_id="ev-1",
            event_time=now,
            query_id="q-1",
            query=query,
            user_id="u1",
            variant="A",
            impressions=[
                Impression(product_id="p-shirt", position=1, clicked=True),
                Impression(product_id="p-shoe", position=2),
                Impression(product_id="gone", position=3),
            ],
        )
        producer.send(topics.query_logs, key=log.unit_key(), value=encode(log))
        producer.flush(10)

        wait_until(
            "replies", lambda: {b"ranker-1", b"ranker-2"} <= set(latest(settings, topics.score_replies))
        )
        replies = {
            k: decode_event(ScoreReply, v or b"") for k, v in latest(settings, topics.score_replies).items()
        }
        ok = replies[b"ranker-1"]
        assert ok.status == "ok" and ok.model_version == SERVED_VERSION
        assert [s.product_id for s in ok.scores] == ["p-shoe", "never-embedded", "p-shirt"]  # request order
        assert ok.scores[1].status == "unknown_product" and ok.scores[1].score is None  # never dropped
        for answer in (ok.scores[0], ok.scores[2]):
            assert answer.score is not None
            assert abs(answer.score - expected[answer.product_id].score) < 1e-5
            assert answer.fusion_weights == WEIGHTS[answer.product_id]
        assert replies[b"ranker-2"].status == "expired" and replies[b"ranker-2"].scores == []
        assert b"ranker-3" not in replies

        # asked again (another spelling, one normalised form): its embedding is kept, same scores
        cached = REGISTRY.get_sample_value("querylife_query_cache_total", {"outcome": "hit"}) or 0.0
        again = ScoreRequest(
            request_id="r-again",
            reply_key="ranker-4",
            query=query.upper(),
            sent_at=datetime.now(UTC),
            timeout_ms=60_000,
            candidates=list(TITLES),
        )
        producer.send(topics.score_requests, key=b"ranker-4", value=encode(again))
        producer.flush(10)
        wait_until("the second reply", lambda: b"ranker-4" in latest(settings, topics.score_replies))
        second = decode_event(ScoreReply, latest(settings, topics.score_replies)[b"ranker-4"] or b"")
        assert second.status == "ok" and [a.product_id for a in second.scores] == list(TITLES)
        for answer in second.scores:
            assert abs((answer.score or 0.0) - expected[answer.product_id].score) < 1e-5
        assert REGISTRY.get_sample_value("querylife_query_cache_total", {"outcome": "hit"}) == cached + 1

        wait_until("the query's record", lambda: b"q-1" in latest(settings, topics.query_scores))
        scored = decode_event(QueryScores, latest(settings, topics.query_scores)[b"q-1"] or b"")
        assert scored.query_model_version == scored.embedding_model_version == SERVED_VERSION
        assert scored.normalised_query == "black t-shirt for men"
        by_id = {imp.product_id: imp for imp in scored.impressions}
        assert by_id["gone"].status == "unknown_product" and by_id["p-shirt"].clicked
        assert by_id["gone"].fusion_weights is None
        for pid, weights in WEIGHTS.items():  # the weights of the product's embedding record
            assert by_id[pid].fusion_weights == weights
        for pid in TITLES:  # the same scores as the request path's
            assert abs((by_id[pid].score or 0.0) - expected[pid].score) < 1e-5

        table = latest(settings, topics.relevance_table)
        for pid in TITLES:
            key = table_key(SERVED_VERSION, normalise_query(query), pid)
            entry = decode_event(RelevanceEntry, table[key] or b"")
            assert entry.model_version == SERVED_VERSION and entry.source in {"impression", "request"}
            assert entry.fusion_weights == WEIGHTS[pid]
            assert abs(entry.score - expected[pid].score) < 1e-5
        assert table_key(SERVED_VERSION, normalise_query(query), "never-embedded") not in table

        wait_until("the pinned request's letter", lambda: len(latest(settings, topics.dead_letter)) >= 1)
        letters = [decode_event(DeadLetter, v or b"") for v in latest(settings, topics.dead_letter).values()]
        assert {x.reason for x in letters if x.source_topic == topics.score_requests} == {
            "model_version_not_served"
        }
    finally:
        producer.close()
        assert worker.shutdown() == 0


def test_ranker_topics_have_the_stated_retention() -> None:
    from worker.config import TopicSettings

    topics = TopicSettings()
    specs = {s.name: s.topic_configs or {} for s in topic_specs(topics)}
    assert specs[topics.relevance_table] == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(30 * 86_400_000),
    }
    assert specs[topics.query_scores]["retention.ms"] == str(7 * 86_400_000)
    assert (
        specs[topics.score_requests]["retention.ms"]
        == specs[topics.score_replies]["retention.ms"]
        == "3600000"
    )


def test_head_query_top_k_reaches_a_product_nobody_has_shown(
    broker: LocalBroker, triton: LocalTriton
) -> None:
    settings = make_settings(broker, triton, topk_queries=3, topk=4, topk_refresh_s=0.0)
    topics = settings.topics
    create_topics(settings)
    catalogue = {
        "p-shirt": ("Nike Men Black Tshirt", "Tshirts"),
        "p-jeans": ("Flying Machine Men Blue Jeans", "Jeans"),
        "p-kurta": ("Fabindia Women Navy Blue Kurta", "Kurtas"),
        "p-watch": ("Titan Men Silver Analog Watch", "Watches"),
        "p-new-shoe": ("Puma Men Red Casual Shoes", "Casual Shoes"),
    }
    with RelevanceClient(settings.triton, SERVED_VERSION) as client:
        made = client.product_embeddings(
            [t for t, _ in catalogue.values()], [k for _, k in catalogue.values()], [None] * 5
        )
    records = {
        pid: embedding_record(pid, r.embedding, catalogue[pid][1], FusionWeights(title=1.0, image=0.0))  # type: ignore[arg-type]
        for pid, r in zip(catalogue, made, strict=True)
    }
    producer = make_producer(settings.kafka)
    embeddings = topics.embeddings_for(SERVED_VERSION)
    for pid in ("p-shirt", "p-jeans", "p-kurta", "p-watch"):  # the new shoe is not in the catalogue yet
        producer.send(embeddings, key=pid.encode(), value=records[pid])
    producer.flush(10)

    def search(n: int, query: str) -> None:
        log = QueryLog(
            event_id=f"ev-{n}",
            event_time=datetime.now(UTC),
            query_id=f"q-{n}",
            query=query,
            user_id=f"u{n}",
            variant="A",
            impressions=[Impression(product_id="p-shirt", position=1)],
        )
        producer.send(topics.query_logs, key=log.unit_key(), value=encode(log))
        producer.flush(10)

    head = "red casual shoes"
    key = table_key(SERVED_VERSION, head, "p-new-shoe")
    worker = RunningWorker(settings, ["query"])
    try:
        for n in range(3):  # the head query; none of its searches ever showed the shoe
            search(n, "Red  Casual SHOES")
        wait_until(
            "the head query's top-K",
            lambda: table_key(SERVED_VERSION, head, "p-watch") in latest(settings, topics.relevance_table),
        )
        assert key not in latest(settings, topics.relevance_table)
        producer.send(embeddings, key=b"p-new-shoe", value=records["p-new-shoe"])  # upserted after
        producer.flush(10)
        later = iter(range(3, 10_000))

        def refreshed() -> bool:  # later traffic, any query: a refresh sees the catalogue moved
            search(next(later), "black tshirt")
            return key in latest(settings, topics.relevance_table)

        wait_until("the new product in the head query's top-K", refreshed, timeout_s=240)
        entry = decode_event(RelevanceEntry, latest(settings, topics.relevance_table)[key] or b"")
        assert (entry.source, entry.rank, entry.model_version) == ("top_k", 1, SERVED_VERSION)
    finally:
        producer.close()
        assert worker.shutdown() == 0


def test_a_round_of_head_queries_is_spread_over_batches(broker: LocalBroker, triton: LocalTriton) -> None:
    """25 head queries are refreshed 10 per query-log batch (no batch waits for the whole round); the
    round ends with every query's top-K written, and nothing is refreshed again until something moves."""
    from worker.embedding_state import EmbeddingState
    from worker.head_queries import HeadQueries

    settings = make_settings(broker, triton, topk_queries=25, topk=2, topk_refresh_s=0.0)
    create_topics(settings)
    rng = np.random.default_rng(0)
    producer = make_producer(settings.kafka)
    for i in range(6):
        v = rng.standard_normal(256).astype(np.float32)
        weights = FusionWeights(title=0.25, image=0.75)
        record = embedding_record(f"p{i}", v / np.linalg.norm(v), "Tshirts", weights)
        producer.send(settings.topics.embeddings_for(SERVED_VERSION), key=f"p{i}".encode(), value=record)
    producer.flush(10)
    producer.close()
    state = EmbeddingState(settings, 256, SERVED_VERSION)
    state.load()
    try:
        with RelevanceClient(settings.triton, SERVED_VERSION) as client:
            head = HeadQueries(settings.worker, client, state)
            head.observe([f"query {n}" for n in range(25)])
            rounds = [head.refresh(settings.topics.relevance_table, datetime.now(UTC)) for _ in range(4)]
    finally:
        state.close()
    assert [len(r) for r in rounds] == [20, 20, 10, 0]
    entries = [decode_event(RelevanceEntry, out.value) for r in rounds for out in r]
    assert {e.query for e in entries} == {f"query {n}" for n in range(25)}
    assert {e.rank for e in entries} == {1, 2} and {e.source for e in entries} == {"top_k"}
    assert {(e.fusion_weights.title, e.fusion_weights.image) for e in entries if e.fusion_weights} == {
        (0.25, 0.75)
    }
