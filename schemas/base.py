"""Shared pydantic building blocks: strict models, bounded ids and strings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.limits import LIMITS


class StrictModel(BaseModel):
    """No coercion, no unknown fields, no NaN/inf: hostile input fails loudly, per field."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


Identifier = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=LIMITS.max_id_chars, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"
    ),
]
"""Ids end up in Kafka keys, logs and metrics: a small safe alphabet, bounded length."""

Variant = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]

# JSON has no datetime type: accept ISO-8601 strings even in strict mode, but require a timezone.
EventTime = Annotated[AwareDatetime, Field(strict=False)]


def utc_now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
