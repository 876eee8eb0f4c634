"""Windowed A/B aggregation per variant, exact under replays (see `schemas.ABMetrics`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import ABMetrics, QueryLog
from schemas.outputs import Interval


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> Interval | None:
    """95 % Wilson score interval: well-behaved at 0 and 1 and for small counts, unlike the normal one."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Interval(low=max(0.0, centre - half), high=min(1.0, centre + half))


@dataclass
class WindowCounts:
    """Additive counters of one (variant, window, partition); `derive` turns them into ABMetrics."""

    last_offset: int = -1
    queries: int = 0
    queries_with_order: int = 0
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
    def from_record(cls, rec: ABMetrics) -> WindowCounts:
        return cls(**{name: getattr(rec, name) for name in cls.__dataclass_fields__})

    def add(self, event: QueryLog, scores: dict[str, float]) -> None:
        self.queries += 1
        self.queries_with_order += any(imp.ordered for imp in event.impressions)
        for imp in event.impressions:
            self.impressions += 1
            self.clicks += imp.clicked
            self.orders += imp.ordered
            score = scores.get(imp.product_id)
            if score is None:
                continue
            self.scored_impressions += 1
            self.relevance_sum_shown += score
            if imp.clicked:
                self.scored_clicks += 1
                self.relevance_sum_clicked += score
            if imp.position <= 3:
                self.scored_top3 += 1
                self.relevance_sum_top3 += score

    def merge(self, other: WindowCounts) -> None:
        for name in self.__dataclass_fields__:
            if name != "last_offset":
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def derive(
        self,
        variant: str,
        start: datetime,
        end: datetime,
        partition: int,
        model_version: str,
    ) -> ABMetrics:
        def ratio(num: float, den: int) -> float | None:
            return min(1.0, max(0.0, num / den)) if den else None

        return ABMetrics(
            variant=variant,
            window_start=start,
            window_end=end,
            source_partition=partition,
            last_offset=self.last_offset,
            queries=self.queries,
            queries_with_order=self.queries_with_order,
            impressions=self.impressions,
            clicks=self.clicks,
            orders=self.orders,
            scored_impressions=self.scored_impressions,
            scored_clicks=self.scored_clicks,
            scored_top3=self.scored_top3,
            relevance_sum_shown=self.relevance_sum_shown,
            relevance_sum_clicked=self.relevance_sum_clicked,
            relevance_sum_top3=self.relevance_sum_top3,
            mean_relevance_shown=ratio(self.relevance_sum_shown, self.scored_impressions),
            mean_relevance_clicked=ratio(self.relevance_sum_clicked, self.scored_clicks),
            mean_relevance_top3=ratio(self.relevance_sum_top3, self.scored_top3),
            ctr=ratio(self.clicks, self.impressions),
            ctr_ci=wilson_interval(self.clicks, self.impressions),
            conversion_rate=ratio(self.queries_with_order, self.queries),
            conversion_ci=wilson_interval(self.queries_with_order, self.queries),
            model_version=model_version,
            emitted_at=datetime.now(UTC),
        )


WindowKey = tuple[str, datetime, int]  # variant, window start, source partition


@dataclass
class ABAggregator:
    """In-memory partial aggregates of the partitions this worker owns."""

    window_s: int
    windows: dict[WindowKey, WindowCounts] = field(default_factory=dict)

    def window_start(self, t: datetime) -> datetime:
        epoch = int(t.timestamp()) // self.window_s * self.window_s
        return datetime.fromtimestamp(epoch, UTC)

    def add(self, event: QueryLog, partition: int, offset: int, scores: dict[str, float]) -> WindowKey | None:
        """Count an event once; returns its window key, or None if it was already counted (replay)."""
        key = (event.variant, self.window_start(event.event_time), partition)
        counts = self.windows.setdefault(key, WindowCounts())
        if offset <= counts.last_offset:
            return None
        counts.add(event, scores)
        counts.last_offset = offset
        return key

    def record(self, key: WindowKey, model_version: str) -> ABMetrics:
        variant, start, partition = key
        return self.windows[key].derive(
            variant, start, start + timedelta(seconds=self.window_s), partition, model_version
        )

    def restore(self, records: Iterable[ABMetrics]) -> None:
        for rec in records:
            key = (rec.variant, rec.window_start, rec.source_partition)
            current = self.windows.get(key)
            if current is None or rec.last_offset > current.last_offset:
                self.windows[key] = WindowCounts.from_record(rec)

    def drop_partitions(self, partitions: set[int]) -> None:
        self.windows = {k: v for k, v in self.windows.items() if k[2] not in partitions}


def merge(records: Iterable[ABMetrics], per_window: bool = True) -> list[ABMetrics]:
    """Latest partial per key, summed per (variant, window) or per variant over all windows."""
    latest: dict[bytes, ABMetrics] = {}
    for rec in records:
        key = rec.key()
        if key not in latest or rec.last_offset >= latest[key].last_offset:
            latest[key] = rec
    merged: dict[tuple[str, datetime], tuple[WindowCounts, ABMetrics]] = {}
    for rec in sorted(latest.values(), key=lambda r: r.window_start):
        slot = (rec.variant, rec.window_start if per_window else datetime.min.replace(tzinfo=UTC))
        if slot not in merged:
            counts = WindowCounts.from_record(rec)
            counts.last_offset = -1
            merged[slot] = (counts, rec)
        else:
            merged[slot][0].merge(WindowCounts.from_record(rec))
    return [
        counts.derive(
            variant,
            first.window_start,
            first.window_end if per_window else datetime.now(UTC),
            -1,
            first.model_version,
        )
        for (variant, _), (counts, first) in sorted(merged.items())
    ]
