"""A bounded cache of query embeddings, keyed by normalised query text (one cache per model version).

Real query streams repeat head queries (roughly Zipf), and the text tower is most of what scoring a
query log costs. With `QL_WORKER_QUERY_CACHE_SIZE` > 0 the query path encodes only the queries the
cache misses (the version's own `text_encoder` directory) and scores every pair with the version's
`relevance` model: the two steps of `query_relevance.<V>`, so scores are the ensemble's. The key is
`schemas.ranker.normalise_query` (the text tower is uncased and splits on whitespace, so the
normalised forms of a query encode alike). Least recently used entries leave first; hits and misses
are counted per distinct query of a batch in `querylife_query_cache_total{outcome}`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from schemas.ranker import normalise_query
from worker.observability import QUERY_CACHE
from worker.triton_client import PairScore, RelevanceClient


class QueryScorer(Protocol):
    """The two steps of `query_relevance`: a `RelevanceClient`, or the in-process model in a benchmark
    that gives it the very same cache."""

    def query_embeddings(self, queries: list[str]) -> np.ndarray: ...

    def pair_relevance(
        self, query_embeddings: np.ndarray, product_embeddings: np.ndarray
    ) -> list[PairScore]: ...


class QueryEmbeddingCache:
    """LRU of query embeddings of one model version; `scores` is a cached `query_relevance`."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("a query cache needs room for at least one query")
        self.max_entries = max_entries
        self.entries: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def of_size(cls, max_entries: int) -> QueryEmbeddingCache | None:
        """A cache of `max_entries` queries; None for 0 (every batch goes through the ensemble)."""
        return cls(max_entries) if max_entries else None

    def embeddings(self, client: QueryScorer, queries: list[str]) -> np.ndarray:
        """[n, D] query embeddings, encoding only the distinct queries not cached yet."""
        keys = [normalise_query(q) for q in queries]
        missing: dict[str, str] = {}
        for key, query in zip(keys, queries, strict=True):
            if key in self.entries:
                self.entries.move_to_end(key)
            elif key not in missing:
                missing[key] = query
        # per distinct query of the call: found in the cache (hit) or encoded now (miss)
        QUERY_CACHE.labels("miss").inc(len(missing))
        QUERY_CACHE.labels("hit").inc(len(set(keys)) - len(missing))
        found = dict(self.entries)
        if missing:
            encoded = client.query_embeddings(list(missing.values()))
            for key, vector in zip(missing, encoded, strict=True):
                found[key] = vector
                self.entries[key] = vector
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        return np.stack([found[k] for k in keys]) if keys else np.empty((0, 0), dtype=np.float32)

    def scores(self, client: QueryScorer, queries: list[str], products: np.ndarray) -> list[PairScore]:
        """Row-wise: pair i is (queries[i], products[i]), as `client.query_relevance` computes it."""
        if not queries:
            return []
        return client.pair_relevance(self.embeddings(client, queries), products)


def pair_scores(
    client: RelevanceClient, cache: QueryEmbeddingCache | None, queries: list[str], products: np.ndarray
) -> list[PairScore]:
    """Row-wise scores of (queries[i], products[i]): the `query_relevance` ensemble in one round trip,
    or, with a cache, its two steps with every query encoded at most once."""
    if cache is None:
        return client.query_relevance(queries, products)
    return cache.scores(client, queries, products)
