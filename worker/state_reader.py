"""Read a topic as a table: from the beginning to its current end, then keep following it.

Used for the product-embeddings state (every query worker holds all of it, like a global table)
and to restore the A/B partial aggregates a worker takes over after a rebalance or a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from worker.backoff import Backoff
from worker.config import KafkaSettings
from worker.kafka_io import TopicsMissing, make_consumer


class TopicReader:
    """A group-less consumer assigned to every partition of one topic."""

    def __init__(self, kafka: KafkaSettings, topic: str, timeout_s: float = 10.0) -> None:
        """Assign every partition; `timeout_s` only absorbs metadata lag: the runner waited for the topic."""
        self.topic = topic
        self.consumer: KafkaConsumer = make_consumer(kafka, None, max_poll_records=2000)
        try:
            deadline, backoff = time.monotonic() + timeout_s, Backoff(0.2, cap=1.0)
            partitions = self.consumer.partitions_for_topic(topic)
            while not partitions:
                if time.monotonic() > deadline:
                    raise TopicsMissing([topic])  # a KafkaError: retried by the caller, not a crash
                time.sleep(backoff.next())
                partitions = self.consumer.partitions_for_topic(topic)
            self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
            self.consumer.assign(self.partitions)
            self.consumer.seek_to_beginning(*self.partitions)
        except BaseException:
            self.consumer.close(autocommit=False)  # callers retry: leave no consumer (and IO thread) behind
            raise

    def read_to_end(self, apply: Callable[[ConsumerRecord], None], timeout_s: float = 120.0) -> int:
        """Apply every record up to the end offsets seen now; returns how many were applied."""
        end = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        applied = 0
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic!r} to its end took over {timeout_s:.0f}s")
            for rec in self._poll(200):
                apply(rec)
                applied += 1
        return applied

    def follow(self, apply: Callable[[ConsumerRecord], None], timeout_ms: int = 0) -> int:
        applied = 0
        for rec in self._poll(timeout_ms):
            apply(rec)
            applied += 1
        return applied

    def _poll(self, timeout_ms: int) -> Iterator[ConsumerRecord]:
        batch = self.consumer.poll(timeout_ms=timeout_ms)
        for tp in sorted(batch, key=lambda t: t.partition):
            yield from batch[tp]

    def close(self) -> None:
        self.consumer.close(autocommit=False)
