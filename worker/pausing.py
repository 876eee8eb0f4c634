"""Which partitions the consumer loop holds back, and how it waits without leaving its group.

Two kinds of partitions must not be consumed right now:

- *revoked*: given away by a rebalance while the loop held a batch of them (during a backoff): the
  new owner replays them from the committed offset, so the loop drops what it holds and commits none;
- *deferred*: assigned, but not taken over yet (the processor's state, e.g. the A/B partials, is not
  restored): kept paused; the take-over runs between batches, from the loop, never inside the
  rebalance callback, so it never races a batch in flight, and a failed one is retried with backoff.

A backoff waits by polling with every partition paused, so the group membership (heartbeats, the
poll interval) stays alive and nothing is fetched.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from worker.backoff import Backoff
from worker.observability import Liveness, forget_lag

log = structlog.get_logger()


class PartitionOwner(Protocol):
    """What takes partitions over (restores their state) and lets them go."""

    path: str

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: set[TopicPartition]) -> None: ...


def _names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(str(p) for p in partitions)


class PartitionPauser(ConsumerRebalanceListener):
    """The consumer's rebalance listener, its held partitions and its paused waits."""

    def __init__(
        self, consumer: KafkaConsumer, owner: PartitionOwner, liveness: Liveness, backoff: Backoff
    ) -> None:
        self.consumer = consumer
        self.owner = owner
        self.liveness = liveness
        self.backoff = backoff  # between failed take-overs
        self.revoked: set[TopicPartition] = set()
        self.deferred: set[TopicPartition] = set()
        self._take_over_at = 0.0

    # ------------------------------------------------------------------ rebalance callbacks
    def on_partitions_revoked(self, revoked: Any) -> None:
        parts = set(revoked)
        self.revoked |= parts
        self.deferred -= parts
        self.owner.on_revoked(parts)
        forget_lag(parts)
        log.info("partitions_revoked", path=self.owner.path, partitions=_names(parts))

    def on_partitions_assigned(self, assigned: Any) -> None:
        # only hold them here: `take_over_due` runs the take-over from the loop, between batches
        parts = set(assigned)
        self.revoked -= parts
        self._hold(parts, retry_in_s=0.0)

    # ------------------------------------------------------------------ take-overs
    def take_over_due(self) -> None:
        """Take the deferred partitions over if their (re)try is due; resume them once it worked."""
        if not self.deferred or time.monotonic() < self._take_over_at:
            return
        parts = {tp for tp in self.deferred if tp in self.consumer.assignment()}
        self.deferred = set()
        if not parts:
            return
        try:
            self.owner.on_assigned(parts)
            self._rewind_to_committed(parts)
        except Exception as exc:  # e.g. the broker went away while the A/B partials were read back
            delay = self.backoff.next()
            self._hold(parts, retry_in_s=delay)
            log.warning(
                "assignment_deferred",
                path=self.owner.path,
                partitions=_names(parts),
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=delay,
            )
            return
        self.backoff.reset()
        self.consumer.resume(*parts)
        log.info("partitions_assigned", path=self.owner.path, partitions=_names(parts))

    def _hold(self, partitions: set[TopicPartition], retry_in_s: float) -> None:
        """Keep partitions paused until they are taken over: consuming them with their state missing
        (e.g. A/B partials not restored) would write wrong aggregates."""
        self.deferred |= partitions
        with contextlib.suppress(Exception):
            self.consumer.pause(*partitions)
        self._take_over_at = time.monotonic() + retry_in_s

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

    # ------------------------------------------------------------------ records in hand
    def drop_held(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Drop the records in hand of partitions given away during a backoff, or given back but not
        taken over yet: their take-over rewinds to the committed offset, so they are read again."""
        held = self.revoked | self.deferred
        return [r for r in records if TopicPartition(r.topic, r.partition) not in held]

    def drop_revoked(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """A partition given away while its outputs were published is no longer ours to commit; one
        given back to us is (its outputs are acknowledged; its take-over reads them back after this)."""
        return [r for r in records if TopicPartition(r.topic, r.partition) not in self.revoked]

    # ------------------------------------------------------------------ waiting
    def wait(self, delay_s: float) -> None:
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
