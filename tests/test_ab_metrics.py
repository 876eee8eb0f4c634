"""A/B aggregation: exact counts under replay, Wilson intervals, merge of per-partition partials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import Impression, QueryLog
from worker.ab_metrics import ABAggregator, merge, wilson_interval

T0 = datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC)


def log(n: int, variant: str, clicked: bool, ordered: bool = False, minutes: int = 0) -> QueryLog:
    return QueryLog(
        event_id=f"e{n}",
        event_time=T0 + timedelta(minutes=minutes),
        query_id=f"q{n}",
        query="shoes",
        variant=variant,
        impressions=[
            Impression(product_id="a", position=1, clicked=clicked, ordered=ordered),
            Impression(product_id="b", position=5),
        ],
    )


def test_wilson_interval_known_values() -> None:
    ci = wilson_interval(12, 100)
    assert ci is not None
    assert ci.low == pytest.approx(0.0700, abs=1e-4)
    assert ci.high == pytest.approx(0.1981, abs=1e-4)
    edge = wilson_interval(0, 10)
    assert edge is not None and edge.low == 0.0 and edge.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_replayed_offsets_are_counted_once() -> None:
    agg = ABAggregator(window_s=300)
    scores = {"a": 0.9, "b": 0.3}
    assert agg.add(log(1, "A", clicked=True), partition=0, offset=10, scores=scores) is not None
    assert (
        agg.add(log(2, "A", clicked=False, ordered=False), partition=0, offset=11, scores=scores) is not None
    )
    assert agg.add(log(1, "A", clicked=True), partition=0, offset=10, scores=scores) is None  # replay
    key = ("A", datetime(2026, 11, 24, 12, 0, tzinfo=UTC), 0)
    rec = agg.record(key, "v1")
    assert (rec.queries, rec.impressions, rec.clicks, rec.last_offset) == (2, 4, 1, 11)
    assert rec.mean_relevance_shown == pytest.approx(0.6)
    assert rec.mean_relevance_clicked == pytest.approx(0.9)
    assert rec.ctr == pytest.approx(0.25)

    restored = ABAggregator(window_s=300)
    restored.restore([rec])
    assert restored.add(log(2, "A", clicked=False), partition=0, offset=11, scores=scores) is None
    assert (
        restored.add(log(3, "A", clicked=True, ordered=True), partition=0, offset=12, scores=scores)
        is not None
    )
    again = restored.record(key, "v1")
    assert (again.queries, again.clicks, again.orders, again.queries_with_order) == (3, 2, 1, 1)


def test_merge_sums_partitions_and_windows() -> None:
    agg = ABAggregator(window_s=300)
    scores = {"a": 1.0, "b": 0.0}
    keys = {
        agg.add(log(1, "B", True, True), 0, 1, scores),
        agg.add(log(2, "B", False), 1, 1, scores),
        agg.add(log(3, "B", True, minutes=10), 0, 2, scores),
        agg.add(log(4, "A", False), 2, 1, scores),
    }
    records = [agg.record(k, "v1") for k in keys if k is not None]
    per_window = merge(records)
    assert [(r.variant, r.queries) for r in per_window] == [("A", 1), ("B", 2), ("B", 1)]
    overall = {r.variant: r for r in merge(records, per_window=False)}
    assert overall["B"].queries == 3 and overall["B"].clicks == 2 and overall["B"].impressions == 6
    assert overall["B"].conversion_rate == pytest.approx(1 / 3)
    assert overall["B"].mean_relevance_shown == pytest.approx(0.5)
    assert overall["A"].ctr == 0.0
