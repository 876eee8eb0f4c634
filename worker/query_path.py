"""Query path: query logs -> Triton `query_relevance` against the embeddings state -> one `QueryScores`
per query log, relevance-table rows and A/B unit totals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from schemas import (
    ABMetricsV2,
    EventError,
    Impression,
    QueryLog,
    decode_event,
    encode,
)
from schemas.ranker import ImpressionScore, QueryScores, normalise_query
from worker.ab_metrics import UnitAggregator
from worker.config import Settings
from worker.embedding_state import EmbeddingState
from worker.experiments import load_experiments
from worker.head_queries import HeadQueries
from worker.inputs import decode_input
from worker.isolation import Isolator, Poison
from worker.observability import TRITON_LATENCY, UNKNOWN_PRODUCTS
from worker.outputs import Output, dead_letter
from worker.query_cache import QueryEmbeddingCache, pair_scores
from worker.relevance_table import RecentRows, score_fields, table_entries
from worker.shadow import ShadowScorer
from worker.state_reader import TopicReader
from worker.triton_client import PairScore, RelevanceClient
from worker.vector_matrix import VectorMatrix, Weights

log = structlog.get_logger()


class QueryProcessor:
    """Scores every impression of a batch of query logs in one Triton round trip; aggregates A/B."""

    path = "query"

    def __init__(
        self,
        settings: Settings,
        client: RelevanceClient,
        state: EmbeddingState,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.shadow = shadow  # a rollout's candidate, scoring a sample beside this version
        self.model_version = client.model_version()
        if state.version != self.model_version:
            raise ValueError(f"state of {state.version} given to a query path of {self.model_version}")
        self.head = HeadQueries(settings.worker, client, state)
        self.cache = QueryEmbeddingCache.of_size(settings.worker.query_cache_size)
        self.recent_rows = RecentRows.every(settings.worker.table_rewrite_s)
        worker = settings.worker
        self.ab = UnitAggregator(
            worker.ab_window_s, worker.event_time_grace_s, load_experiments(worker.experiments_file)
        )
        self.isolator: Isolator[QueryLog, dict[str, PairScore]] = Isolator.from_settings(
            settings.triton, self._canary
        )

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        self.state.maybe_snapshot()  # between batches, so a snapshot is consistent; busy workers too
        outputs, events = self._decode(records)
        shown = {imp.product_id for _, ev in events for imp in ev.impressions}
        matrix = self.state.matrix(self.model_version)  # only this version's embeddings: never mixed
        newest_ms = max((rec.timestamp for rec, _ in events), default=None)  # CreateTime of the newest log
        unknown = self.state.wait_for(
            shown, self.settings.worker.unknown_product_wait_s, self.model_version, newest_ms
        )
        if unknown:
            log.warning("unknown_products", count=len(unknown), sample=sorted(unknown)[:5])
        now = datetime.now(UTC)
        counted: list[tuple[ConsumerRecord, QueryLog, dict[str, float]]] = []
        scored: list[tuple[QueryLog, dict[str, PairScore]]] = []
        for (rec, ev), result in zip(events, self._score(events, matrix, unknown), strict=True):
            if isinstance(result, Poison):  # Triton fails it every time: a letter, no scores, no A/B
                error = EventError(result.reason, result.message, "query")
                outputs.append(
                    dead_letter(rec, error, self.settings.topics.dead_letter, self._worker, ev.event_id)
                )
                continue
            outputs.extend(self._ranker_outputs(ev, result, unknown, now))
            missing = [imp for imp in ev.impressions if imp.product_id in unknown]
            if missing:
                UNKNOWN_PRODUCTS.inc(len(missing))
                outputs.append(self._unknown_product_letter(rec, ev, missing))
            counted.append((rec, ev, {pid: r.score for pid, r in result.items()}))
            scored.append((ev, result))
        outputs.extend(self._ab_outputs(counted))
        self.head.observe([ev.query for _, ev in events])
        outputs.extend(self.head.refresh(self.settings.topics.relevance_table, now))
        if self.shadow is not None:
            outputs.extend(self.shadow.compare(scored))
        return outputs

    @property
    def _worker(self) -> str:
        return self.settings.worker.name

    def _decode(
        self, records: Sequence[ConsumerRecord]
    ) -> tuple[list[Output], list[tuple[ConsumerRecord, QueryLog]]]:
        """The batch's valid query logs, and a dead letter for every other record."""
        letters: list[Output] = []
        events: list[tuple[ConsumerRecord, QueryLog]] = []
        for rec in records:
            event: QueryLog | None = None
            try:
                event = decode_input(QueryLog, rec)
                self.ab.check_event_time(event, rec)  # out of bounds: a letter, no scores, no A/B
                events.append((rec, event))
            except EventError as exc:
                event_id = event.event_id if event is not None else None
                topic = self.settings.topics.dead_letter
                letters.append(dead_letter(rec, exc, topic, self._worker, event_id))
        return letters, events

    def _score(
        self, events: list[tuple[ConsumerRecord, QueryLog]], matrix: VectorMatrix, unknown: set[str]
    ) -> list[dict[str, PairScore] | Poison]:
        """Each event's scores by product (its known products), or `Poison` if Triton fails it alone."""

        def call(batch: Sequence[QueryLog], timeout_s: float | None) -> list[dict[str, PairScore]]:
            client = self.client if timeout_s is None else self.client.with_timeout(timeout_s)
            pairs = [(n, imp.product_id) for n, ev in enumerate(batch) for imp in ev.impressions]
            pairs = [(n, pid) for n, pid in pairs if pid not in unknown]
            out: list[dict[str, PairScore]] = [{} for _ in batch]
            if pairs:
                queries, products = [batch[n].query for n, _ in pairs], matrix.rows([pid for _, pid in pairs])
                with TRITON_LATENCY.labels("query_relevance").time():
                    scores = pair_scores(client, self.cache, queries, products)
                for (n, pid), score in zip(pairs, scores, strict=True):
                    out[n][pid] = score
            return out

        return self.isolator.run([ev for _, ev in events], call)

    def _canary(self, timeout_s: float) -> None:
        """A request known to be valid (a unit vector, a one-word query): does Triton answer in time?"""
        unit = np.zeros((1, self.state.dim), dtype=np.float32)
        unit[0, 0] = 1.0
        self.client.with_timeout(timeout_s).query_relevance(["canary"], unit)

    def _ranker_outputs(
        self, ev: QueryLog, scores: dict[str, PairScore], unknown: set[str], now: datetime
    ) -> list[Output]:
        """The search as one `QueryScores` record (with the fusion weights that made each product's
        embedding), and its scored pairs into the relevance table."""
        topics = self.settings.topics
        weights = self.state.matrix(self.model_version).fusion_weights(scores)
        impressions = [
            ImpressionScore.model_validate(
                {
                    "product_id": imp.product_id,
                    "position": imp.position,
                    "clicked": imp.clicked,
                    "ordered": imp.ordered,
                    **_score_fields(scores.get(imp.product_id), weights.get(imp.product_id)),
                }
            )
            for imp in ev.impressions
            if imp.product_id in scores or imp.product_id in unknown
        ]
        if not impressions:
            return []
        record = QueryScores(
            query_id=ev.query_id,
            event_id=ev.event_id,
            event_time=ev.event_time,
            query=ev.query,
            normalised_query=normalise_query(ev.query),
            experiment_id=ev.experiment_id,
            variant=ev.variant,
            user_id=ev.user_id,
            session_id=ev.session_id,
            query_model_version=self.model_version,
            embedding_model_version=self.state.version,
            impressions=impressions,
            scored_at=now,
        )
        table_topic, version, recent = topics.relevance_table, self.model_version, self.recent_rows
        table = table_entries(
            table_topic, version, ev.query, scores, "impression", now, recent=recent, weights=weights
        )
        return [Output(topics.query_scores, record.key(), encode(record)), *table]

    def _ab_outputs(self, counted: list[tuple[ConsumerRecord, QueryLog, dict[str, float]]]) -> list[Output]:
        """Add the events to their units' A/B windows: the updated totals, and beside its scores a
        letter for each event not counted (late, undeclared experiment, no unit id)."""
        topics = self.settings.topics
        outputs, refused = self.ab.count(counted, self.model_version, topics.ab_units)
        for i, error in refused.items():
            rec, ev, _ = counted[i]
            outputs.append(dead_letter(rec, error, topics.dead_letter, self._worker, ev.event_id))
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
        """Restore the open A/B windows of the partitions taken over, so nothing is counted twice."""
        owned = {tp.partition for tp in partitions}
        found: list[ABMetricsV2] = []
        horizon: dict[int, datetime] = {}

        def apply(rec: ConsumerRecord) -> None:
            if rec.value is None or not self.ab.wants(rec.key, owned, horizon):
                return
            try:
                found.append(decode_event(ABMetricsV2, rec.value))
            except EventError:
                return

        reader = TopicReader(self.settings.kafka, self.settings.topics.ab_units)
        try:
            # bounded below /healthz's 60 s: a slow read is retried by the loop, not a dead worker
            reader.read_to_end(apply, stall_s=30.0)
        finally:
            reader.close()
        restored = self.ab.restore(found, owned)
        log.info("ab_state_restored", partitions=sorted(owned), records=len(found), windows=restored)

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.ab.drop_partitions({tp.partition for tp in partitions})

    def idle(self) -> None:
        self.state.follow(timeout_ms=0)
        self.state.maybe_snapshot()
        if self.shadow is not None:
            self.shadow.state.follow(timeout_ms=0)


def _score_fields(score: PairScore | None, weights: Weights | None) -> dict[str, object]:
    """A `ProductScore`'s fields for a pair scored (with the product's fusion weights when its
    embedding record had them), or for a product without an embedding."""
    return {"status": "unknown_product"} if score is None else score_fields(score, weights)
