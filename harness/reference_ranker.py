"""A reference search ranker: how a ranker uses the relevance contract (docs/deploying.md).

It materialises the relevance table (`querylife.relevance-table`, latest score per model version,
normalised query and product), looks its candidates up there, asks the request path
(`score-requests` -> `score-replies`) for the ones the table does not have, and re-ranks the candidate
list with relevance as the main feature and the original rank as the tie-break. The demo's variant B
is this ranker over variant A's candidates, so the A/B table shows what relevance changes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from itertools import count

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from schemas import decode_event, encode
from schemas.ranker import RelevanceEntry, ScoreReply, ScoreRequest, normalise_query, table_key
from worker.config import Settings
from worker.kafka_io import make_consumer, make_producer


class ReferenceRanker:
    """Relevance for (query, candidates): from the table, else by request; then a re-ranked list."""

    def __init__(self, settings: Settings, model_version: str, name: str = "reference-ranker") -> None:
        self.settings, self.version, self.name = settings, model_version, name
        self.table: dict[bytes, float] = {}
        self.asked = self.from_table = 0
        self._ids = count()
        self._producer = make_producer(settings.kafka, linger_ms=0)
        self._table = self._follow(settings.topics.relevance_table, from_start=True)
        self._replies = self._follow(settings.topics.score_replies, from_start=False)

    def _follow(self, topic: str, from_start: bool) -> KafkaConsumer:
        consumer = make_consumer(self.settings.kafka, None, fetch_max_wait_ms=5)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        if from_start:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        return consumer

    def scores(self, query: str, candidates: list[str], timeout_s: float = 5.0) -> dict[str, float | None]:
        """Each candidate's calibrated relevance (None: no embedding of the served version)."""
        self._read_table()
        normalised = normalise_query(query)
        found: dict[str, float | None] = {}
        for pid in candidates:
            score = self.table.get(table_key(self.version, normalised, pid))
            if score is not None:
                found[pid] = score
        self.from_table += len(found)
        missing = [pid for pid in candidates if pid not in found]
        if missing:
            found |= self._ask(query, missing, timeout_s)
        return found

    def rerank(self, query: str, candidates: list[str], keep: int) -> list[str]:
        """The `keep` best candidates by relevance (unknown ones last), the original order breaking ties."""
        scores = self.scores(query, candidates)
        order = sorted(range(len(candidates)), key=lambda i: (-(scores.get(candidates[i]) or -1.0), i))
        return [candidates[i] for i in order[:keep]]

    def _read_table(self) -> None:
        for records in self._table.poll(timeout_ms=0).values():
            for rec in records:
                if rec.key is not None and rec.value is not None:
                    self.table[rec.key] = decode_event(RelevanceEntry, rec.value).score

    def _ask(self, query: str, candidates: list[str], timeout_s: float) -> dict[str, float | None]:
        request = ScoreRequest(
            request_id=f"{self.name}-{next(self._ids)}",
            reply_key=f"{self.name}-{next(self._ids)}",
            query=query,
            candidates=candidates,
            model_version=self.version,
            sent_at=datetime.now(UTC),
            timeout_ms=int(timeout_s * 1000),
        )
        self._producer.send(
            self.settings.topics.score_requests, key=request.reply_key.encode(), value=encode(request)
        )
        self._producer.flush(timeout_s)
        self.asked += len(candidates)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in self._replies.poll(timeout_ms=50).values():
                for rec in records:
                    if rec.key == request.reply_key.encode() and rec.value is not None:
                        reply = decode_event(ScoreReply, rec.value)
                        return {s.product_id: s.score for s in reply.scores}
        return dict.fromkeys(candidates)  # no answer in time: ranked as unknown

    def close(self) -> None:
        self._producer.close(timeout=5)
        self._table.close()
        self._replies.close()
