"""Outbound records: what the ranker, the embeddings state topic, analysts and operators read."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, StrictModel, Variant
from schemas.limits import DEAD_LETTER_KEY_BYTES, DEAD_LETTER_ORIGINAL_BYTES, LIMITS

Probability = Annotated[float, Field(ge=0.0, le=1.0)]

# Text bounds of a dead letter; with the byte heads in schemas.limits they bound its encoded size.
_TOPIC_CHARS = 249  # Kafka's own limit on topic names
_REASON_CHARS = 64
_ERROR_CLASS_CHARS = 128
_ERROR_MESSAGE_CHARS = 2000
_WORKER_CHARS = 64  # WorkerSettings.name


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
    # added within v1 (#19): the version of the product embedding the query was compared with;
    # a record whose two versions differ refuses to exist (the score would mean nothing)
    embedding_model_version: str | None = None
    scored_at: EventTime

    @model_validator(mode="after")
    def _one_version(self) -> RelevanceScore:
        if self.embedding_model_version not in (None, self.model_version):
            raise PydanticCustomError(
                "mixed_model_versions",
                "query model {query} scored against embeddings of {embedding}",
                {"query": self.model_version, "embedding": self.embedding_model_version},
            )
        return self

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
    """An input the worker could not process, with everything needed to inspect it and find it again.

    Built with `from_input`, its encoding stays under `MAX_DEAD_LETTER_BYTES` whatever the input, so
    a broker with Kafka's default message size accepts it: `original` keeps the first
    `DEAD_LETTER_ORIGINAL_BYTES` of the input value and `key` the first `DEAD_LETTER_KEY_BYTES` of its
    key; `original_size` and `original_sha256` describe the whole value and the `*_truncated` flags
    say when only a head was kept (replay such an input from its source). Those fields were added
    within version 1 as optional, so letters written before them (always whole) still decode.
    """

    schema_version: Literal[1] = 1
    source_topic: str = Field(max_length=_TOPIC_CHARS)
    partition: int
    offset: int
    key: bytes | None = None
    key_truncated: bool = False
    original: bytes
    original_size: int | None = Field(default=None, ge=0)
    original_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    original_truncated: bool = False
    reason: str = Field(max_length=_REASON_CHARS)
    error_class: str = Field(max_length=_ERROR_CLASS_CHARS)
    error_message: str = Field(max_length=_ERROR_MESSAGE_CHARS)
    event_id: str | None = Field(default=None, max_length=LIMITS.max_id_chars)
    failed_at: EventTime
    worker: str = Field(max_length=_WORKER_CHARS)

    @classmethod
    def from_input(
        cls,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error_class: str,
        error_message: str,
        event_id: str | None,
        worker: str,
        failed_at: datetime,
    ) -> DeadLetter:
        """The letter of one input, every part clipped to its bound (never a validation error)."""
        original = value or b""
        return cls(
            source_topic=source_topic[:_TOPIC_CHARS],
            partition=partition,
            offset=offset,
            key=None if key is None else key[:DEAD_LETTER_KEY_BYTES],
            key_truncated=key is not None and len(key) > DEAD_LETTER_KEY_BYTES,
            original=original[:DEAD_LETTER_ORIGINAL_BYTES],
            original_size=len(original),
            original_sha256=hashlib.sha256(original).hexdigest(),
            original_truncated=len(original) > DEAD_LETTER_ORIGINAL_BYTES,
            reason=reason[:_REASON_CHARS],
            error_class=error_class[:_ERROR_CLASS_CHARS],
            error_message=error_message[:_ERROR_MESSAGE_CHARS],
            event_id=None if event_id is None else event_id[: LIMITS.max_id_chars],
            failed_at=failed_at,
            worker=worker[:_WORKER_CHARS],
        )

    def records(self, value: bytes) -> bool:
        """Whether this letter holds `value`: whole, or its head with the whole value's size and digest."""
        if not self.original_truncated:
            return self.original == value
        return (
            value.startswith(self.original)
            and self.original_size == len(value)
            and self.original_sha256 == hashlib.sha256(value).hexdigest()
        )

    @field_validator("key", "original", mode="before")
    @classmethod
    def _from_base64(cls, value: object) -> object:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else value

    @field_serializer("key", "original")
    def _to_base64(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")
