"""A/B contracts, version 2: declared experiments and per-unit totals exact under replay.

Intervals by randomisation unit need per-unit totals: squares of totals do not add across windows or
partitions ((a+b)^2 != a^2+b^2), so a window's sums of squares cannot be merged. Version 2 therefore
keeps the totals of each unit (user, session or query) per window; the report sums a unit's windows
over any time range first and only then forms squares and cross-products (delta method).
Query logs are keyed by their unit (`QueryLog.unit_key`), so one unit's searches meet in one
partition and its totals are kept by one worker, with `last_offset` making them exact under replay.
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, ModelVersion, StrictModel, Variant

Unit = Literal["user", "session", "query"]


class Experiment(StrictModel):
    """An experiment as analysts declare it (not a topic: a file the worker and the report read).

    `split` is the expected share of units per variant (sums to 1), checked by the SRM test;
    `control` is the variant lifts are measured against.
    """

    experiment_id: Identifier
    unit: Unit
    split: dict[Variant, float] = Field(min_length=2, max_length=16)
    control: Variant
    start: EventTime
    end: EventTime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if abs(sum(self.split.values()) - 1.0) > 1e-6 or min(self.split.values()) <= 0:
            raise PydanticCustomError("split_sum", "split shares must be positive and sum to 1")
        if self.control not in self.split:
            raise PydanticCustomError("unknown_control", "control must be one of the split's variants")
        return self


class ABMetricsV2(StrictModel):
    """Totals of one randomisation unit in one window (topic `ab-units`, compacted, 90-day retention).

    Key: JSON array `[experiment_id, unit_id, variant, model_version, window_start, partition]`.
    One record per unit, variant and model version: a unit seen in two variants is a broken
    assignment the report flags; a window spanning a model switch keeps each version apart.
    `experiment_id` is null for searches outside any declared experiment (unit: the user).
    """

    schema_version: Literal[2] = 2
    experiment_id: Identifier | None
    unit: Unit
    unit_id: Identifier
    variant: Variant
    model_version: ModelVersion
    window_start: EventTime
    window_end: EventTime
    source_partition: int = Field(ge=0)
    last_offset: int = Field(ge=0)
    searches: int = Field(ge=0)
    searches_with_order: int = Field(ge=0)
    impressions: int = Field(ge=0)
    clicks: int = Field(ge=0)
    orders: int = Field(ge=0)
    scored_impressions: int = Field(ge=0)
    scored_clicks: int = Field(ge=0)
    scored_top3: int = Field(ge=0)
    relevance_sum_shown: float = Field(ge=0)
    relevance_sum_clicked: float = Field(ge=0)
    relevance_sum_top3: float = Field(ge=0)
    emitted_at: EventTime

    def key(self) -> bytes:
        return orjson.dumps(
            [
                self.experiment_id or "",
                self.unit_id,
                self.variant,
                self.model_version,
                self.window_start.isoformat(),
                self.source_partition,
            ]
        )
