"""orjson (de)serialisation with limits; every failure becomes an `EventError` with a reason code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.limits import LIMITS

M = TypeVar("M", bound=BaseModel)


class EventError(ValueError):
    """A rejected input. `reason` is a short stable code (DLQ grouping); `field` names where it failed."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(message)


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<event>"


def from_validation_error(exc: ValidationError) -> EventError:
    """The first error decides the reason; the message lists up to five, each naming its field."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    detail = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:5])
    if len(errors) > 5:
        detail += f"; ... {len(errors) - 5} more"
    reason = first["type"]
    if first["loc"][-1:] == ("schema_version",) and reason in ("literal_error", "union_tag_invalid"):
        # a newer producer's version: its fields may mean something else, so it is not guessed at
        reason = "unsupported_schema_version"
    return EventError(reason, detail, _field_path(first["loc"]))


def decode_event(model: type[M], raw: bytes | None, max_bytes: int = LIMITS.max_event_bytes) -> M:
    """Parse and validate one Kafka value. Never raises anything but `EventError`."""
    return _validate(model, _parse(raw, max_bytes))


def decode_versioned(
    models: Mapping[int, type[M]], raw: bytes | None, max_bytes: int = LIMITS.max_event_bytes
) -> M:
    """Parse one Kafka value of a topic that may hold several schema versions of one record.

    `schema_version` picks the model (absent means 1: the first records had it as a default); an
    unknown one is `unsupported_schema_version`. Never raises anything but `EventError`.
    """
    obj = _parse(raw, max_bytes)
    version = obj.get("schema_version", 1)
    model = models.get(version) if type(version) is int else None
    if model is None:
        raise EventError(
            "unsupported_schema_version",
            f"schema_version {str(version)[:20]!r} is not one of {sorted(models)}",
            "schema_version",
        )
    return _validate(model, obj)


def _parse(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise EventError("null_value", "record has no value")
    if len(raw) > max_bytes:
        raise EventError("too_large", f"event is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        raise EventError(reason, str(exc)[:300]) from None
    if not isinstance(obj, dict):
        raise EventError("not_an_object", f"event must be a JSON object, got {type(obj).__name__}")
    return obj


def _validate(model: type[M], obj: dict[str, Any]) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except RecursionError:
        raise EventError("too_deep", "event nesting is too deep") from None


def encode(record: BaseModel) -> bytes:
    """Serialise a record as compact JSON bytes."""
    return orjson.dumps(record.model_dump(mode="json"))
