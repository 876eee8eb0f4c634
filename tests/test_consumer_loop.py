"""The batch loop's own guarantees on the real broker, with a small processor of this test's own.

The processor here stands in for the product/query paths so that the loop's behaviour (not the
model's) is what is asserted: nothing of a partition is processed before the processor has taken it
over, and a take-over that fails (the query path reads its A/B partials back from a topic, which
fails while the broker is away) is retried instead of being skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import cast

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from harness.local_services import LocalBroker
from tests.conftest import make_settings, wait_until
from worker.backoff import Backoff
from worker.config import Settings
from worker.consumer_loop import ConsumerLoop
from worker.kafka_io import create_topics, make_consumer, make_producer
from worker.observability import CONSUMER_LAG, Liveness
from worker.outputs import Output
from worker.pausing import PartitionPauser
from worker.triton_client import TritonUnavailable


class FlakyTakeOver:
    """Echoes every record to an output topic; its first `failures` take-overs raise, and its
    batches fail as if Triton were down while `triton_down` is set."""

    path = "test"

    def __init__(self, out_topic: str, failures: int, triton_down: threading.Event | None = None) -> None:
        self.out_topic = out_topic
        self.failures = failures
        self.triton_down = triton_down or threading.Event()
        self.failed_batches = 0
        self.taken: set[int] = set()  # partitions taken over successfully
        self.attempts = 0
        self.early: list[tuple[int, int]] = []  # records seen before their partition was taken over
        self.seen: list[tuple[int, int]] = []

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        if self.triton_down.is_set():
            self.failed_batches += 1
            raise TritonUnavailable("Triton is down (test)")
        for rec in records:
            self.seen.append((rec.partition, rec.offset))
            if rec.partition not in self.taken:
                self.early.append((rec.partition, rec.offset))
        return [Output(self.out_topic, f"{r.partition}:{r.offset}".encode(), r.value) for r in records]

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TimeoutError("reading the state topic back failed (broker away)")
        self.taken |= {tp.partition for tp in partitions}

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.taken -= {tp.partition for tp in partitions}

    def idle(self) -> None:
        return None


def _settings_with_records(broker: LocalBroker, count: int) -> Settings:
    """Fresh topics on the broker, with `count` opaque records on the query-log topic."""
    settings = make_settings(broker)
    create_topics(settings)
    producer = make_producer(settings.kafka)
    for i in range(count):
        producer.send(settings.topics.query_logs, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush(30)
    producer.close()
    return settings


def _loop(settings: Settings, processor: FlakyTakeOver) -> ConsumerLoop:
    group = settings.worker.query_group
    return ConsumerLoop(
        settings,
        settings.topics.query_logs,
        group,
        processor,
        make_consumer(settings.kafka, group),
        make_producer(settings.kafka),
        Liveness(),
    )


def test_failed_take_over_is_retried_and_holds_the_partitions(broker: LocalBroker) -> None:
    settings = _settings_with_records(broker, 30)
    topics = settings.topics
    processor = FlakyTakeOver(topics.query_scores, failures=2)
    group = settings.worker.query_group
    loop = _loop(settings, processor)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        wait_until("all 30 records processed", lambda: len(set(processor.seen)) == 30, 90)
        taken = set(processor.taken)
        deferred = set(loop.pausing.deferred)
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert processor.attempts >= 3  # two failures, then the take-over that worked (per group join)
    assert processor.early == []  # the partitions stayed paused until then
    assert taken == {0, 1, 2} and not deferred
    # the retries back off (0.5 s, then 1 s) instead of spinning
    assert time.monotonic() - started >= 1.5

    assert processor.taken == set()  # the close revoked them
    consumer = make_consumer(settings.kafka, group)
    tps = [TopicPartition(topics.query_logs, p) for p in range(topics.partitions)]
    committed = sum(consumer.committed(tp) or 0 for tp in tps)
    consumer.close(autocommit=False)
    assert committed == 30


def test_rebalance_during_a_backoff_never_processes_a_partition_not_taken_over(broker: LocalBroker) -> None:
    """A worker holds a batch while Triton is down; a second member joins, so the group rebalances
    under it. It must drop (and rewind) what it holds of partitions given away or given back, and
    process nothing before a take-over; together the two members process every record."""
    settings = _settings_with_records(broker, 60)
    topics = settings.topics

    down = threading.Event()
    down.set()
    first, second = FlakyTakeOver(topics.query_scores, 0, down), FlakyTakeOver(topics.query_scores, 0)
    stop = threading.Event()
    threads = []
    try:
        for processor in (first, second):
            loop = _loop(settings, processor)
            threads.append(threading.Thread(target=loop.run, args=(stop,), daemon=True))
            threads[-1].start()
            if processor is first:
                wait_until("the first member to hold a batch", lambda: first.failed_batches >= 1, 60)
        wait_until("the second member to take partitions over", lambda: bool(second.taken), 60)
        shared = (set(first.taken), set(second.taken))
        down.clear()  # Triton is back
        wait_until("every record processed", lambda: len(set(first.seen) | set(second.seen)) == 60, 90)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert shared[1] and not (shared[0] & shared[1])  # the group really was split
    assert first.early == [] and second.early == []
    assert first.failed_batches >= 1
    consumer = make_consumer(settings.kafka, settings.worker.query_group)
    tps = [TopicPartition(topics.query_logs, p) for p in range(topics.partitions)]
    committed = sum(consumer.committed(tp) or 0 for tp in tps)
    consumer.close(autocommit=False)
    assert committed == 60


def test_backoff_doubles_up_to_its_cap_jitters_and_resets() -> None:
    backoff = Backoff(0.5, cap=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
    jittered = Backoff(1.0, cap=1.0, jitter=0.2)
    assert all(0.8 <= jittered.next() <= 1.2 for _ in range(100))
    assert Backoff(5.0, cap=2.0).next() == 2.0  # a first delay above the cap is capped


class _Owner:
    """A partition owner that only records what it gave away."""

    path = "test"

    def __init__(self) -> None:
        self.revoked: set[TopicPartition] = set()

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        pass

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.revoked |= partitions


def _lag(topic: str, partition: int) -> float | None:
    labels = {"topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("querylife_consumer_lag", labels)


def test_a_revoked_partition_leaves_the_lag_gauge() -> None:
    topic = "lag-gauge-test"
    for partition, lag in ((0, 7), (1, 3)):
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)
    owner = _Owner()
    # the revoke callback touches no consumer call: the partitions are only forgotten
    pauser = PartitionPauser(cast(KafkaConsumer, None), owner, Liveness(), Backoff(0.1, cap=1.0))
    gone = {TopicPartition(topic, 0), TopicPartition(topic, 5)}  # 5 never had a lag reported
    pauser.on_partitions_revoked(gone)
    assert owner.revoked == gone and pauser.revoked == gone
    assert _lag(topic, 0) is None  # no stale value beside the new owner's
    assert _lag(topic, 1) == 3.0  # still ours
