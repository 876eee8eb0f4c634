"""Request path: a ranker's candidates scored at request time (`score-requests` -> `score-replies`).

The path a ranker uses before it shows anything: new products and products no ranking ever showed get
a score too (no selection bias). One `ScoreRequest` names a query and up to 200 candidate ids; the
answer is one `ScoreReply` keyed by the request's `reply_key`, every candidate in the request's order,
scored by the version this worker serves or reported `unknown_product` (no embedding of this version):
never silently dropped. A request older than its `timeout_ms` when it is reached is answered `expired`
(the ranker has moved on; scoring it would only add load). A request pinning another version than the
one served is dead-lettered (`model_version_not_served`): a worker never answers for a model it does not
run. Each scored candidate also refreshes the relevance table (`source=request`).

Latency over batching: the request path polls with `QL_WORKER_REQUEST_BATCH_MAX_WAIT_MS` (default 5 ms)
and never waits for the embedding state to catch up. The text tower is most of a request's Triton
time (text_encoder 16-18 ms, the ensemble 19-32 ms: `benchmarks.ranker_latency`), and a ranker asks
about the same head queries again and again: with `QL_WORKER_REQUEST_QUERY_CACHE_SIZE` > 0 (default
10,000 queries, ~10 MB) a query is encoded once and kept, and its pairs are scored by the version's
`relevance` model (`worker.query_cache`; the same scores as the ensemble). A batch's replies are
handed to the producer before its table rows, so no reply waits behind another request's rows. The state is
followed at most every `FOLLOW_EVERY_S` (100 ms): each follow costs 1.3-2.3 ms of kafka-python
(profiled), which every batch and every idle poll paid before. The price: a product embedded in the
last 100 ms may still be answered `unknown_product` (the path never waited for the state anyway).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from schemas import EventError, encode
from schemas.ranker import ProductScore, ScoreReply, ScoreRequest
from worker.config import Settings
from worker.embedding_state import EmbeddingState
from worker.inputs import decode_input
from worker.observability import TRITON_LATENCY
from worker.outputs import Output, dead_letter
from worker.query_cache import QueryEmbeddingCache, pair_scores
from worker.relevance_table import RecentRows, score_fields, table_entries
from worker.triton_client import PairScore, RelevanceClient
from worker.vector_matrix import Weights

FOLLOW_EVERY_S = 0.1


class RequestProcessor:
    """Answers a batch of score requests with one Triton round trip (two when a query is new)."""

    path = "request"

    def __init__(self, settings: Settings, client: RelevanceClient, state: EmbeddingState) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.model_version = client.model_version()
        if state.version != self.model_version:
            raise ValueError(f"state of {state.version} given to a request path of {self.model_version}")
        self.cache = QueryEmbeddingCache.of_size(settings.worker.request_query_cache_size)
        self.recent_rows = RecentRows.every(settings.worker.table_rewrite_s)  # the same candidates, again
        self._followed_at = 0.0

    def process(self, records: Sequence[ConsumerRecord]) -> list[Output]:
        self._follow()
        now = datetime.now(UTC)
        outputs: list[Output] = []
        live: list[ScoreRequest] = []
        for rec in records:
            request = self._decode(rec, outputs)
            if request is None:
                continue
            if now - request.sent_at > timedelta(milliseconds=request.timeout_ms):
                outputs.append(self._reply(request, "expired", [], now))
            else:
                live.append(request)
        scores = self._score(live)
        matrix = self.state.matrix(self.model_version)
        weights = [matrix.fusion_weights(found) for found in scores]
        for request, found, fw in zip(live, scores, weights, strict=True):
            answers = [self._answer(pid, found.get(pid), fw.get(pid)) for pid in request.candidates]
            outputs.append(self._reply(request, "ok", answers, now))
        table, version = self.settings.topics.relevance_table, self.model_version
        for request, found, fw in zip(live, scores, weights, strict=True):  # after every reply
            rows = table_entries(
                table, version, request.query, found, "request", now, recent=self.recent_rows, weights=fw
            )
            outputs.extend(rows)
        return outputs

    def _decode(self, rec: ConsumerRecord, outputs: list[Output]) -> ScoreRequest | None:
        topics, worker = self.settings.topics, self.settings.worker.name
        try:
            request = decode_input(ScoreRequest, rec)
        except EventError as exc:
            outputs.append(dead_letter(rec, exc, topics.dead_letter, worker))
            return None
        if request.model_version not in (None, self.model_version):
            error = EventError(
                "model_version_not_served",
                f"pinned {request.model_version}; this worker serves {self.model_version}",
                "model_version",
            )
            outputs.append(dead_letter(rec, error, topics.dead_letter, worker, request.request_id))
            return None
        return request

    def _score(self, requests: list[ScoreRequest]) -> list[dict[str, PairScore]]:
        """Each request's scores by candidate id, for the candidates this version has embedded."""
        matrix = self.state.matrix(self.model_version)
        pairs = [(n, pid) for n, r in enumerate(requests) for pid in r.candidates if pid in matrix]
        out: list[dict[str, PairScore]] = [{} for _ in requests]
        if pairs:
            queries = [requests[n].query for n, _ in pairs]
            products = matrix.rows([pid for _, pid in pairs])
            with TRITON_LATENCY.labels("query_relevance").time():
                scores = pair_scores(self.client, self.cache, queries, products)
            for (n, pid), score in zip(pairs, scores, strict=True):
                out[n][pid] = score
        return out

    @staticmethod
    def _answer(product_id: str, score: PairScore | None, weights: Weights | None) -> ProductScore:
        """A candidate scored (with the fusion weights of its embedding, when its record had them),
        or reported unknown."""
        if score is None:
            return ProductScore(product_id=product_id, status="unknown_product")
        return ProductScore.model_validate({"product_id": product_id, **score_fields(score, weights)})

    def _reply(self, request: ScoreRequest, status: str, scores: list[ProductScore], now: datetime) -> Output:
        reply = ScoreReply.model_validate(
            {
                "request_id": request.request_id,
                "reply_key": request.reply_key,
                "status": status,
                "model_version": self.model_version,
                "scores": scores,
                "replied_at": now,
            }
        )
        return Output(self.settings.topics.score_replies, reply.key(), encode(reply))

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        return None

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    def idle(self) -> None:
        self._follow()

    def _follow(self) -> None:
        """Apply what has arrived in the state; never a wait: the ranker is waiting."""
        if time.monotonic() - self._followed_at >= FOLLOW_EVERY_S:
            self.state.follow(timeout_ms=0)
            self._followed_at = time.monotonic()
