"""Every record type round-trips through a real topic; bad input fails with a reason naming the field."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import BaseModel

from schemas import (
    ABMetrics,
    DeadLetter,
    EventError,
    ProductEmbedding,
    ProductUpsert,
    QueryLog,
    RelevanceScore,
    decode_event,
    encode,
)
from schemas.export import rendered
from schemas.outputs import Interval
from tests.conftest import make_settings
from worker.kafka_io import create_topics, make_producer, read_topic

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


def valid_upsert(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": 1,
        "event_id": "e-1",
        "event_time": "2026-11-24T12:00:00Z",
        "op": "upsert",
        "product_id": "10001",
        "title": "Nike Men Black Tshirt",
        "product_type": "Tshirts",
        "attributes": {"colour": "Black"},
        "image": {"path": "10001.jpg"},
    }
    return base | over


def valid_query(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": 1,
        "event_id": "q-1",
        "event_time": "2026-11-24T12:00:00+00:00",
        "query_id": "qid-1",
        "query": "black tshirt men",
        "variant": "A",
        "impressions": [{"product_id": "10001", "position": 1, "clicked": True}],
    }
    return base | over


EXAMPLES: list[BaseModel] = [
    ProductUpsert.model_validate(valid_upsert()),
    ProductUpsert.model_validate(valid_upsert(image={"data": base64.b64encode(JPEG).decode()})),
    ProductUpsert.model_validate(
        {"event_id": "e-2", "event_time": "2026-11-24T12:00:00Z", "op": "delete", "product_id": "10001"}
    ),
    QueryLog.model_validate(valid_query()),
    ProductEmbedding(
        product_id="10001",
        product_type="Tshirts",
        embedding=[0.6, 0.8],
        has_title=True,
        has_image=False,
        model_version="v1",
        source_event_id="e-1",
        updated_at=NOW,
    ),
    RelevanceScore(
        query_id="qid-1",
        event_id="q-1",
        product_id="10001",
        variant="A",
        position=1,
        score=0.93,
        similarity=0.41,
        label="exact",
        model_version="v1",
        scored_at=NOW,
    ),  # type: ignore[arg-type]
    RelevanceScore(
        query_id="qid-1",
        event_id="q-1",
        product_id="404",
        variant="A",
        position=2,
        status="unknown_product",
        model_version="v1",
        scored_at=NOW,
    ),
    ABMetrics(
        variant="B",
        window_start=NOW,
        window_end=NOW,
        source_partition=0,
        last_offset=41,
        queries=10,
        queries_with_order=2,
        impressions=100,
        clicks=12,
        orders=2,
        scored_impressions=100,
        scored_clicks=12,
        scored_top3=30,
        relevance_sum_shown=55.0,
        relevance_sum_clicked=9.0,
        relevance_sum_top3=20.0,
        mean_relevance_shown=0.55,
        mean_relevance_clicked=0.75,
        mean_relevance_top3=0.667,
        ctr=0.12,
        ctr_ci=Interval(low=0.07, high=0.2),
        conversion_rate=0.2,
        conversion_ci=Interval(low=0.06, high=0.51),
        model_version="v1",
        emitted_at=NOW,
    ),
    DeadLetter(
        source_topic="in",
        partition=2,
        offset=7,
        key=b"k",
        original=b"\xff\x00not json",
        reason="invalid_json",
        error_class="EventError",
        error_message="bad",
        failed_at=NOW,
        worker="w",
    ),
]


def test_every_record_round_trips_through_a_real_topic(broker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker)
    create_topics(settings)
    producer = make_producer(settings.kafka)
    topic = settings.topics.dead_letter  # any topic of ours
    for i, record in enumerate(EXAMPLES):
        producer.send(topic, key=str(i).encode(), value=encode(record)).get(timeout=10)
    producer.close()
    received = {int(k or b"-1"): v for k, v in read_topic(settings, topic)}
    assert sorted(received) == list(range(len(EXAMPLES)))
    for i, record in enumerate(EXAMPLES):
        assert decode_event(type(record), received[i]) == record


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", "invalid_json", None),
        (b'{"title": "\xff\xfe"}', "invalid_utf8", None),
        (b"[1, 2]", "not_an_object", None),
        (orjson.dumps(valid_upsert(product_id="../x")), "string_pattern_mismatch", "product_id"),
        (orjson.dumps(valid_upsert(title="x" * 600)), "string_too_long", "title"),
        (orjson.dumps(valid_upsert(schema_version=2)), "unsupported_schema_version", "schema_version"),
        (orjson.dumps(valid_upsert(event_time="2026-11-24T12:00:00")), "timezone_aware", "event_time"),
        (orjson.dumps(valid_upsert(image={"path": "../../etc/passwd"})), "path_traversal", "image.path"),
        (orjson.dumps(valid_upsert(image={"path": "/etc/passwd"})), "absolute_path", "image.path"),
        (
            orjson.dumps(valid_upsert(image={"path": "http://169.254.169.254/latest"})),
            "url_not_allowed",
            "image.path",
        ),
        (
            orjson.dumps(valid_upsert(image={"data": base64.b64encode(b"GIF89a....").decode()})),
            "unsupported_image_format",
            "image.data",
        ),
        (orjson.dumps(valid_upsert(image={"data": "@@notbase64@@"})), "invalid_base64", "image.data"),
        (orjson.dumps(valid_upsert(title=None, image=None)), "no_content", "<event>"),
        (b'{"a": NaN}', "invalid_json", None),
    ],
)
def test_bad_product_upserts_name_their_field(raw: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(EventError) as info:
        decode_event(ProductUpsert, raw)
    assert info.value.reason == reason
    if field is not None:
        assert info.value.field == field
        assert field in str(info.value)


@pytest.mark.parametrize(
    ("override", "reason", "field"),
    [
        ({"impressions": []}, "too_short", "impressions"),
        ({"impressions": [{"product_id": "1", "position": "1"}]}, "int_type", "impressions.0.position"),
        (
            {"impressions": [{"product_id": "1", "position": 0}]},
            "greater_than_equal",
            "impressions.0.position",
        ),
        ({"impressions": [{"product_id": "1", "position": 1}] * 2}, "duplicate_impression", "impressions"),
        (
            {"impressions": [{"product_id": str(i), "position": 1} for i in range(201)]},
            "too_long",
            "impressions",
        ),
        ({"variant": "A; DROP"}, "string_pattern_mismatch", "variant"),
        ({"query": ""}, "string_too_short", "query"),
        (
            {"impressions": [{"product_id": "1", "position": 1, "clicked": "yes"}]},
            "bool_type",
            "impressions.0.clicked",
        ),
    ],
)
def test_bad_query_logs_name_their_field(override: dict[str, object], reason: str, field: str) -> None:
    with pytest.raises(EventError) as info:
        decode_event(QueryLog, orjson.dumps(valid_query(**override)))
    assert (info.value.reason, info.value.field) == (reason, field)


def test_oversized_event_is_rejected_before_parsing() -> None:
    with pytest.raises(EventError) as info:
        decode_event(QueryLog, b"{" + b" " * (3 * 1024 * 1024) + b"}")
    assert info.value.reason == "too_large"


def test_exported_json_schemas_are_up_to_date() -> None:
    from schemas.export import OUT_DIR

    for name, content in rendered().items():
        path = OUT_DIR / name
        assert path.exists(), f"{name} missing: run `make schemas`"
        assert path.read_bytes() == content, f"{name} is stale: run `make schemas`"
