"""Paired bootstrap intervals and minimum detectable effects for per-query metric deltas.

Two heads scored on the same queries are compared query by query (paired): the interval is on the
mean of per-query differences, resampling queries with replacement, so the spread of query
difficulty, which both heads share, does not widen it.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Interval:
    """Mean paired delta and its percentile bootstrap interval."""

    delta: float
    lo: float
    hi: float

    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0

    def verdict(self) -> str:
        """ "helps", "hurts" or "no detectable effect", as the interval says."""
        if not self.excludes_zero():
            return "no detectable effect"
        return "helps" if self.delta > 0 else "hurts"


def paired_bootstrap(
    a: ArrayLike, b: ArrayLike, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Interval of mean(a - b) over queries; ``a`` and ``b`` are per-query scores of the same queries."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-d score arrays")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(d.mean()), float(lo), float(hi))


def min_detectable_effect(deltas: ArrayLike, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean delta a two-sided test at ``alpha`` finds with ``power``, given the per-query
    spread of paired deltas: (z_{1-alpha/2} + z_power) * sd / sqrt(n)."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    return float(z * d.std(ddof=1) / np.sqrt(d.size))
