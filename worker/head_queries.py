"""Head queries' top-K over the whole catalogue, into the relevance table (`source=top_k`).

A ranker that only sees scores of products some earlier ranking showed never learns about new products
or products never ranked high (selection bias). For the most frequent queries (the top
`QL_WORKER_TOPK_QUERIES` by recent volume, counts halving every `QL_WORKER_TOPK_HALF_LIFE_S`), the query
worker searches the whole embedding state exactly (`VectorMatrix.nearest`: cosine over every product of
its version) for the `QL_WORKER_TOPK` nearest products, scores them with the version's own ensemble
(calibrated score and label) and writes them to the table with their rank. It refreshes at most every
`QL_WORKER_TOPK_REFRESH_S`, and only when the catalogue or the head queries changed, so a product
upserted after the last search that named a head query reaches the ranker before anyone has shown it.
"""

from __future__ import annotations

import time
from datetime import datetime

import structlog

from schemas.ranker import normalise_query
from worker.config import WorkerSettings
from worker.embedding_state import EmbeddingState
from worker.outputs import Output
from worker.relevance_table import table_entries
from worker.triton_client import PairScore, RelevanceClient, TritonRequestError

log = structlog.get_logger()
MAX_TRACKED = 10_000  # distinct queries counted at once; the least frequent half is dropped beyond it
QUERIES_PER_BATCH = 10
"""Head queries refreshed per query-log batch: a round of 50 is spread over 5 batches, so no batch of
query logs waits behind the whole round (it was a p99 tail of the query path)."""


class HeadQueries:
    """Recent volume per normalised query, and the top-K refresh of the most frequent ones."""

    def __init__(self, settings: WorkerSettings, client: RelevanceClient, state: EmbeddingState) -> None:
        self.top_m, self.k = settings.topk_queries, settings.topk
        self.refresh_s, self.half_life_s = settings.topk_refresh_s, settings.topk_half_life_s
        self.client, self.state = client, state
        self.counts: dict[str, float] = {}
        self._decayed_at = self._refreshed_at = time.monotonic()
        self._refreshed: tuple[list[str], int] = ([], -1)  # (head queries, state changes) last written
        self._round: tuple[list[str], int] = ([], -1)  # the round in progress
        self._pending: list[str] = []  # its queries not refreshed yet

    def observe(self, queries: list[str]) -> None:
        if self.top_m < 1:
            return
        self._decay()
        for query in queries:
            key = normalise_query(query)
            if key:
                self.counts[key] = self.counts.get(key, 0.0) + 1.0
        if len(self.counts) > MAX_TRACKED:
            keep = sorted(self.counts.items(), key=lambda kv: -kv[1])[: MAX_TRACKED // 2]
            self.counts = dict(keep)

    def head(self) -> list[str]:
        return [q for q, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_m]]

    def refresh(self, topic: str, now: datetime) -> list[Output]:
        """The table records of the next `QUERIES_PER_BATCH` head queries of a refresh round; a round
        starts when one is due and the head or the catalogue changed since the last one."""
        if self.top_m < 1 or (not self._pending and not self._start_round()):
            return []
        chunk, self._pending = self._pending[:QUERIES_PER_BATCH], self._pending[QUERIES_PER_BATCH:]
        try:
            outputs = self._top_k(chunk, topic, now)
        except TritonRequestError as exc:  # never hold query logs back for the table's extras
            log.warning("top_k_failed", queries=len(chunk), error=str(exc)[:300])
            self._pending = []  # the round is abandoned; the next one is due after refresh_s
            return []
        if not self._pending:
            self._refreshed = self._round
            log.info("top_k_refreshed", queries=len(self._round[0]))
        return outputs

    def _start_round(self) -> bool:
        if time.monotonic() - self._refreshed_at < self.refresh_s:
            return False
        head = self.head()
        self.state.follow(timeout_ms=0)  # the catalogue as it is now, not as of the last wait
        if not head or (head, self.state.changes) == self._refreshed:
            return False
        self._refreshed_at = time.monotonic()
        self._round, self._pending = (head, self.state.changes), list(head)
        return True

    def _top_k(self, head: list[str], topic: str, now: datetime) -> list[Output]:
        matrix = self.state.matrix(self.state.version)
        encoded = self.client.query_embeddings(head)
        nearest = matrix.nearest(encoded, self.k)
        pairs = [
            (n, query, pid, rank)
            for n, (query, found) in enumerate(zip(head, nearest, strict=True))
            for rank, (pid, _) in enumerate(found, 1)
        ]
        # the queries were just encoded: score the pairs with the version's `relevance` alone
        scores = self.client.pair_relevance(
            encoded[[n for n, _, _, _ in pairs]], matrix.rows([pid for _, _, pid, _ in pairs])
        )
        found_scores: dict[str, dict[str, PairScore]] = {}
        ranks: dict[str, dict[str, int]] = {}
        for (_, query, pid, rank), score in zip(pairs, scores, strict=True):
            found_scores.setdefault(query, {})[pid] = score
            ranks.setdefault(query, {})[pid] = rank
        version = self.state.version
        outputs = [
            out
            for query, by_id in found_scores.items()
            for out in table_entries(
                topic, version, query, by_id, "top_k", now, ranks[query], weights=matrix.fusion_weights(by_id)
            )
        ]
        return outputs

    def _decay(self) -> None:
        elapsed = time.monotonic() - self._decayed_at
        if elapsed < self.half_life_s / 10:
            return
        factor = 0.5 ** (elapsed / self.half_life_s)
        self.counts = {q: c * factor for q, c in self.counts.items() if c * factor >= 0.05}
        self._decayed_at = time.monotonic()
