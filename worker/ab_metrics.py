"""Per-unit A/B totals (`ABMetricsV2`, topic `ab-units`), exact under replay, with event-time bounds.

Why per unit: intervals by randomisation unit need each unit's totals, and squares of totals do not
add across windows (docs/contracts.md), so the worker keeps additive totals per (experiment, unit,
variant, model version, window, source partition) and the report sums a unit's windows first.

Exact under replay: query logs are keyed by unit, so one unit's searches are counted by the one
worker owning its partition; each key's record carries the highest input offset it includes
(`last_offset`) and is rewritten with the full totals as they grow. A worker taking a partition over
restores the records of its windows still open and skips offsets already counted.

Bounded memory and topic: an event whose `event_time` is further than the grace from its Kafka
record's timestamp is refused (`event_time_out_of_bounds`): the record timestamp, not the wall
clock, is the reference, so re-consuming an old part of a topic is not "late". A window leaves
memory once the partition's accepted record timestamps (its watermark) passed the window's end by
the grace; an event for such a window is `late_event` and never reopens it, since a reopened
window's small total would overwrite the full one by key.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

import orjson
from kafka.consumer.fetcher import ConsumerRecord

from schemas import ABMetricsV2, EventError, Experiment, QueryLog, encode
from schemas.experiments import Unit
from worker.outputs import Output

UnitKey = tuple[str, str, str, str, datetime, int]
"""experiment id or "", unit id, variant, model version, window start, source partition (the record key)."""


@dataclass
class UnitCounts:
    """Additive totals of one unit in one window, and the highest input offset they include."""

    unit: Unit
    last_offset: int = -1
    searches: int = 0
    searches_with_order: int = 0
    impressions: int = 0
    clicks: int = 0
    orders: int = 0
    scored_impressions: int = 0
    scored_clicks: int = 0
    scored_top3: int = 0
    relevance_sum_shown: float = 0.0
    relevance_sum_clicked: float = 0.0
    relevance_sum_top3: float = 0.0

    @classmethod
    def from_record(cls, rec: ABMetricsV2) -> UnitCounts:
        return cls(**{f.name: getattr(rec, f.name) for f in fields(cls)})

    def add(self, event: QueryLog, scores: dict[str, float]) -> None:
        self.searches += 1
        self.searches_with_order += any(imp.ordered for imp in event.impressions)
        for imp in event.impressions:
            self.impressions += 1
            self.clicks += imp.clicked
            self.orders += imp.ordered
            score = scores.get(imp.product_id)
            if score is None:
                continue
            score = min(1.0, max(0.0, score))
            self.scored_impressions += 1
            self.relevance_sum_shown += score
            if imp.clicked:
                self.scored_clicks += 1
                self.relevance_sum_clicked += score
            if imp.position <= 3:
                self.scored_top3 += 1
                self.relevance_sum_top3 += score


def unit_of(event: QueryLog, experiments: dict[str, Experiment]) -> tuple[Unit, str]:
    """The randomisation unit a search counts for: its experiment's declared unit, else the user.

    Outside any experiment the unit falls back like the Kafka key does (user, session, search).
    Raises `unknown_experiment` for an undeclared experiment (its unit is unknown) and
    `missing_unit_id` when the search lacks the id its experiment randomises by.
    """
    ids: dict[Unit, str | None] = {
        "user": event.user_id,
        "session": event.session_id,
        "query": event.query_id,
    }
    if event.experiment_id is None:
        unit: Unit = next(u for u in ("user", "session", "query") if ids[u])
        return unit, ids[unit] or event.query_id
    exp = experiments.get(event.experiment_id)
    if exp is None:
        raise EventError(
            "unknown_experiment",
            f"experiment {event.experiment_id!r} is not declared (QL_WORKER_EXPERIMENTS_FILE): "
            "its unit is unknown, the search is scored but not counted",
            "experiment_id",
        )
    unit_id = ids[exp.unit]
    if unit_id is None:
        raise EventError(
            "missing_unit_id",
            f"experiment {exp.experiment_id!r} randomises by {exp.unit}, the search has no {exp.unit}_id: "
            "scored but not counted",
            f"{exp.unit}_id",
        )
    return exp.unit, unit_id


class UnitAggregator:
    """In-memory totals of the open windows of the partitions this worker owns."""

    def __init__(self, window_s: int, grace_s: float, experiments: dict[str, Experiment]) -> None:
        self.window_s = window_s
        self.grace_s = grace_s
        self.experiments = experiments
        self.windows: dict[UnitKey, UnitCounts] = {}
        self.watermarks: dict[int, float] = {}  # partition -> latest accepted record timestamp (s)

    def window_start(self, t: datetime) -> datetime:
        epoch = int(t.timestamp()) // self.window_s * self.window_s
        return datetime.fromtimestamp(epoch, UTC)

    def _closed(self, start: datetime, partition: int) -> bool:
        """Whether the window's grace has passed on this partition (evicted, or about to be)."""
        end = start.timestamp() + self.window_s
        return end + self.grace_s <= self.watermarks.get(partition, float("-inf"))

    @staticmethod
    def _stamp(record: ConsumerRecord, now: float) -> float:
        """The record's Kafka timestamp in seconds; this machine's clock if the broker gave none."""
        return record.timestamp / 1000 if record.timestamp is not None and record.timestamp >= 0 else now

    def check_event_time(self, event: QueryLog, record: ConsumerRecord) -> None:
        """Refuse an event time too far from its record's timestamp.

        A record timestamp more than the grace ahead of this machine's clock is refused too: a
        producer's clock in the future would otherwise close every open window at once.
        """
        now = time.time()
        stamp = self._stamp(record, now)
        skew = event.event_time.timestamp() - stamp
        if abs(skew) > self.grace_s or stamp > now + self.grace_s:
            ahead = stamp - now
            raise EventError(
                "event_time_out_of_bounds",
                f"event_time is {skew:+.0f} s from its Kafka record timestamp (record {ahead:+.0f} s "
                f"from now); the grace is {self.grace_s:g} s (QL_WORKER_EVENT_TIME_GRACE_S)",
                "event_time",
            )

    def add(
        self, event: QueryLog, record: ConsumerRecord, scores: dict[str, float], model_version: str
    ) -> UnitKey | None:
        """Count an event once; its key, or None if it was counted already (a replay).

        Raises `EventError` (`late_event`, `unknown_experiment`, `missing_unit_id`) when it is not
        counted; `check_event_time` must have accepted it. Events of a partition come in offset
        order, so its watermark (advanced here, before the late check) depends on its records only.
        """
        stamp, partition = self._stamp(record, time.time()), record.partition
        self.watermarks[partition] = max(self.watermarks.get(partition, stamp), stamp)
        unit, unit_id = unit_of(event, self.experiments)
        start = self.window_start(event.event_time)
        key = (event.experiment_id or "", unit_id, event.variant, model_version, start, record.partition)
        counts = self.windows.get(key)
        if counts is not None and record.offset <= counts.last_offset:
            return None
        if self._closed(start, record.partition):
            raise EventError(
                "late_event",
                f"the A/B window {start.isoformat()} closed: its grace ({self.grace_s:g} s) has passed on "
                "this partition; the search is scored but not counted",
                "event_time",
            )
        if counts is None:
            counts = self.windows[key] = UnitCounts(unit)
        counts.add(event, scores)
        counts.last_offset = record.offset
        return key

    def count(
        self,
        events: Sequence[tuple[ConsumerRecord, QueryLog, dict[str, float]]],
        model_version: str,
        topic: str,
    ) -> tuple[list[Output], dict[int, EventError]]:
        """Count a batch (record, event, scores by product): the records of the keys it changed, and
        why events were not counted, by index. Closed windows then leave memory; their last records
        are among the outputs.
        """
        touched: set[UnitKey] = set()
        refused: dict[int, EventError] = {}
        for i, (rec, ev, by_product) in enumerate(events):
            try:
                key = self.add(ev, rec, by_product, model_version)
            except EventError as exc:
                refused[i] = exc
                continue
            if key is not None:
                touched.add(key)
        outputs = []
        for key in sorted(touched):
            rec = self.record(key)
            outputs.append(Output(topic, rec.key(), encode(rec)))
        self.evict()
        return outputs, refused

    def record(self, key: UnitKey) -> ABMetricsV2:
        experiment_id, unit_id, variant, model_version, start, partition = key
        counts = self.windows[key]
        totals = {f.name: getattr(counts, f.name) for f in fields(counts)}
        return ABMetricsV2(
            experiment_id=experiment_id or None,
            unit_id=unit_id,
            variant=variant,
            model_version=model_version,
            window_start=start,
            window_end=start + timedelta(seconds=self.window_s),
            source_partition=partition,
            emitted_at=datetime.now(UTC),
            **totals,
        )

    def evict(self) -> int:
        """Drop the windows whose grace has passed; how many."""
        closed = [k for k in self.windows if self._closed(k[4], k[5])]
        for key in closed:
            del self.windows[key]
        return len(closed)

    def wants(self, key: bytes | None, partitions: set[int], horizon: dict[int, datetime]) -> bool:
        """From its key alone, whether a record read at take-over may belong to an open window.

        `horizon` holds, per partition, the latest window start seen so far (raised here): a window
        whose grace passed relative to it is closed whatever comes later, so it is skipped undecoded.
        """
        try:
            *_, start_text, partition = orjson.loads(key or b"")
            start = datetime.fromisoformat(start_text)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return False
        if partition not in partitions or start.tzinfo is None:
            return False
        latest = horizon[partition] = max(horizon.get(partition, start), start)
        return start.timestamp() + self.window_s + self.grace_s > latest.timestamp()

    def restore(self, records: Iterable[ABMetricsV2], partitions: set[int]) -> int:
        """Take over partitions from their records: the latest window start sets the watermark, and
        the windows still open under it are restored (the others are closed: late from now on).

        Returns how many windows were restored.
        """
        latest = latest_records(r for r in records if r.source_partition in partitions)
        for rec in latest:
            partition, start = rec.source_partition, rec.window_start.timestamp()
            self.watermarks[partition] = max(self.watermarks.get(partition, start), start)
        restored = 0
        for rec in latest:
            if self._closed(rec.window_start, rec.source_partition):
                continue
            key = (
                rec.experiment_id or "",
                rec.unit_id,
                rec.variant,
                rec.model_version,
                rec.window_start,
                rec.source_partition,
            )
            current = self.windows.get(key)
            if current is None or rec.last_offset > current.last_offset:
                self.windows[key] = UnitCounts.from_record(rec)
                restored += 1
        return restored

    def drop_partitions(self, partitions: set[int]) -> None:
        self.windows = {k: v for k, v in self.windows.items() if k[5] not in partitions}
        for partition in partitions:
            self.watermarks.pop(partition, None)


def latest_records(records: Iterable[ABMetricsV2]) -> list[ABMetricsV2]:
    """The latest record per key (highest `last_offset`): a topic read before compaction holds older
    totals of the same unit and window, which must not be counted again."""
    latest: dict[bytes, ABMetricsV2] = {}
    for rec in records:
        key = rec.key()
        seen = latest.get(key)
        if seen is None or (rec.last_offset, rec.emitted_at) > (seen.last_offset, seen.emitted_at):
            latest[key] = rec
    return list(latest.values())
