"""Per-unit A/B totals: exact under replay and take-over, event-time bounds, window eviction, units."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from schemas import ABMetricsV2, EventError, Experiment, Impression, QueryLog, decode_event
from worker.ab_metrics import UnitAggregator, latest_records, unit_of
from worker.experiments import ExperimentsError, parse_experiments

T0 = datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC)
EXP = Experiment(
    experiment_id="exp-1", unit="user", split={"A": 0.5, "B": 0.5}, control="A", start=T0 - timedelta(days=1)
)
SCORES = {"a": 0.9, "b": 0.3}


def log(
    n: int,
    user: str | None = "u1",
    clicked: bool = False,
    ordered: bool = False,
    minutes: float = 0,
    variant: str = "A",
    experiment: str | None = "exp-1",
) -> QueryLog:
    return QueryLog(
        event_id=f"e{n}",
        event_time=T0 + timedelta(minutes=minutes),
        query_id=f"q{n}",
        query="shoes",
        user_id=user,
        session_id=f"s{n}",
        experiment_id=experiment,
        variant=variant,
        impressions=[
            Impression(product_id="a", position=1, clicked=clicked, ordered=ordered),
            Impression(product_id="b", position=5),
        ],
    )


def record(offset: int, ev: QueryLog, partition: int = 0, skew_s: float = 0.0) -> ConsumerRecord:
    """The Kafka record an event arrived in; its timestamp is the event time plus `skew_s`."""
    stamp = int((ev.event_time.timestamp() + skew_s) * 1000)
    return ConsumerRecord("q", partition, -1, offset, stamp, 0, b"k", b"v", [], None, 1, 1, -1)


def feed(agg: UnitAggregator, offset: int, ev: QueryLog, partition: int = 0, skew_s: float = 0.0) -> object:
    rec = record(offset, ev, partition, skew_s)
    agg.check_event_time(ev, rec)
    return agg.add(ev, rec, SCORES, "v1")


def aggregator(grace_s: float = 600.0) -> UnitAggregator:
    # T0 is in the past: the record-timestamp check against this machine's clock only refuses the future
    return UnitAggregator(window_s=300, grace_s=grace_s, experiments={"exp-1": EXP})


def test_unit_totals_are_exact_under_replay_and_take_over() -> None:
    agg = aggregator()
    assert feed(agg, 10, log(1, clicked=True)) is not None
    assert feed(agg, 11, log(2, ordered=True)) is not None
    assert feed(agg, 10, log(1, clicked=True)) is None  # replay of a counted offset
    key = ("exp-1", "u1", "A", "v1", datetime(2026, 11, 24, 12, 0, tzinfo=UTC), 0)
    rec = agg.record(key)
    assert rec.key() == b'["exp-1","u1","A","v1","2026-11-24T12:00:00+00:00",0]'
    assert (rec.unit, rec.searches, rec.impressions, rec.clicks, rec.last_offset) == ("user", 2, 4, 1, 11)
    assert (rec.orders, rec.searches_with_order, rec.scored_impressions, rec.scored_top3) == (1, 1, 4, 2)
    assert rec.relevance_sum_shown == pytest.approx(2.4)
    assert rec.relevance_sum_clicked == pytest.approx(0.9)

    taker = aggregator()
    assert taker.restore([rec], {0}) == 1
    assert feed(taker, 11, log(2, ordered=True)) is None  # counted before the take-over
    assert feed(taker, 12, log(3, clicked=True)) is not None
    again = taker.record(key)
    assert (again.searches, again.clicks, again.last_offset) == (3, 2, 12)
    assert taker.restore([rec], {1}) == 0  # another partition's records are not ours


def test_units_follow_the_declared_experiment() -> None:
    assert unit_of(log(1), {"exp-1": EXP}) == ("user", "u1")
    by_session = EXP.model_copy(update={"unit": "session"})
    assert unit_of(log(1), {"exp-1": by_session}) == ("session", "s1")
    # outside any experiment: the user, else the session, else the search (as the Kafka key)
    assert unit_of(log(1, user=None, experiment=None), {}) == ("session", "s1")
    with pytest.raises(EventError) as unknown:
        unit_of(log(1, experiment="exp-unknown"), {"exp-1": EXP})
    assert unknown.value.reason == "unknown_experiment" and unknown.value.field == "experiment_id"
    with pytest.raises(EventError) as missing:
        unit_of(log(1, user=None), {"exp-1": EXP})
    assert missing.value.reason == "missing_unit_id" and missing.value.field == "user_id"


def test_event_time_bounds_are_relative_to_the_record_timestamp() -> None:
    agg = aggregator(grace_s=600)
    old = log(1, minutes=-60 * 24 * 30)  # a month ago, re-consumed today: in bounds, not late
    agg.check_event_time(old, record(1, old))
    for skew in (601.0, -601.0):
        with pytest.raises(EventError) as exc:
            agg.check_event_time(log(2), record(2, log(2), skew_s=skew))
        assert exc.value.reason == "event_time_out_of_bounds" and exc.value.field == "event_time"
    future = log(3, minutes=60 * 24 * 365)  # a producer clock a year ahead, record stamped alike
    with pytest.raises(EventError) as ahead:
        agg.check_event_time(future, record(3, future))
    assert ahead.value.reason == "event_time_out_of_bounds"
    assert agg.watermarks == {}  # the watermark moves when events are counted, in offset order


def test_windows_are_evicted_after_their_grace_and_never_reopened() -> None:
    agg = aggregator(grace_s=600)
    assert feed(agg, 1, log(1)) is not None  # window 12:00-12:05
    feed(agg, 2, log(2, user="u2", minutes=14))  # watermark 12:14:05: 12:05 + 10 min not yet passed
    assert agg.evict() == 0 and len(agg.windows) == 2
    feed(agg, 3, log(3, user="u3", minutes=15))  # 12:15:05 >= 12:15: the first window's grace passed
    assert agg.evict() == 1
    assert {k[1] for k in agg.windows} == {"u2", "u3"}
    late = log(4, minutes=4)  # for the evicted window, in a record stamped within the grace of it
    with pytest.raises(EventError) as exc:
        feed(agg, 4, late, skew_s=590)
    assert exc.value.reason == "late_event"
    assert all(k[1] != "u1" for k in agg.windows), "a late event must not reopen its window"


def test_count_returns_records_and_reasons_then_evicts() -> None:
    agg = aggregator(grace_s=600)
    # in offset order: the third event closes the first one's window only after it was counted
    events = [log(1), log(2, experiment="nope"), log(3, user="u3", minutes=20)]
    batch = []
    for i, ev in enumerate(events):
        rec = record(i, ev)
        agg.check_event_time(ev, rec)
        batch.append((rec, ev, SCORES))
    outputs, refused = agg.count(batch, "v1", "ab-units")
    assert {i: e.reason for i, e in refused.items()} == {1: "unknown_experiment"}
    written = [decode_event(ABMetricsV2, out.value or b"") for out in outputs]
    assert sorted(r.unit_id for r in written) == ["u1", "u3"]
    assert {out.topic for out in outputs} == {"ab-units"}
    assert [k[1] for k in agg.windows] == ["u3"]  # u1's window closed: written above, then evicted


def test_restore_keeps_only_open_windows_and_sets_the_watermark() -> None:
    agg = aggregator(grace_s=600)
    feed(agg, 1, log(1))
    feed(agg, 2, log(2, user="u2", minutes=10))
    records = [agg.record(k) for k in agg.windows]
    stale = records[0].model_copy(update={"last_offset": 0, "searches": 0})
    taker = aggregator(grace_s=600)
    # the latest window starts 12:10; 12:00's window ends 12:05, + 10 min grace > 12:10: still open
    assert taker.restore([*records, stale], {0}) == 2
    assert taker.record(("exp-1", "u1", "A", "v1", records[0].window_start, 0)).searches == 1
    short = UnitAggregator(window_s=300, grace_s=120, experiments={"exp-1": EXP})
    assert short.restore(records, {0}) == 1  # with 2 min of grace, 12:00's window is closed
    with pytest.raises(EventError, match="closed"):
        feed(short, 3, log(3, minutes=1), skew_s=60)


def test_wants_filters_by_key_before_decoding() -> None:
    agg = aggregator(grace_s=600)
    horizon: dict[int, datetime] = {}
    key = b'["exp-1","u1","A","v1","2026-11-24T12:30:00+00:00",0]'
    assert agg.wants(key, {0}, horizon)
    assert not agg.wants(key.replace(b",0]", b",1]"), {0}, horizon)
    assert not agg.wants(b'["exp-1","u1","A","v1","2026-11-24T12:00:00+00:00",0]', {0}, horizon)
    assert not agg.wants(b"not json", {0}, horizon) and not agg.wants(None, {0}, horizon)


def test_latest_records_keep_the_highest_offset_per_key() -> None:
    agg = aggregator()
    feed(agg, 1, log(1))
    first = agg.record(next(iter(agg.windows)))
    feed(agg, 2, log(2))
    second = agg.record(next(iter(agg.windows)))
    assert latest_records([second, first]) == [second]


def test_experiments_file_is_validated() -> None:
    text = (
        '[{"experiment_id": "exp-1", "unit": "user", "split": {"A": 0.5, "B": 0.5}, "control": "A", '
        '"start": "2026-11-01T00:00:00Z"}]'
    )
    assert parse_experiments(text)["exp-1"].unit == "user"
    with pytest.raises(ExperimentsError, match="declared twice"):
        parse_experiments(f"[{text[1:-1]}, {text[1:-1]}]")
    with pytest.raises(ExperimentsError, match="split"):
        parse_experiments(text.replace('"B": 0.5', '"B": 0.6'))
    with pytest.raises(ExperimentsError, match="unit"):
        parse_experiments(text.replace('"user"', '"device"'))


def test_an_open_window_costs_well_under_a_kilobyte() -> None:
    """The memory a worker holds per open (unit, window): docs/deploying.md sizes the grace with it."""
    import tracemalloc

    agg = aggregator(grace_s=3600)
    events = [log(i, user=f"user-{i:08d}") for i in range(5000)]
    records = [record(i, ev) for i, ev in enumerate(events)]
    tracemalloc.start()
    for ev, rec in zip(events, records, strict=True):
        agg.add(ev, rec, SCORES, "querylife-v1-5e4a6295a6")
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_window = used / len(agg.windows)
    print(f"{len(agg.windows)} open windows, {per_window:.0f} bytes each (ids excluded)")
    assert len(agg.windows) == 5000 and per_window < 1024
