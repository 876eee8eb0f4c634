"""Model rollout contracts: shadow scores of a candidate model beside the serving one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, ModelVersion, StrictModel
from schemas.limits import LIMITS
from schemas.outputs import Probability
from schemas.ranker import Label


class ShadowPair(StrictModel):
    """One shown product scored by both versions (None where that version has no embedding)."""

    product_id: Identifier
    product_type: str | None = Field(default=None, max_length=64)
    position: int = Field(ge=1, le=1000)
    serving_score: Probability | None
    candidate_score: Probability | None
    serving_label: Label | None
    candidate_label: Label | None


class ShadowScores(StrictModel):
    """A sampled query log scored by the candidate version too (topic `shadow-scores`, key `query_id`).

    Each side compares its own query encoding with its own embeddings; the rollout report derives
    rank correlation per query, label agreement and score shift per product type from these.
    """

    schema_version: Literal[1] = 1
    query_id: Identifier
    event_id: Identifier
    serving_version: ModelVersion
    candidate_version: ModelVersion
    pairs: list[ShadowPair] = Field(min_length=1, max_length=LIMITS.max_impressions)
    compared_at: EventTime

    @model_validator(mode="after")
    def _two_versions(self) -> ShadowScores:
        if self.serving_version == self.candidate_version:
            raise PydanticCustomError("same_version", "shadow scoring compares two different versions")
        return self

    def key(self) -> bytes:
        return self.query_id.encode()
