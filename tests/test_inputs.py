"""Unknown input fields are accepted and counted under a capped label set (worker.inputs)."""

from __future__ import annotations

import orjson
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import REGISTRY

from schemas import EventError, QueryLog
from worker import inputs
from worker.inputs import MAX_FIELD_LABELS, OTHER, decode_input

LOG = {
    "event_id": "q-1",
    "event_time": "2026-12-03T09:00:00Z",
    "query_id": "qid-1",
    "query": "red dress",
    "variant": "A",
    "impressions": [{"product_id": "10001", "position": 1}],
}


def record(doc: dict[str, object], topic: str = "t.query-logs") -> ConsumerRecord:
    value = orjson.dumps(doc)
    return ConsumerRecord(topic, 0, -1, 7, 0, 0, None, value, [], None, -1, len(value), -1)


def counted(topic: str, field: str) -> float:
    value = REGISTRY.get_sample_value(
        "querylife_unknown_input_fields_total", {"topic": topic, "field": field}
    )
    return value or 0.0


@pytest.fixture(autouse=True)
def fresh_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "_labelled", set())


def test_unknown_fields_are_counted_and_the_event_kept() -> None:
    before = counted("t.unknown-a", "ab_bucket"), counted("t.unknown-a", "impressions.0.dwell_ms")
    doc = LOG | {"ab_bucket": 3, "impressions": [{"product_id": "1", "position": 1, "dwell_ms": 5}]}
    event = decode_input(QueryLog, record(doc, "t.unknown-a"))
    assert event.impressions[0].product_id == "1"
    after = counted("t.unknown-a", "ab_bucket"), counted("t.unknown-a", "impressions.0.dwell_ms")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


def test_label_set_is_capped_against_hostile_producers() -> None:
    topic = "t.unknown-b"
    for i in range(MAX_FIELD_LABELS + 50):
        decode_input(QueryLog, record(LOG | {f"f{i}": i}, topic))
    labelled = [f"f{i}" for i in range(MAX_FIELD_LABELS + 50) if counted(topic, f"f{i}")]
    assert len(labelled) == MAX_FIELD_LABELS
    assert counted(topic, OTHER) == 50.0
    decode_input(QueryLog, record(LOG | {"x" * 500: 1}, topic))
    assert counted(topic, OTHER) == 51.0


def test_invalid_events_still_raise() -> None:
    with pytest.raises(EventError) as info:
        decode_input(QueryLog, record(LOG | {"query": 5}))
    assert info.value.reason == "string_type"
