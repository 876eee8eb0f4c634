"""Inbound events: catalogue changes (`ProductUpsert`) and search logs (`QueryLog`).

Both are `InputModel`s: fields a newer producer adds are accepted, counted and ignored
(docs/contracts.md, "Compatibility"); a `schema_version` this worker does not know is refused
(`unsupported_schema_version`), since its meaning may have changed.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import EventTime, Identifier, InputModel, Variant
from schemas.limits import LIMITS

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


def sniff_image_format(data: bytes) -> str | None:
    """Format from magic bytes; the decoder re-checks, this only rejects early and cheaply."""
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


class ProductImage(InputModel):
    """A product image: inline base64 bytes, or a path relative to the worker's image root.

    URLs are refused on purpose (no server-side fetching of attacker-chosen addresses), and paths
    are refused unless they stay inside the image root.
    """

    data: bytes | None = Field(default=None, description="Encoded image bytes (base64 in JSON)")
    path: str | None = Field(default=None, max_length=255, description="Path relative to the image root")

    @field_validator("data", mode="before")
    @classmethod
    def _decode_base64(cls, value: object) -> object:
        if value is None or isinstance(value, bytes):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("bytes_type", "image data must be a base64 string")
        if len(value) > (LIMITS.max_image_bytes * 4) // 3 + 4:
            raise PydanticCustomError(
                "image_too_large", "image data exceeds {limit} bytes", {"limit": LIMITS.max_image_bytes}
            )
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PydanticCustomError("invalid_base64", "image data is not valid base64") from exc

    @field_validator("data")
    @classmethod
    def _check_format(cls, value: bytes | None) -> bytes | None:
        if value is None:
            return value
        if len(value) > LIMITS.max_image_bytes:
            raise PydanticCustomError(
                "image_too_large", "image data exceeds {limit} bytes", {"limit": LIMITS.max_image_bytes}
            )
        fmt = sniff_image_format(value)
        if fmt is None or fmt not in LIMITS.allowed_image_formats:
            raise PydanticCustomError(
                "unsupported_image_format",
                "image is not one of {allowed}",
                {"allowed": ", ".join(LIMITS.allowed_image_formats)},
            )
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "://" in value or value.lower().startswith(("http:", "https:", "file:", "ftp:", "data:")):
            raise PydanticCustomError("url_not_allowed", "image URLs are not fetched; send bytes or a path")
        if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
            raise PydanticCustomError("absolute_path", "image path must be relative to the image root")
        if ".." in value.replace("\\", "/").split("/") or "\\" in value:
            raise PydanticCustomError("path_traversal", "image path must not leave the image root")
        if not _SAFE_PATH.match(value):
            raise PydanticCustomError("unsafe_path", "image path has characters outside [A-Za-z0-9_./-]")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ProductImage:
        if (self.data is None) == (self.path is None):
            raise PydanticCustomError("image_source", "image needs exactly one of 'data' or 'path'")
        return self

    @field_serializer("data")
    def _encode_base64(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")


Title = Annotated[
    str, StringConstraints(min_length=1, max_length=LIMITS.max_title_chars, strip_whitespace=True)
]
AttributeValue = Annotated[str, StringConstraints(max_length=LIMITS.max_attribute_chars)]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
ProductType = Annotated[str, StringConstraints(min_length=1, max_length=64)]
QueryText = Annotated[
    str, StringConstraints(min_length=1, max_length=LIMITS.max_query_chars, strip_whitespace=True)
]


class ProductUpsert(InputModel):
    """A catalogue change. `op=delete` needs only the id; an upsert needs a type and a title or image."""

    schema_version: Literal[1] = 1
    event_id: Identifier
    event_time: EventTime
    op: Literal["upsert", "delete"] = "upsert"
    product_id: Identifier
    title: Title | None = None
    product_type: ProductType | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict, max_length=LIMITS.max_attributes
    )
    image: ProductImage | None = None

    @model_validator(mode="after")
    def _upsert_has_content(self) -> ProductUpsert:
        if self.op == "upsert":
            if self.product_type is None:
                raise PydanticCustomError("missing", "an upsert needs product_type")
            if self.title is None and self.image is None:
                raise PydanticCustomError("no_content", "an upsert needs a title or an image")
        return self


class Impression(InputModel):
    """One product shown for a query, and what the user did with it."""

    product_id: Identifier
    position: int = Field(ge=1, le=1000)
    clicked: bool = False
    ordered: bool = False


class QueryLog(InputModel):
    """One search: the query, the A/B variant that ranked it, and the impressions it produced.

    Producers key it by its randomisation unit, `unit_key()`, so that all of one user's searches
    meet in one partition (docs/contracts.md). `experiment_id` was added within version 1 as an
    optional field: without it the search belongs to no declared experiment.
    """

    schema_version: Literal[1] = 1
    event_id: Identifier
    event_time: EventTime
    query_id: Identifier
    query: QueryText
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    experiment_id: Identifier | None = None
    variant: Variant
    impressions: list[Impression] = Field(min_length=1, max_length=LIMITS.max_impressions)

    @field_validator("impressions")
    @classmethod
    def _unique_products(cls, value: list[Impression]) -> list[Impression]:
        if len({imp.product_id for imp in value}) != len(value):
            raise PydanticCustomError("duplicate_impression", "a product is listed twice in impressions")
        return value

    def unit_key(self) -> bytes:
        """The Kafka key producers give it: the user, else the session, else the search itself.

        Sessions belong to one user, so keying by user keeps every user-, session- and query-level
        randomisation unit inside one partition.
        """
        return (self.user_id or self.session_id or self.query_id).encode()
