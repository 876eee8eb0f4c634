"""Shadow scoring during a rollout: a sample of query logs scored by the candidate version too.

The candidate scores with its own ensembles (`RelevanceClient.for_version`) against its own
embedding state, exactly as it would once promoted; the serving scores are the ones the query path
just published. Each sampled query log becomes one `ShadowScores` record (topic `shadow-scores`,
key `query_id`); `worker.rollout.shadow_report` turns them into the numbers a promotion rests on.

The sample is a hash of the query id, so replays and other workers pick the same query logs.
Shadow scoring must never harm serving: any failure is logged and counted, the batch goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from schemas import QueryLog, ScoreLabel, encode
from schemas.lifecycle import ShadowPair, ShadowScores
from worker.embedding_state import EmbeddingState
from worker.observability import SHADOW_QUERY_LOGS
from worker.outputs import Output
from worker.triton_client import PairScore, RelevanceClient

log = structlog.get_logger()


def in_sample(query_id: str, share: float) -> bool:
    """Deterministic: the same query log is in or out of the sample on every worker and replay."""
    digest = hashlib.blake2b(query_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


class ShadowScorer:
    """Scores sampled query logs with a candidate version and publishes the comparison."""

    def __init__(
        self, client: RelevanceClient, state: EmbeddingState, serving_version: str, share: float, topic: str
    ) -> None:
        self.client = client
        self.state = state
        self.serving_version = serving_version
        self.candidate_version = state.version
        self.share = share
        self.topic = topic

    def compare(self, scored: Sequence[tuple[QueryLog, dict[str, PairScore]]]) -> list[Output]:
        """The `ShadowScores` records of the sampled events; [] (and a warning) if the candidate fails."""
        sampled = [(ev, serving) for ev, serving in scored if in_sample(ev.query_id, self.share)]
        if not sampled:
            return []
        try:
            self.state.follow(timeout_ms=0)
            candidate = self._candidate_scores([ev for ev, _ in sampled])
        except Exception as exc:  # the candidate is not serving: it must never stall or fail serving
            SHADOW_QUERY_LOGS.labels("failed").inc(len(sampled))
            log.warning(
                "shadow_scoring_failed", count=len(sampled), error=f"{type(exc).__name__}: {exc}"[:300]
            )
            return []
        now = datetime.now(UTC)
        outputs = [
            self._record(ev, serving, theirs, now)
            for (ev, serving), theirs in zip(sampled, candidate, strict=True)
        ]
        SHADOW_QUERY_LOGS.labels("compared").inc(len(outputs))
        return outputs

    def _candidate_scores(self, events: list[QueryLog]) -> list[dict[str, PairScore]]:
        matrix = self.state.matrix(self.candidate_version)
        pairs = [(n, imp.product_id) for n, ev in enumerate(events) for imp in ev.impressions]
        pairs = [(n, pid) for n, pid in pairs if pid in matrix]
        out: list[dict[str, PairScore]] = [{} for _ in events]
        if pairs:
            scores = self.client.query_relevance(
                [events[n].query for n, _ in pairs], matrix.rows([pid for _, pid in pairs])
            )
            for (n, pid), score in zip(pairs, scores, strict=True):
                out[n][pid] = score
        return out

    def _record(
        self, ev: QueryLog, serving: dict[str, PairScore], candidate: dict[str, PairScore], now: datetime
    ) -> Output:
        pairs = [  # product types are joined in by the report (the state keeps vectors only)
            ShadowPair(
                product_id=imp.product_id,
                position=imp.position,
                serving_score=_clamped(serving.get(imp.product_id)),
                candidate_score=_clamped(candidate.get(imp.product_id)),
                serving_label=_label(serving.get(imp.product_id)),
                candidate_label=_label(candidate.get(imp.product_id)),
            )
            for imp in ev.impressions
        ]
        record = ShadowScores(
            query_id=ev.query_id,
            event_id=ev.event_id,
            serving_version=self.serving_version,
            candidate_version=self.candidate_version,
            pairs=pairs,
            compared_at=now,
        )
        return Output(self.topic, record.key(), encode(record))


def _clamped(score: PairScore | None) -> float | None:
    return None if score is None else min(1.0, max(0.0, score.score))


def _label(score: PairScore | None) -> ScoreLabel | None:
    return None if score is None else ScoreLabel(score.label)
