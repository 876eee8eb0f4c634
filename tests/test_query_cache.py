"""The query-embedding cache gives the ensemble's scores on the real Triton, encodes each distinct
query once, and forgets the least recently used query first."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from harness.local_services import LocalTriton
from tests.conftest import SERVED_VERSION
from worker.config import TritonSettings
from worker.query_cache import QueryEmbeddingCache
from worker.triton_client import RelevanceClient


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("querylife_query_cache_total", {"outcome": outcome}) or 0.0


def test_cached_scores_equal_the_ensembles_and_repeats_hit(triton: LocalTriton) -> None:
    rng = np.random.default_rng(3)
    products = rng.standard_normal((6, 256)).astype(np.float32)
    queries = ["black tshirt", "Black  TSHIRT", "red shoes", "black tshirt", "watch for men", "red shoes"]
    cache = QueryEmbeddingCache(max_entries=2)
    with RelevanceClient(TritonSettings(url=triton.grpc_url, timeout_s=30), SERVED_VERSION) as client:
        expected = client.query_relevance(queries, products)
        hits, misses = counted("hit"), counted("miss")
        got = cache.scores(client, queries, products)
        # 3 distinct normalised queries, each encoded once (their repeats in the call cost nothing)
        assert (counted("miss") - misses, counted("hit") - hits) == (3.0, 0.0)
        np.testing.assert_allclose([s.score for s in got], [e.score for e in expected], atol=1e-5)
        np.testing.assert_allclose([s.similarity for s in got], [e.similarity for e in expected], atol=1e-5)
        assert [s.label for s in got] == [e.label for e in expected]
        # room for 2: "black tshirt" (least recently used) left when "watch for men" came
        assert list(cache.entries) == ["red shoes", "watch for men"]
        again = cache.scores(client, ["red shoes"], products[2:3])  # a hit: no encoding
        assert abs(again[0].score - expected[2].score) < 1e-5
        assert (counted("miss") - misses, counted("hit") - hits) == (3.0, 1.0)
        assert cache.scores(client, [], products[:0]) == []
