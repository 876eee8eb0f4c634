"""Score calibration: Platt scaling of cosine similarity + probability thresholds for label buckets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

CALIBRATION_VERSION = 1
LABELS = ("irrelevant", "partial", "relevant", "exact")  # schemas.ScoreLabel values, by grade 0..3


@dataclass
class Calibration:
    """p = sigmoid(a * cos + b); label = LABELS[#thresholds <= p] (thresholds ascending, len 3)."""

    a: float = 10.0
    b: float = -5.0
    thresholds: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    version: int = CALIBRATION_VERSION
    fitted_on: int = 0  # number of (query, product) pairs

    def probability(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * cos + self.b)

    def label(self, probability: float) -> str:
        k = sum(1 for t in self.thresholds if probability >= t)
        return LABELS[k]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if int(d.get("version", 0)) != CALIBRATION_VERSION:
            raise ValueError(f"unsupported calibration version {d.get('version')}")
        return cls(
            a=float(d["a"]),
            b=float(d["b"]),
            thresholds=[float(x) for x in d["thresholds"]],
            version=int(d["version"]),
            fitted_on=int(d.get("fitted_on", 0)),
        )


def fit_platt(cos: np.ndarray, y: np.ndarray, steps: int = 200) -> tuple[float, float]:
    """Logistic regression of binary y on cos (Platt, with Platt's smoothed targets)."""
    x = torch.as_tensor(cos, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    n_pos, n_neg = float(yt.sum()), float((1 - yt).sum())
    t = torch.where(yt > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * x + b, t)
        loss.backward()
        return loss

    opt.step(closure)
    a_f, b_f = float(a.detach()), float(b.detach())
    if a_f <= 0:  # similarity must not decrease relevance; degenerate data -> flat slope
        a_f = 1e-3
    return a_f, b_f


def _best_threshold(p: np.ndarray, positive: np.ndarray) -> float:
    """Threshold maximising balanced accuracy of (p >= thr) vs positive."""
    if positive.all() or not positive.any():
        return 0.5
    cand = np.unique(np.quantile(p, np.linspace(0.005, 0.995, 199)))
    pos, neg = positive.sum(), (~positive).sum()
    best, best_thr = -1.0, 0.5
    for thr in cand:
        pred = p >= thr
        bal = 0.5 * ((pred & positive).sum() / pos + (~pred & ~positive).sum() / neg)
        if bal > best:
            best, best_thr = bal, float(thr)
    return best_thr


def fit_calibration(cos: np.ndarray, grades: np.ndarray) -> Calibration:
    """Platt on binary relevance (grade >= 2), then one threshold per grade boundary (monotone)."""
    cos = np.asarray(cos, dtype=np.float64)
    grades = np.asarray(grades)
    a, b = fit_platt(cos, (grades >= 2).astype(np.float64))
    p = 1 / (1 + np.exp(-(a * cos + b)))
    thr = [_best_threshold(p, grades >= k) for k in (1, 2, 3)]
    thr = list(np.maximum.accumulate(np.asarray(thr)))  # partial <= relevant <= exact
    return Calibration(a=a, b=b, thresholds=[float(t) for t in thr], fitted_on=int(cos.size))
