"""Dead letters have a fixed size bound whatever the input, so a broker with Kafka's default message
size accepts them (a refused letter would stall its partition): the head of the original is kept,
with the whole input's size and SHA-256."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from harness.local_services import LocalBroker, LocalTriton
from schemas import LIMITS, DeadLetter, decode_event, encode
from schemas.limits import DEAD_LETTER_KEY_BYTES, DEAD_LETTER_ORIGINAL_BYTES, MAX_DEAD_LETTER_BYTES
from tests.conftest import RunningWorker, latest, make_settings, wait_until
from worker.kafka_io import MAX_INPUT_RECORD_BYTES, MAX_OUTPUT_RECORD_BYTES, create_topics, make_producer


def test_worker_bounds_the_dead_letter_of_a_max_size_event(broker: LocalBroker, triton: LocalTriton) -> None:
    settings = make_settings(broker, triton)
    create_topics(settings)
    topics = settings.topics
    # invalid JSON (an unterminated string) of exactly the event size limit: passes the size check,
    # fails parsing, so the worker dead-letters it; with a key longer than any id
    head = b'{"query": "'
    big = head + b"x" * (LIMITS.max_event_bytes - len(head))
    long_key = b"k" * (2 * DEAD_LETTER_KEY_BYTES)
    small = b'{"query": 5}'
    producer = make_producer(settings.kafka, max_request_size=MAX_INPUT_RECORD_BYTES)
    big_offset = producer.send(topics.query_logs, key=long_key, value=big).get(timeout=30).offset
    small_meta = producer.send(topics.query_logs, key=b"q-small", value=small).get(timeout=30)
    producer.close()

    worker = RunningWorker(settings, ["query"])
    wait_until("two dead letters", lambda: len(latest(settings, topics.dead_letter)) == 2, timeout_s=90)
    assert worker.shutdown() == 0

    raw = {k: v for k, v in latest(settings, topics.dead_letter).items() if v is not None}
    assert all(len(v) <= MAX_DEAD_LETTER_BYTES for v in raw.values()), [len(v) for v in raw.values()]
    letters = {(d.partition, d.offset): d for d in (decode_event(DeadLetter, v) for v in raw.values())}

    truncated = next(d for d in letters.values() if d.original_truncated)
    assert truncated.offset == big_offset and truncated.reason == "invalid_json"
    assert len(big) == LIMITS.max_event_bytes
    assert truncated.original == big[:DEAD_LETTER_ORIGINAL_BYTES]
    assert truncated.original_size == len(big)
    assert truncated.original_sha256 == hashlib.sha256(big).hexdigest()
    assert truncated.key == long_key[:DEAD_LETTER_KEY_BYTES] and truncated.key_truncated
    assert truncated.records(big) and not truncated.records(big[:-1] + b"y")

    whole = letters[(small_meta.partition, small_meta.offset)]
    assert whole.original == small and not whole.original_truncated
    assert whole.original_size == len(small)
    assert whole.original_sha256 == hashlib.sha256(small).hexdigest()
    assert whole.key == b"q-small" and not whole.key_truncated
    assert whole.records(small)


def test_worst_case_dead_letter_fits_the_bound() -> None:
    """Every part at its longest, in the characters JSON escapes most (`\\u0001`: 6 bytes each)."""
    nasty = "\x01" * 10_000
    letter = DeadLetter.from_input(
        source_topic=nasty,
        partition=2**31 - 1,
        offset=2**63 - 1,
        key=bytes(range(256)) * 4096,
        value=bytes(range(256)) * (3 * 4096),
        reason=nasty,
        error_class=nasty,
        error_message=nasty,
        event_id=nasty,
        worker=nasty,
        failed_at=datetime.now(UTC),
    )
    encoded = encode(letter)
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES < MAX_OUTPUT_RECORD_BYTES
    assert letter.original_truncated and letter.key_truncated
    assert decode_event(DeadLetter, encoded) == letter


def test_dead_letters_written_before_the_size_fields_still_decode() -> None:
    """The size fields are optional within schema version 1: older letters held the whole original."""
    old = (
        b'{"schema_version": 1, "source_topic": "in", "partition": 0, "offset": 3, "key": null,'
        b' "original": "eyJ4Ijo=", "reason": "invalid_json", "error_class": "EventError",'
        b' "error_message": "bad", "event_id": null, "failed_at": "2026-11-24T12:00:00Z", "worker": "w"}'
    )
    letter = decode_event(DeadLetter, old)
    assert letter.original == b'{"x":' and not letter.original_truncated
    assert letter.original_size is None and letter.records(b'{"x":')
