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
        # large fetches: a million-product table is read in bulk at start
        self.consumer: KafkaConsumer = make_consumer(
            kafka, None, max_poll_records=5000, max_partition_fetch_bytes=16 * 1024 * 1024
        )
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

    def topic_id(self) -> str | None:
        """The broker's id of the topic (changes when it is deleted and recreated), if it gives one."""
        topic_id = self.consumer._client.cluster.topic_id(self.topic)  # kafka-python keeps it from Metadata
        return None if topic_id is None else str(topic_id)

    def seek(self, offsets: dict[int, int]) -> None:
        """Continue from these next offsets (a snapshot's); partitions not named start at the beginning."""
        for tp in self.partitions:
            if tp.partition in offsets:
                self.consumer.seek(tp, offsets[tp.partition])

    def end_offsets(self) -> dict[TopicPartition, int]:
        """The topic's end offsets now (one ListOffsets round trip): what was written before this call."""
        return dict(self.consumer.end_offsets(self.partitions))

    def reached(self, end: dict[TopicPartition, int]) -> bool:
        """Whether every partition's position is at `end` and at the high watermark of its last fetch
        (Tansu answers ListOffsets one batch short of the log end; the fetch's watermark is right)."""
        for tp in self.partitions:
            high = max(end.get(tp, 0), self.consumer.highwater(tp) or 0)
            if self.consumer.position(tp) < high:
                return False
        return True

    def positions(self) -> dict[int, int]:
        return {tp.partition: self.consumer.position(tp) for tp in self.partitions}

    def read_to_end(
        self,
        apply: Callable[[ConsumerRecord], None],
        stall_s: float = 60.0,
        progress: Callable[[int, float], None] | None = None,
        progress_every_s: float = 2.0,
    ) -> int:
        """Apply every record up to the end offsets seen now; returns how many were applied.

        No bound on the total time (a large table takes as long as it takes), only on a stall: no
        position moved for `stall_s` while behind raises `TimeoutError`. `progress(applied, share
        of the end offsets)` is called every `progress_every_s`, so callers can log and beat.
        """
        end = self.consumer.end_offsets(self.partitions)
        total = sum(self._behind(end).values()) or 1
        applied, last_move, last_report = 0, time.monotonic(), time.monotonic()
        while any(left := self._behind(end)) or self._raise_to_highwater(end):
            now = time.monotonic()
            if progress is not None and now - last_report >= progress_every_s:
                progress(applied, 1.0 - sum(left.values()) / total)
                last_report = now
            if now - last_move > stall_s:
                raise TimeoutError(f"reading {self.topic!r}: no progress for {stall_s:.0f}s, behind: {left}")
            for rec in self._poll(200):
                apply(rec)
                applied += 1
                last_move = now
        if progress is not None:
            progress(applied, 1.0)
        return applied

    def _raise_to_highwater(self, end: dict[TopicPartition, int]) -> bool:
        """Raise `end` to the high watermarks the fetches reported; whether any was higher.

        Some brokers (Tansu) answer ListOffsets(latest) with the base offset of the last batch
        rather than the log end, which would stop a read one batch short; the high watermark in
        fetch responses is right. Only raised once the first `end` is reached, so it is bounded.
        """
        raised = False
        for tp in self.partitions:
            high = self.consumer.highwater(tp)
            if high is not None and high > end[tp]:
                end[tp], raised = high, True
        return raised and any(self._behind(end))

    def _behind(self, end: dict[TopicPartition, int]) -> dict[int, int]:
        """Records left before `end`, per partition still behind it."""
        left = {tp.partition: end[tp] - self.consumer.position(tp) for tp in self.partitions}
        return {p: n for p, n in left.items() if n > 0}

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
