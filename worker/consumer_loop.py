"""The at-least-once micro-batch loop shared by the product and query paths.

poll (max records / max wait) -> processor builds every output of the batch (dead letters included)
-> produce all -> flush and check every ack -> commit the batch's offsets. Nothing is committed
before its outputs are acknowledged, so a crash anywhere replays the batch; outputs are keyed so a
replay overwrites instead of duplicating. Triton being unavailable pauses the partitions and backs
off while still polling (the group membership stays alive, no busy loop, no commit).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.config import Settings
from worker.kafka_io import make_producer
from worker.observability import (
    BATCH_SIZE,
    CONSUMER_LAG,
    E2E_LATENCY,
    EVENTS_IN,
    EVENTS_OUT,
    TRITON_RETRIES,
    Liveness,
)
from worker.outputs import Output
from worker.triton_client import TritonUnavailable

log = structlog.get_logger()


class BatchProcessor(Protocol):
    """What a path does with a batch. It must be deterministic given the same records and state."""

    path: str

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]: ...

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: set[TopicPartition]) -> None: ...

    def idle(self) -> None: ...


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        parts = set(revoked)
        self.loop.revoked |= parts
        self.loop.deferred -= parts
        self.loop.processor.on_revoked(parts)
        log.info(
            "partitions_revoked", path=self.loop.processor.path, partitions=sorted(str(p) for p in parts)
        )

    def on_partitions_assigned(self, assigned: Any) -> None:
        # Only hold them here: the take-over (A/B partials read back) runs from the loop, between
        # batches, so it never races a batch in flight and a failure can be retried.
        parts = set(assigned)
        self.loop.revoked -= parts
        self.loop.hold(parts, retry_in_s=0.0)


class ConsumerLoop:
    """Runs one processor on one input topic inside one consumer group until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group_id: str,
        processor: BatchProcessor,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        liveness: Liveness,
        on_committed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.processor = processor
        self.consumer = consumer
        self.producer = producer
        self.liveness = liveness
        self.on_committed = on_committed
        self.revoked: set[TopicPartition] = set()
        # assigned, but not yet taken over by the processor (state not restored yet): kept paused
        self.deferred: set[TopicPartition] = set()
        self._deferred_retry_at = 0.0
        self._deferred_delay = 0.5
        self.drain_timeout_s = 30.0

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        worker = self.settings.worker
        log.info("consumer_started", path=self.processor.path, topic=self.topic, group=self.group_id)
        self.liveness.running(self.processor.path)
        outage_delay = 0.5
        while not stop.is_set():
            self.liveness.beat()
            if self.deferred:
                self._retry_deferred()
            try:
                polled = self.consumer.poll(
                    timeout_ms=worker.batch_max_wait_ms, max_records=worker.batch_max_events
                )
                records = [rec for tp in sorted(polled, key=lambda t: t.partition) for rec in polled[tp]]
                self._report_lag()
                if not records:
                    self.processor.idle()
            except KafkaError as exc:
                # the broker went away mid-stream: nothing was consumed, so nothing is at risk; wait
                # and poll again (the client reconnects; the group resumes from committed offsets)
                log.warning(
                    "broker_unavailable",
                    path=self.processor.path,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                    retry_in_s=outage_delay,
                )
                stop.wait(outage_delay)
                outage_delay = min(outage_delay * 2, 10.0)
                continue
            outage_delay = 0.5
            if not records:
                continue
            EVENTS_IN.labels(self.topic).inc(len(records))
            BATCH_SIZE.labels(self.processor.path).observe(len(records))
            self._handle(records, stop)
        self._close()

    def _handle(self, records: list[ConsumerRecord], stop: threading.Event) -> None:
        outputs = self._process_with_backoff(records, stop)
        if outputs is None:
            return
        if not self._publish(outputs, stop):
            return
        # a partition given away during the publish backoff is no longer ours to commit; one given
        # back to us is (its outputs are acknowledged; its take-over reads them back after this)
        records = [r for r in records if TopicPartition(r.topic, r.partition) not in self.revoked]
        if not records:
            return
        now = time.time()
        for rec in records:
            E2E_LATENCY.labels(self.processor.path).observe(max(0.0, now - rec.timestamp / 1000.0))
        self._commit(records)

    def _backoff_sleep(self, delay_s: float) -> None:
        """Wait while keeping the group membership: poll with every partition paused."""
        assigned = list(self.consumer.assignment())
        if assigned:
            self.consumer.pause(*assigned)
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            self.liveness.beat()
            try:
                polled = self.consumer.poll(timeout_ms=int(min(left, 0.5) * 1000))
            except KafkaError:  # the broker is away too: just wait out the delay
                time.sleep(min(left, 0.5))
                continue
            # nothing should come back (all paused, new partitions held); if it does, give it back
            for tp, recs in polled.items():
                with contextlib.suppress(Exception):
                    self.consumer.seek(tp, min(r.offset for r in recs))
        still = [tp for tp in assigned if tp in self.consumer.assignment() and tp not in self.deferred]
        if still:
            self.consumer.resume(*still)

    def hold(self, partitions: set[TopicPartition], retry_in_s: float) -> None:
        """Keep partitions paused until the processor has taken them over: consuming them with
        their state missing (e.g. A/B partials not restored) would write wrong aggregates."""
        self.deferred |= partitions
        with contextlib.suppress(Exception):
            self.consumer.pause(*partitions)
        self._deferred_retry_at = time.monotonic() + retry_in_s

    def _retry_deferred(self) -> None:
        if time.monotonic() < self._deferred_retry_at:
            return
        parts = {tp for tp in self.deferred if tp in self.consumer.assignment()}
        self.deferred = set()
        if not parts:
            return
        try:
            self.processor.on_assigned(parts)
            self._rewind_to_committed(parts)
        except Exception as exc:  # e.g. the broker went away while the A/B partials were read back
            self.hold(parts, retry_in_s=self._deferred_delay)
            log.warning(
                "assignment_deferred",
                path=self.processor.path,
                partitions=sorted(str(p) for p in parts),
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=self._deferred_delay,
            )
            self._deferred_delay = min(self._deferred_delay * 2, 10.0)
            return
        self._deferred_delay = 0.5
        self.consumer.resume(*parts)
        log.info("partitions_assigned", path=self.processor.path, partitions=sorted(str(p) for p in parts))

    def _rewind_to_committed(self, partitions: set[TopicPartition]) -> None:
        """A take-over starts at the group's committed offset, as a new owner would: kafka-python keeps
        the fetch position of a partition that comes back to the same member, past records this
        member dropped unprocessed when the partition was taken away during a backoff."""
        for tp in partitions:
            offset = self.consumer.committed(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)  # nothing committed: auto_offset_reset=earliest
            else:
                self.consumer.seek(tp, offset)

    def _drop_held(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Drop the records in hand of partitions given away during a backoff, or given back but not
        taken over yet: their take-over rewinds to the committed offset, so they are read again."""
        held = self.revoked | self.deferred
        return [r for r in records if TopicPartition(r.topic, r.partition) not in held]

    def _process_with_backoff(
        self, records: list[ConsumerRecord], stop: threading.Event
    ) -> list[Output] | None:
        triton = self.settings.triton
        delay = triton.retry_initial_s
        started = time.monotonic()
        while True:
            try:
                return self.processor.process(records)
            except (TritonUnavailable, KafkaError) as exc:
                # Triton down, or the broker down while the query path follows its state topic
                unavailable = "triton" if isinstance(exc, TritonUnavailable) else "broker"
                if unavailable == "triton":
                    TRITON_RETRIES.inc()
                if stop.is_set() and time.monotonic() - started > self.drain_timeout_s:
                    log.warning(
                        "drain_abandoned",
                        path=self.processor.path,
                        reason=f"{unavailable} unavailable",
                        records=len(records),
                    )
                    return None
                log.warning(
                    f"{unavailable}_unavailable",
                    path=self.processor.path,
                    retry_in_s=round(delay, 2),
                    error=str(exc)[:200],
                )
                self._backoff_sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, triton.retry_max_s)
                records[:] = self._drop_held(records)
                if not records:
                    return None

    def _publish(self, outputs: list[Output], stop: threading.Event) -> bool:
        """Produce and wait for every ack; retry the whole set (idempotent by key) on broker errors."""
        delay = 0.5
        started = time.monotonic()
        failures = 0
        while True:
            try:
                futures = [
                    (out.topic, self.producer.send(out.topic, key=out.key, value=out.value))
                    for out in outputs
                ]
                self.producer.flush(timeout=self.settings.kafka.request_timeout_ms / 1000)
                for topic, fut in futures:
                    fut.get(timeout=1)
                    EVENTS_OUT.labels(topic).inc()
                return True
            except KafkaError as exc:
                if stop.is_set() and time.monotonic() - started > self.drain_timeout_s:
                    return False
                log.warning(
                    "publish_failed", path=self.processor.path, error=str(exc)[:200], retry_in_s=delay
                )
                failures += 1
                if failures % 3 == 0:
                    # a producer in a fatal state (e.g. its producer id unknown to a restarted broker)
                    # fails every send forever: start a fresh one
                    self._replace_producer()
                self._backoff_sleep(delay)
                delay = min(delay * 2, 10.0)

    def _replace_producer(self) -> None:
        try:
            fresh = make_producer(self.settings.kafka)
        except KafkaError as exc:
            log.warning("producer_recreate_failed", path=self.processor.path, error=str(exc)[:200])
            return
        old, self.producer = self.producer, fresh
        with contextlib.suppress(Exception):
            old.close(timeout=0)
        log.warning("producer_recreated", path=self.processor.path)

    def _commit(self, records: list[ConsumerRecord]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            if tp not in offsets or rec.offset + 1 > offsets[tp].offset:
                offsets[tp] = OffsetAndMetadata(rec.offset + 1, "", -1)
        try:
            self.consumer.commit(offsets=offsets)
        except CommitFailedError as exc:
            # The group rebalanced: the new owner replays from the last commit; our outputs are idempotent.
            log.warning("commit_failed_rebalanced", path=self.processor.path, error=str(exc)[:200])
            return
        except KafkaError as exc:
            # The broker is away: the outputs are acknowledged, the next commit (cumulative) covers
            # these offsets; a crash before it replays them into identical, same-key outputs.
            log.warning("commit_failed", path=self.processor.path, error=f"{type(exc).__name__}: {exc}"[:200])
            return
        if self.on_committed:
            self.on_committed(len(records))

    def _report_lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is not None:
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    def _close(self) -> None:
        log.info("consumer_stopping", path=self.processor.path)
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("consumer_close_failed", error=str(exc)[:200])
