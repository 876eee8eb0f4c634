"""Publishing a batch's outputs: produce all, flush, check every ack; retry the whole set until acked.

Two steps so the loop can overlap them with the next batch's Triton call: `send` hands every output to
the producer from the publisher's own thread (kafka-python serialises, partitions and appends each
record in pure Python, ~0.2 ms a record: that work runs while the loop's thread waits on Triton, which
releases the GIL), `confirm` waits for that hand-over and for the acks.
Outputs are idempotent by key, so re-sending a whole set after a failure only overwrites. A producer
that keeps failing is replaced: kafka-python's idempotent producer can be left in a fatal state (its
producer id unknown to a restarted broker) in which every send fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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


Acks = list[tuple[str, FutureRecordMetadata]]


@dataclass
class Sent:
    """A batch's outputs being handed to the producer; `handed` gives their acks' futures."""

    outputs: list[Output]
    handed: Future[Acks]


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
        # one thread: a batch is handed over whole, in order, and only after the one before was acked
        self._hands = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"publish-{path}")

    def send(self, outputs: list[Output]) -> Sent:
        """Start handing every output to the producer, in the publisher's thread (`confirm` waits)."""
        return Sent(outputs, self._hands.submit(self._hand_over, outputs))

    def confirm(self, sent: Sent, give_up: Callable[[], bool]) -> bool:
        """True once every output of `sent` is acknowledged, re-publishing the set if a send failed."""
        try:
            self._await(sent.handed.result())
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

    def _hand_over(self, outputs: list[Output]) -> Acks:
        return [(out.topic, self.producer.send(out.topic, key=out.key, value=out.value)) for out in outputs]

    def _await(self, futures: Acks) -> None:
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
        self._hands.shutdown(wait=True)  # the loop settled its last batch: nothing is being handed over
        self.producer.close(timeout=timeout_s)
