"""Shared pydantic building blocks: strict models, bounded ids and strings, model versions.

Compatibility policy (docs/contracts.md): within a schema version fields are only ever added, as
optional ones, so every reader ignores fields it does not know. `StrictModel` (the records this
project writes) drops them; `InputModel` (events from other teams' producers) keeps them aside, so
the worker can count which unknown fields arrive (`unknown_fields`) before ignoring them.
"""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.limits import LIMITS


class StrictModel(BaseModel):
    """No coercion, no NaN/inf: hostile input fails loudly, per field; unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class InputModel(StrictModel):
    """An inbound event: like `StrictModel`, but unknown fields are kept aside to be counted.

    They are never used: `unknown_fields` lists their dotted paths and nothing else reads them.
    """

    model_config = ConfigDict(extra="allow")

    def unknown_fields(self, prefix: str = "") -> list[str]:
        """Dotted paths of the fields this version does not define, nested events included."""
        found = [f"{prefix}{name}" for name in (self.model_extra or {})]
        for name in _nested_fields(type(self)):
            value = getattr(self, name)
            children = value if isinstance(value, list) else [value]
            for i, child in enumerate(children):
                if isinstance(child, InputModel):
                    where = f"{name}.{i}." if isinstance(value, list) else f"{name}."
                    found.extend(child.unknown_fields(prefix + where))
        return found


_NESTED: dict[type[InputModel], tuple[str, ...]] = {}


def _nested_fields(cls: type[InputModel]) -> tuple[str, ...]:
    """The fields of `cls` that can hold an `InputModel` (directly or in a list): the only ones
    `unknown_fields` must look into; found once per class (it runs for every inbound event)."""
    if cls not in _NESTED:
        _NESTED[cls] = tuple(
            name for name, field in cls.model_fields.items() if _holds_input_model(field.annotation)
        )
    return _NESTED[cls]


def _holds_input_model(annotation: object) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, InputModel):
        return True
    return any(_holds_input_model(arg) for arg in get_args(annotation))


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

MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ModelVersion = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=MODEL_VERSION_PATTERN)]
"""A served model's version (e.g. `querylife-v2-d030295acf`). Topic-name safe: the embeddings of
version V live in the topic `<embeddings prefix>.V` (docs/contracts.md)."""
