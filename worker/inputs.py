"""Decode an input record under the compatibility policy: unknown fields are counted, then ignored.

A producer that adds a field within a schema version (docs/contracts.md) must not send its events to
the dead-letter topic. Operators still see that it happened: `querylife_unknown_input_fields_total`
counts them by topic and field name. Names come from producers, so the label set is capped: the
first `MAX_FIELD_LABELS` distinct names get their own label (logged once each), any later one
counts as `_other`, and a name is cut to 64 characters.
"""

from __future__ import annotations

from typing import TypeVar

import structlog
from kafka.consumer.fetcher import ConsumerRecord

from schemas import decode_event
from schemas.base import InputModel
from worker.observability import UNKNOWN_INPUT_FIELDS

log = structlog.get_logger()

E = TypeVar("E", bound=InputModel)
MAX_FIELD_LABELS = 32
OTHER = "_other"
_labelled: set[str] = set()


def field_label(name: str) -> str:
    """The metric label of an unknown field name: itself while fewer than the cap exist, else `_other`."""
    name = name[:64]
    if name in _labelled:
        return name
    if len(_labelled) >= MAX_FIELD_LABELS:
        return OTHER
    _labelled.add(name)
    log.warning("unknown_input_field", field=name, note="accepted and ignored (docs/contracts.md)")
    return name


def decode_input(model: type[E], record: ConsumerRecord) -> E:
    """The event of one input record (raises `EventError` like `decode_event`), unknown fields counted."""
    event = decode_event(model, record.value)
    for name in event.unknown_fields():
        UNKNOWN_INPUT_FIELDS.labels(record.topic, field_label(name)).inc()
    return event
