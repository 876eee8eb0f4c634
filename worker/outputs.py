"""What a path hands the consumer loop: the records to produce for a batch, dead letters included.

The paths build outputs; the loop only publishes them and commits. Every output is keyed so that a
replay of the batch overwrites instead of duplicating.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from kafka.consumer.fetcher import ConsumerRecord

from schemas import DeadLetter, EventError, encode
from worker.observability import DEAD_LETTERS

log = structlog.get_logger()


@dataclass(frozen=True)
class Output:
    """One record to produce; `value=None` is a tombstone (a delete in a compacted topic)."""

    topic: str
    key: bytes
    value: bytes | None


def dead_letter(
    record: ConsumerRecord, error: Exception, topic: str, worker: str, event_id: str | None = None
) -> Output:
    """Wrap an input that cannot be processed; keyed by its coordinates so a replay overwrites it.

    The letter is bounded (`DeadLetter.from_input`): an input near the event size limit must not
    become an output the broker refuses, which would stall the partition in the publisher.
    """
    letter = DeadLetter.from_input(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        reason=error.reason if isinstance(error, EventError) else type(error).__name__,
        error_class=type(error).__name__,
        error_message=str(error),
        event_id=event_id,
        worker=worker,
        failed_at=datetime.now(UTC),
    )
    DEAD_LETTERS.labels(record.topic, letter.reason).inc()
    log.warning(
        "dead_letter",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=letter.reason,
        error=letter.error_message[:200],
        event_id=event_id,
        original_size=letter.original_size,
        original_truncated=letter.original_truncated,
    )
    return Output(topic, f"{record.topic}:{record.partition}:{record.offset}".encode(), encode(letter))
