"""The relevance table a ranker materialises: latest score per (model version, normalised query, product).

Topic `relevance-table`, compacted with a 30-day delete retention (`worker.kafka_io.topic_specs`): the
key `[model_version, normalised query, product_id]` keeps one record per pair, and a pair nobody
scored again within the retention expires, so the table stays bounded by what is actually asked.
Three writers: impressions of query logs (`impression`), candidates asked for (`request`), and the
top-K of head queries over the whole catalogue (`top_k`, with its rank).

Head queries show the same products search after search: rewriting an unchanged pair on every search
would be most of the table's traffic and of the query path's publishing. `RecentRows` remembers what
this worker wrote lately; a pair whose score has not changed is written again only after
`QL_WORKER_TABLE_REWRITE_S` (its `scored_at` and its place in the 30-day retention refresh then).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from schemas import encode
from schemas.ranker import RelevanceEntry, normalise_query, table_key
from worker.outputs import Output
from worker.triton_client import PairScore
from worker.vector_matrix import Weights

Source = Literal["impression", "top_k", "request"]
MAX_RECENT_ROWS = 200_000
"""Pairs remembered (least recently written leave first), the head of a query stream: ~60 MB (200,000
rows of ~100-byte keys: ~42 MB for the entries and ~19 MB for the keys, measured by RSS)."""
SAME_SCORE = 1e-6  # Triton may batch a pair differently: the last float bits are not a change


def score_fields(score: PairScore, weights: Weights | None) -> dict[str, object]:
    """The fields of a scored pair in every record a ranker reads (`ProductScore`, `RelevanceEntry`):
    the calibrated score clamped to [0, 1], similarity, label, and the fusion weights of the
    product's embedding when its record had them."""
    return {
        "score": min(1.0, max(0.0, score.score)),
        "similarity": score.similarity,
        "label": score.label,
        "fusion_weights": None if weights is None else {"title": weights[0], "image": weights[1]},
    }


class RecentRows:
    """The table rows this worker wrote lately, by key: (score, when written)."""

    def __init__(self, rewrite_s: float, max_rows: int = MAX_RECENT_ROWS) -> None:
        self.rewrite_s, self.max_rows = rewrite_s, max_rows
        self.rows: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    @classmethod
    def every(cls, rewrite_s: float) -> RecentRows | None:
        """The memory for `QL_WORKER_TABLE_REWRITE_S`; None when it is 0 (every pair is written)."""
        return cls(rewrite_s) if rewrite_s > 0 else None

    def due(self, key: bytes, score: float) -> bool:
        """Whether the row must be written: new here, its score changed, or last written too long ago."""
        now = time.monotonic()
        last = self.rows.get(key)
        if last is not None and abs(last[0] - score) <= SAME_SCORE and now - last[1] < self.rewrite_s:
            return False
        self.rows[key] = (score, now)
        self.rows.move_to_end(key)
        if len(self.rows) > self.max_rows:
            self.rows.popitem(last=False)
        return True


def table_entries(
    topic: str,
    model_version: str,
    query: str,
    scores: Mapping[str, PairScore],
    source: Source,
    now: datetime,
    ranks: Mapping[str, int] | None = None,
    recent: RecentRows | None = None,
    weights: Mapping[str, Weights] | None = None,
) -> list[Output]:
    """One table record per scored product of one query (unless `recent` wrote the same lately), with
    the fusion weights of the product's embedding where `weights` has them."""
    normalised = normalise_query(query)
    if not normalised:
        return []
    outputs = []
    for product_id, score in scores.items():
        key = table_key(model_version, normalised, product_id)
        if recent is not None and not recent.due(key, score.score):
            continue
        entry = RelevanceEntry.model_validate(
            {
                "model_version": model_version,
                "query": normalised,
                "product_id": product_id,
                **score_fields(score, None if weights is None else weights.get(product_id)),
                "source": source,
                "rank": None if ranks is None else ranks.get(product_id),
                "scored_at": now,
            }
        )
        outputs.append(Output(topic, entry.key(), encode(entry)))
    return outputs
