"""Versioned wire contracts of the Query-LIFE pipeline.

Every Kafka record the worker reads or writes is one of these pydantic models, serialised with
orjson. Inputs are hostile until validated: `decode_event` enforces byte, length and shape limits
and turns every failure into an `EventError` with a short machine-readable reason.
"""

from schemas.codec import EventError, decode_event, encode
from schemas.events import Impression, ProductImage, ProductUpsert, QueryLog
from schemas.limits import LIMITS, Limits
from schemas.outputs import (
    ABMetrics,
    DeadLetter,
    ProductEmbedding,
    RelevanceScore,
    ScoreLabel,
)

__all__ = [
    "LIMITS",
    "ABMetrics",
    "DeadLetter",
    "EventError",
    "Impression",
    "Limits",
    "ProductEmbedding",
    "ProductImage",
    "ProductUpsert",
    "QueryLog",
    "RelevanceScore",
    "ScoreLabel",
    "decode_event",
    "encode",
]
