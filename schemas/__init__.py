"""Versioned wire contracts of the Query-LIFE pipeline.

Every Kafka record the worker reads or writes is one of these pydantic models, serialised with
orjson. Inputs are hostile until validated: `decode_event` enforces byte, length and shape limits
and turns every failure into an `EventError` with a short machine-readable reason.
"""

from schemas.codec import EventError, decode_event, decode_versioned, encode
from schemas.embeddings import FusionWeights, ProductEmbeddingV2, decode_product_embedding
from schemas.events import Impression, ProductImage, ProductUpsert, QueryLog
from schemas.experiments import ABMetricsV2, Experiment
from schemas.lifecycle import ShadowPair, ShadowScores
from schemas.limits import LIMITS, Limits
from schemas.outputs import (
    ABMetrics,
    DeadLetter,
    ProductEmbedding,
    RelevanceScore,
    ScoreLabel,
)
from schemas.ranker import (
    ImpressionScore,
    ProductScore,
    QueryScores,
    RelevanceEntry,
    ScoreReply,
    ScoreRequest,
    normalise_query,
    table_key,
)

__all__ = [
    "LIMITS",
    "ABMetrics",
    "ABMetricsV2",
    "DeadLetter",
    "EventError",
    "Experiment",
    "FusionWeights",
    "Impression",
    "ImpressionScore",
    "Limits",
    "ProductEmbedding",
    "ProductEmbeddingV2",
    "ProductImage",
    "ProductScore",
    "ProductUpsert",
    "QueryLog",
    "QueryScores",
    "RelevanceEntry",
    "RelevanceScore",
    "ScoreLabel",
    "ScoreReply",
    "ScoreRequest",
    "ShadowPair",
    "ShadowScores",
    "decode_event",
    "decode_product_embedding",
    "decode_versioned",
    "encode",
    "normalise_query",
    "table_key",
]
