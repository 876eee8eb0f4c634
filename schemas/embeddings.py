"""Product embeddings state, version 2: one binary vector per product and model version.

Version 1 (`schemas.outputs.ProductEmbedding`) carries the vector as a JSON list of floats (~5.2 KB
per 256-d vector) in one topic for every model version. Version 2 carries it as little-endian bytes
(base64 in JSON: ~1.4 KB in float32, ~0.7 KB in float16), decoded with one `numpy.frombuffer`, and
lives in the topic of its model version (docs/contracts.md), so versions never meet in one table.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, ModelVersion, StrictModel
from schemas.codec import decode_versioned
from schemas.outputs import ProductEmbedding

VectorDType = Literal["float32", "float16"]
VECTOR_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
"""numpy dtype (little-endian) of each `VectorDType`: how `vector` bytes are read."""
MAX_DIM = 4096

Weight = Annotated[float, Field(ge=0.0, le=1.0)]


class FusionWeights(StrictModel):
    """How much the title and the image made a product's fused embedding (they sum to 1).

    The "why" of a score: for shoes the image may weigh more, for phone cases the title.
    """

    title: Weight
    image: Weight

    @model_validator(mode="after")
    def _sum_to_one(self) -> FusionWeights:
        if abs(self.title + self.image - 1.0) > 1e-3:
            raise PydanticCustomError("weights_sum", "fusion weights must sum to 1")
        return self


class ProductEmbeddingV2(StrictModel):
    """State of one product for one model version (key: product_id; null value = deleted).

    Topic: `<QL_TOPIC_PRODUCT_EMBEDDINGS>.<model_version>`, compacted. `vector` holds `dim` values
    of `dtype`, little-endian; `array()` is the numpy view a query worker stacks into its matrix.
    """

    schema_version: Literal[2] = 2
    product_id: Identifier
    product_type: str = Field(max_length=64)
    model_version: ModelVersion
    dtype: VectorDType
    dim: int = Field(ge=1, le=MAX_DIM)
    vector: bytes = Field(description="dim values of dtype, little-endian IEEE 754 (base64 in JSON)")
    fusion_weights: FusionWeights
    has_title: bool
    has_image: bool
    source_event_id: Identifier
    updated_at: EventTime

    @field_validator("vector", mode="before")
    @classmethod
    def _from_base64(cls, value: object) -> object:
        if isinstance(value, str):
            if len(value) > (MAX_DIM * 4 * 4) // 3 + 4:
                raise PydanticCustomError("too_long", "vector is longer than {dim} float32", {"dim": MAX_DIM})
            return base64.b64decode(value, validate=True)
        return value

    @field_serializer("vector")
    def _to_base64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @model_validator(mode="after")
    def _vector_matches(self) -> ProductEmbeddingV2:
        dtype = VECTOR_DTYPES[self.dtype]
        if len(self.vector) != self.dim * dtype.itemsize:
            raise PydanticCustomError(
                "vector_size",
                "vector has {n} bytes, dim {dim} of {dtype} needs {want}",
                {
                    "n": len(self.vector),
                    "dim": self.dim,
                    "dtype": self.dtype,
                    "want": self.dim * dtype.itemsize,
                },
            )
        if not np.isfinite(np.frombuffer(self.vector, dtype=dtype)).all():
            raise PydanticCustomError("finite_number", "vector holds NaN or infinity")
        return self

    def array(self) -> np.ndarray:
        """The vector as a read-only numpy array of its dtype (no copy)."""
        return np.frombuffer(self.vector, dtype=VECTOR_DTYPES[self.dtype])

    def key(self) -> bytes:
        return self.product_id.encode()

    @classmethod
    def from_array(
        cls, vector: np.ndarray, dtype: VectorDType = "float32", **fields: Any
    ) -> ProductEmbeddingV2:
        """Build from a 1-d array, stored as `dtype` (float16 halves the state; see docs/contracts.md)."""
        data = np.ascontiguousarray(vector, dtype=VECTOR_DTYPES[dtype])
        if data.ndim != 1:
            raise ValueError(f"expected a 1-d vector, got shape {data.shape}")
        return cls(dtype=dtype, dim=int(data.shape[0]), vector=data.tobytes(), **fields)


AnyProductEmbedding = ProductEmbedding | ProductEmbeddingV2
EMBEDDING_VERSIONS: dict[int, type[AnyProductEmbedding]] = {1: ProductEmbedding, 2: ProductEmbeddingV2}


def decode_product_embedding(raw: bytes | None, max_bytes: int = 1 << 20) -> AnyProductEmbedding:
    """A state record of either version (a legacy v1 topic and a v2 topic are read side by side)."""
    return decode_versioned(EMBEDDING_VERSIONS, raw, max_bytes)


def embedding_array(record: AnyProductEmbedding) -> np.ndarray:
    """The vector of a record of either version, as float32 (v2 float16 is widened)."""
    if isinstance(record, ProductEmbeddingV2):
        return record.array().astype(np.float32, copy=False)
    return np.asarray(record.embedding, dtype=np.float32)
