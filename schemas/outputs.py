"""Outbound records: what the ranker, the embeddings state topic, analysts and operators read."""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator

from schemas.base import EventTime, Identifier, StrictModel, Variant

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ScoreLabel(StrEnum):
    """Relevance bucket of a calibrated score; thresholds ship with the model's calibration."""

    IRRELEVANT = "irrelevant"
    PARTIAL = "partial"
    RELEVANT = "relevant"
    EXACT = "exact"


class ProductEmbedding(StrictModel):
    """State of one product in the compacted embeddings topic (key: product_id; null value = deleted)."""

    schema_version: Literal[1] = 1
    product_id: Identifier
    product_type: str
    embedding: list[float] = Field(min_length=1, max_length=4096)
    has_title: bool
    has_image: bool
    model_version: str
    source_event_id: Identifier
    updated_at: EventTime


class RelevanceScore(StrictModel):
    """Score of one shown product for one query (key: `query_id:product_id`, so replays overwrite).

    `status=unknown_product` reports an impression whose product has no embedding yet: the ranker
    sees it instead of it being silently dropped, and a later replay overwrites it with a score.
    """

    schema_version: Literal[1] = 1
    query_id: Identifier
    event_id: Identifier
    product_id: Identifier
    variant: Variant
    position: int
    status: Literal["scored", "unknown_product"] = "scored"
    score: Probability | None = None
    similarity: float | None = None
    label: Annotated[ScoreLabel, Field(strict=False)] | None = None  # JSON carries the enum as a string
    model_version: str
    scored_at: EventTime

    def key(self) -> bytes:
        return f"{self.query_id}:{self.product_id}".encode()


class Interval(StrictModel):
    low: Probability
    high: Probability


class ABMetrics(StrictModel):
    """Relevance and conversion of one A/B variant in one time window.

    Each query worker emits the partial aggregate of one query-log partition (`source_partition`),
    keyed `variant:window_start:partition` in a compacted topic, with `last_offset`, the highest
    input offset it includes: after a crash the worker restores it and skips what it already
    counted, so counts are exact under at-least-once delivery. `worker.ab_metrics.merge` sums the
    partials into the per-variant view (`source_partition = -1`) that analysts read.
    CTR is clicks per impression; conversion is the share of queries with at least one order;
    intervals are 95 % Wilson score intervals.
    """

    schema_version: Literal[1] = 1
    variant: Variant
    window_start: EventTime
    window_end: EventTime
    source_partition: int = Field(ge=-1)
    last_offset: int = Field(ge=-1)
    queries: int = Field(ge=0)
    queries_with_order: int = Field(ge=0)
    impressions: int = Field(ge=0)
    clicks: int = Field(ge=0)
    orders: int = Field(ge=0)
    scored_impressions: int = Field(ge=0)
    scored_clicks: int = Field(ge=0)
    scored_top3: int = Field(ge=0)
    relevance_sum_shown: float = Field(ge=0)
    relevance_sum_clicked: float = Field(ge=0)
    relevance_sum_top3: float = Field(ge=0)
    mean_relevance_shown: Probability | None
    mean_relevance_clicked: Probability | None
    mean_relevance_top3: Probability | None
    ctr: Probability | None
    ctr_ci: Interval | None
    conversion_rate: Probability | None
    conversion_ci: Interval | None
    model_version: str
    emitted_at: EventTime

    def key(self) -> bytes:
        return f"{self.variant}:{self.window_start.isoformat()}:{self.source_partition}".encode()


class DeadLetter(StrictModel):
    """An input the worker could not process, with everything needed to inspect or replay it."""

    schema_version: Literal[1] = 1
    source_topic: str
    partition: int
    offset: int
    key: bytes | None = None
    original: bytes
    reason: str = Field(max_length=64)
    error_class: str
    error_message: str = Field(max_length=2000)
    event_id: str | None = None
    failed_at: EventTime
    worker: str

    @field_validator("key", "original", mode="before")
    @classmethod
    def _from_base64(cls, value: object) -> object:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else value

    @field_serializer("key", "original")
    def _to_base64(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")
