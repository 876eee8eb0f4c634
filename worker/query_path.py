"""Query path: query logs -> Triton `query_relevance` against the embeddings state -> scores + A/B metrics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from schemas import (
    ABMetrics,
    EventError,
    Impression,
    QueryLog,
    RelevanceScore,
    ScoreLabel,
    decode_event,
    encode,
)
from worker.ab_metrics import ABAggregator, WindowKey
from worker.config import Settings
from worker.embedding_state import EmbeddingState
from worker.inputs import decode_input
from worker.observability import TRITON_LATENCY, UNKNOWN_PRODUCTS
from worker.outputs import Output, dead_letter
from worker.state_reader import TopicReader
from worker.triton_client import RelevanceClient

log = structlog.get_logger()


class QueryProcessor:
    """Scores every impression of a batch of query logs in one Triton round trip; aggregates A/B."""

    path = "query"

    def __init__(self, settings: Settings, client: RelevanceClient, state: EmbeddingState) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.model_version = client.model_version()
        self.ab = ABAggregator(settings.worker.ab_window_s)

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        topics = self.settings.topics
        worker = self.settings.worker.name
        self.state.maybe_snapshot()  # between batches, so a snapshot is consistent; busy workers too
        outputs: list[Output] = []
        events: list[tuple[ConsumerRecord, QueryLog]] = []
        for rec in records:
            try:
                events.append((rec, decode_input(QueryLog, rec)))
            except EventError as exc:
                outputs.append(dead_letter(rec, exc, topics.dead_letter, worker))
        shown = {imp.product_id for _, ev in events for imp in ev.impressions}
        matrix = self.state.matrix(self.model_version)  # only this version's embeddings: never mixed
        unknown = self.state.wait_for(shown, self.settings.worker.unknown_product_wait_s, self.model_version)
        pairs = [
            (i, imp)
            for i, (_, ev) in enumerate(events)
            for imp in ev.impressions
            if imp.product_id not in unknown
        ]
        scored = []
        if pairs:
            with TRITON_LATENCY.labels("query_relevance").time():
                scored = self.client.query_relevance(
                    [events[i][1].query for i, _ in pairs],
                    matrix.rows([imp.product_id for _, imp in pairs]),
                )
        by_event: list[dict[str, float]] = [{} for _ in events]
        now = datetime.now(UTC)
        for (i, imp), result in zip(pairs, scored, strict=True):
            ev = events[i][1]
            by_event[i][imp.product_id] = result.score
            score = RelevanceScore(
                query_id=ev.query_id,
                event_id=ev.event_id,
                product_id=imp.product_id,
                variant=ev.variant,
                position=imp.position,
                score=min(1.0, max(0.0, result.score)),
                similarity=result.similarity,
                label=ScoreLabel(result.label),
                model_version=self.model_version,
                scored_at=now,
            )
            outputs.append(Output(topics.relevance_scores, score.key(), encode(score)))
        for rec, ev in events:
            missing = [imp for imp in ev.impressions if imp.product_id in unknown]
            for imp in missing:
                UNKNOWN_PRODUCTS.inc()
                report = RelevanceScore(
                    query_id=ev.query_id,
                    event_id=ev.event_id,
                    product_id=imp.product_id,
                    variant=ev.variant,
                    position=imp.position,
                    status="unknown_product",
                    model_version=self.model_version,
                    scored_at=now,
                )
                outputs.append(Output(topics.relevance_scores, report.key(), encode(report)))
            if missing:
                outputs.append(self._unknown_product_letter(rec, ev, missing))
        if unknown:
            log.warning("unknown_products", count=len(unknown), sample=sorted(unknown)[:5])
        touched: set[WindowKey] = set()
        for (rec, ev), scores in zip(events, by_event, strict=True):
            key = self.ab.add(ev, rec.partition, rec.offset, scores)
            if key is not None:
                touched.add(key)
        for key in sorted(touched):
            metrics = self.ab.record(key, self.model_version)
            outputs.append(Output(topics.ab_metrics, metrics.key(), encode(metrics)))
        return outputs

    def _unknown_product_letter(self, rec: ConsumerRecord, ev: QueryLog, missing: list[Impression]) -> Output:
        """The dead letter of a query log naming products without an embedding, beside its scores.

        The event is not dropped (its known products are scored and its A/B counts kept), but it was
        not fully processed: the letter puts it where operators look for inputs to inspect or replay
        once the catalogue has caught up (a replay overwrites scores and this letter, by key).
        """
        ids = sorted({imp.product_id for imp in missing})
        error = EventError(
            "unknown_product",
            f"{len(ids)} of {len(ev.impressions)} shown products have no embedding after "
            f"{self.settings.worker.unknown_product_wait_s:g} s (first: {', '.join(ids[:5])}); "
            "they were reported with status=unknown_product, the others scored and counted",
            "impressions",
        )
        return dead_letter(
            rec, error, self.settings.topics.dead_letter, self.settings.worker.name, ev.event_id
        )

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Restore the A/B partials of the partitions taken over, so nothing is counted twice."""
        owned = {tp.partition for tp in partitions}
        found: list[ABMetrics] = []

        def apply(rec: ConsumerRecord) -> None:
            if rec.value is None:
                return
            try:
                metrics = decode_event(ABMetrics, rec.value)
            except EventError:
                return
            if metrics.source_partition in owned:
                found.append(metrics)

        reader = TopicReader(self.settings.kafka, self.settings.topics.ab_metrics)
        try:
            # bounded below /healthz's 60 s: a slow read is retried by the loop, not a dead worker
            reader.read_to_end(apply, stall_s=30.0)
        finally:
            reader.close()
        self.ab.restore(found)
        log.info("ab_state_restored", partitions=sorted(owned), windows=len(found))

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.ab.drop_partitions({tp.partition for tp in partitions})

    def idle(self) -> None:
        self.state.follow(timeout_ms=0)
        self.state.maybe_snapshot()
