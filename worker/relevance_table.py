"""The relevance table a ranker materialises: latest score per (model version, normalised query, product).

Topic `relevance-table`, compacted with a 30-day delete retention (`worker.kafka_io.topic_specs`): the
key `[model_version, normalised query, product_id]` keeps one record per pair, and a pair nobody
scored again within the retention expires, so the table stays bounded by what is actually asked.
Three writers: impressions of query logs (`impression`), candidates asked for (`request`), and the
top-K of head queries over the whole catalogue (`top_k`, with its rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from schemas import encode
from schemas.ranker import RelevanceEntry, normalise_query
from worker.outputs import Output
from worker.triton_client import PairScore

Source = Literal["impression", "top_k", "request"]


def table_entries(
    topic: str,
    model_version: str,
    query: str,
    scores: Mapping[str, PairScore],
    source: Source,
    now: datetime,
    ranks: Mapping[str, int] | None = None,
) -> list[Output]:
    """One table record per scored product of one query."""
    normalised = normalise_query(query)
    if not normalised:
        return []
    outputs = []
    for product_id, score in scores.items():
        entry = RelevanceEntry.model_validate(
            {
                "model_version": model_version,
                "query": normalised,
                "product_id": product_id,
                "score": min(1.0, max(0.0, score.score)),
                "similarity": score.similarity,
                "label": score.label,
                "source": source,
                "rank": None if ranks is None else ranks.get(product_id),
                "scored_at": now,
            }
        )
        outputs.append(Output(topic, entry.key(), encode(entry)))
    return outputs
