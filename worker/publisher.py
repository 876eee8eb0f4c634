"""Publishing a batch's outputs: produce all, flush, check every ack; retry the whole set until acked.

Two steps so the loop can overlap them with the next batch's Triton call: `send` hands every output to
the producer (its I/O thread ships them while the loop works on), `confirm` waits for the acks.
Outputs are idempotent by key, so re-sending a whole set after a failure only overwrites. A producer
that keeps failing is replaced: kafka-python's idempotent producer can be left in a fatal state (its
producer id unknown to a restarted broker) in which every send fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from worker.backoff import Backoff
from worker.config import KafkaSettings
from worker.kafka_io import make_producer
from worker.observability import EVENTS_OUT
from worker.outputs import Output

log = structlog.get_logger()

REPLACE_AFTER_FAILURES = 3
"""Failed publishes in a row after which the producer is replaced by a fresh one."""


@dataclass
class Sent:
    """A batch's outputs handed to the producer; `futures` None if handing them over failed."""

    outputs: list[Output]
    futures: list[tuple[str, FutureRecordMetadata]] | None


class Publisher:
    """Owns the producer of one consumer loop; `publish` returns once every output is acknowledged."""

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: KafkaProducer,
        path: str,
        wait: Callable[[float], None],
        backoff: Backoff,
    ) -> None:
        self.kafka = kafka
        self.producer = producer
        self.path = path
        self.wait = wait  # how to wait between tries (the loop's paused polls)
        self.backoff = backoff

    def send(self, outputs: list[Output]) -> Sent:
        """Hand every output to the producer without waiting for acks (`confirm` waits)."""
        try:
            return Sent(outputs, self._hand_over(outputs))
        except KafkaError as exc:
            log.warning("send_failed", path=self.path, error=str(exc)[:200])
            return Sent(outputs, None)

    def confirm(self, sent: Sent, give_up: Callable[[], bool]) -> bool:
        """True once every output of `sent` is acknowledged, re-publishing the set if a send failed."""
        if sent.futures is not None:
            try:
                self._await(sent.futures)
                return True
            except KafkaError as exc:
                log.warning("publish_failed", path=self.path, error=str(exc)[:200], retry_in_s=0)
        return self.publish(sent.outputs, give_up)

    def publish(self, outputs: list[Output], give_up: Callable[[], bool]) -> bool:
        """True once every output is acknowledged; False if `give_up()` says so after a failure."""
        self.backoff.reset()
        failures = 0
        while True:
            try:
                self._await(self._hand_over(outputs))
                return True
            except KafkaError as exc:
                if give_up():
                    return False
                delay = self.backoff.next()
                log.warning("publish_failed", path=self.path, error=str(exc)[:200], retry_in_s=delay)
                failures += 1
                if failures % REPLACE_AFTER_FAILURES == 0:
                    self._replace_producer()
                self.wait(delay)

    def _hand_over(self, outputs: list[Output]) -> list[tuple[str, FutureRecordMetadata]]:
        return [(out.topic, self.producer.send(out.topic, key=out.key, value=out.value)) for out in outputs]

    def _await(self, futures: list[tuple[str, FutureRecordMetadata]]) -> None:
        self.producer.flush(timeout=self.kafka.request_timeout_ms / 1000)
        for topic, fut in futures:
            fut.get(timeout=1)
            EVENTS_OUT.labels(topic).inc()

    def _replace_producer(self) -> None:
        try:
            fresh = make_producer(self.kafka)
        except KafkaError as exc:
            log.warning("producer_recreate_failed", path=self.path, error=str(exc)[:200])
            return
        old, self.producer = self.producer, fresh
        with contextlib.suppress(Exception):
            old.close(timeout=0)
        log.warning("producer_recreated", path=self.path)

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.close(timeout=timeout_s)
