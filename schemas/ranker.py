"""What the search ranker reads: scores per search, a relevance table, answers to score requests.

Three ways in (docs/contracts.md): `QueryScores` on `query-scores` (one record per query log, after
the products were shown), `RelevanceEntry` on `relevance-table` (latest score per model version,
normalised query and product: what a ranker materialises for lookups, head queries' top-K
included) and `ScoreRequest` -> `ScoreReply` (candidates scored at request time). Every score names
the model version that made it; a query is only ever scored against embeddings of its own version.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

import orjson
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, InputModel, ModelVersion, StrictModel, Variant
from schemas.embeddings import FusionWeights
from schemas.events import QueryText
from schemas.limits import LIMITS
from schemas.outputs import Probability, ScoreLabel

_SPACES = re.compile(r"\s+")


def normalise_query(text: str) -> str:
    """The one normalisation of query text for table keys and caches.

    Unicode NFKC (full-width and compatibility forms fold to one spelling), case-folded (`ß` ->
    `ss`), every run of whitespace (tabs, newlines, NBSP) one space, no leading or trailing space.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", folded).strip()


Label = Annotated[ScoreLabel, Field(strict=False)]  # JSON carries the enum as a string


class ProductScore(StrictModel):
    """One product's calibrated relevance for a query, or why there is none.

    `status=unknown_product`: the product has no embedding of this model version (not yet embedded,
    deleted, or its image refused); it is reported, never silently dropped.
    """

    product_id: Identifier
    status: Literal["scored", "unknown_product"] = "scored"
    score: Probability | None = None
    similarity: float | None = None
    label: Label | None = None
    fusion_weights: FusionWeights | None = None

    @model_validator(mode="after")
    def _status_matches(self) -> ProductScore:
        scored = self.score is not None and self.label is not None
        if (self.status == "scored") != scored:
            raise PydanticCustomError(
                "score_status", "a scored product needs score and label, others neither"
            )
        return self


class ImpressionScore(ProductScore):
    """A product as it was shown in one search, with what the user did."""

    position: int = Field(ge=1, le=1000)
    clicked: bool = False
    ordered: bool = False


class QueryScores(StrictModel):
    """Every impression of one query log, scored (topic `query-scores`, key `query_id`, delete retention).

    `query_model_version` encoded the query, `embedding_model_version` made the product embeddings
    it was compared with: they are always equal (the record refuses otherwise), so no score mixes
    two models.
    """

    schema_version: Literal[1] = 1
    query_id: Identifier
    event_id: Identifier
    event_time: EventTime
    query: QueryText
    normalised_query: str = Field(max_length=LIMITS.max_query_chars * 3)
    experiment_id: Identifier | None = None
    variant: Variant
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    query_model_version: ModelVersion
    embedding_model_version: ModelVersion
    impressions: list[ImpressionScore] = Field(min_length=1, max_length=LIMITS.max_impressions)
    scored_at: EventTime

    @model_validator(mode="after")
    def _one_model(self) -> QueryScores:
        if self.query_model_version != self.embedding_model_version:
            raise PydanticCustomError(
                "mixed_model_versions",
                "query encoded by {q} but products embedded by {e}",
                {"q": self.query_model_version, "e": self.embedding_model_version},
            )
        return self

    def key(self) -> bytes:
        return self.query_id.encode()

    def by_product(self) -> dict[str, ImpressionScore]:
        """Each shown product's score (a product shown twice: its last position)."""
        return {imp.product_id: imp for imp in self.impressions}


class RelevanceEntry(StrictModel):
    """Latest score of one (model version, normalised query, product) (topic `relevance-table`).

    Compacted by key with a time retention: a pair not scored again within it expires, so the table
    stays bounded. `source` says how the pair was scored: shown in a search (`impression`), among a
    head query's top-K of the whole catalogue (`top_k`, with its `rank`), or asked for (`request`).
    """

    schema_version: Literal[1] = 1
    model_version: ModelVersion
    query: str = Field(min_length=1, max_length=LIMITS.max_query_chars * 3)
    product_id: Identifier
    score: Probability
    similarity: float
    label: Label
    fusion_weights: FusionWeights | None = None
    source: Literal["impression", "top_k", "request"]
    rank: int | None = Field(default=None, ge=1)
    scored_at: EventTime

    @field_validator("query")
    @classmethod
    def _normalised(cls, value: str) -> str:
        if normalise_query(value) != value:
            raise PydanticCustomError("query_not_normalised", "query must be normalise_query(query)")
        return value

    def key(self) -> bytes:
        """JSON array `[model_version, query, product_id]`: unambiguous whatever the query holds."""
        return table_key(self.model_version, self.query, self.product_id)


def table_key(model_version: str, normalised_query: str, product_id: str) -> bytes:
    """The relevance-table key a ranker looks up (pass the query through `normalise_query` first)."""
    return orjson.dumps([model_version, normalised_query, product_id])


class ScoreRequest(InputModel):
    """A ranker's candidates to score now (topic `score-requests`, key `reply_key`).

    The answer is a `ScoreReply` keyed `reply_key` on `score-replies`; a request older than
    `timeout_ms` when a worker reaches it is answered `expired` (the ranker has moved on).
    `model_version` pins a version; without it the serving version answers.
    """

    schema_version: Literal[1] = 1
    request_id: Identifier
    reply_key: Identifier
    query: QueryText
    candidates: list[Identifier] = Field(min_length=1, max_length=LIMITS.max_impressions)
    model_version: ModelVersion | None = None
    sent_at: EventTime
    timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    @field_validator("candidates")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate_candidate", "a product is listed twice in candidates")
        return value


class ScoreReply(StrictModel):
    """The answer to one `ScoreRequest`: every candidate, in the request's order, scored or unknown."""

    schema_version: Literal[1] = 1
    request_id: Identifier
    reply_key: Identifier
    status: Literal["ok", "expired"]
    model_version: ModelVersion
    scores: list[ProductScore] = Field(max_length=LIMITS.max_impressions)
    replied_at: EventTime

    def key(self) -> bytes:
        return self.reply_key.encode()
