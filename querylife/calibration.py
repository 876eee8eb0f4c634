"""Score calibration: Platt scaling of cosine similarity + probability thresholds for label buckets.

Each threshold is chosen on validation pairs for a stated promise of the label it decides
(``LABEL_TARGETS``: a precision floor and a recall floor), so that a label means what it says on an
imbalanced set; the floors, what was reached and which rule chose the threshold are stored with the
calibration (``label_fits``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

CALIBRATION_VERSION = 1  # label semantics (p >= threshold) unchanged; new fields are optional
LABELS = ("irrelevant", "partial", "relevant", "exact")  # schemas.ScoreLabel values, by grade 0..3
THRESHOLD_METHOD = "precision_recall_floors"
LEGACY_METHOD = "balanced_accuracy"  # what a head.json without "method" used
MIN_NAMED = 30  # a precision measured on fewer named pairs is noise: such thresholds are never chosen

Side = Literal["above", "below"]
RULE_BOTH = "both floors met: largest smallest margin over the two floors"
RULE_PRECISION = "precision floor wins: recall floor missed"
RULE_NEITHER = "both floors missed: most precise threshold"


@dataclass(frozen=True)
class LabelTarget:
    """A label's stated promise on validation pairs.

    Boundary k (1..3) is ``thresholds[k - 1]``. ``side="above"``: the label names pairs with p >= t
    and claims grade >= k; ``"below"``: it names pairs with p < t and claims grade < k. Precision: of
    the named pairs, the share with the claimed grades; recall: of the pairs with those grades, the
    share named.
    """

    label: str
    boundary: int
    side: Side
    min_precision: float
    min_recall: float

    def claimed(self, grades: np.ndarray) -> np.ndarray:
        return grades >= self.boundary if self.side == "above" else grades < self.boundary

    def named(self, p: np.ndarray, threshold: float) -> np.ndarray:
        return p >= threshold if self.side == "above" else p < threshold


# The stated targets, one per boundary (the only place they are set; docs: README "The model").
# - exact: the target. A ranker shows "exact" as a promise, so precision comes first.
# - at least relevant (labels relevant + exact, grade >= 2): the binary relevance the Platt scale is
#   fitted on and what a ranker keeps when it filters. Wrongly keeping and wrongly dropping cost
#   about the same there, so both floors are equal; 0.7 is under the validation break-even point
#   of the committed head (precision = recall = 0.72, reports/model_labels.md headroom table).
# - irrelevant (grade 0): what a ranker may drop. The example (precision 0.95 at recall
#   0.8) is out of reach of the committed head: grades 0 and 1 differ by attributes the text rarely
#   resolves (best validation precision at recall 0.8 is 0.87; see the headroom table).
LABEL_TARGETS: tuple[LabelTarget, ...] = (
    LabelTarget("irrelevant", boundary=1, side="below", min_precision=0.85, min_recall=0.80),
    LabelTarget("at least relevant", boundary=2, side="above", min_precision=0.70, min_recall=0.70),
    LabelTarget("exact", boundary=3, side="above", min_precision=0.80, min_recall=0.50),
)


@dataclass(frozen=True)
class LabelFit:
    """A threshold chosen for a target, with what it reached on the pairs it was chosen on."""

    target: LabelTarget
    threshold: float
    precision: float
    recall: float
    precision_met: bool
    recall_met: bool
    rule: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelFit:
        t = d["target"]
        return cls(
            target=LabelTarget(
                label=str(t["label"]),
                boundary=int(t["boundary"]),
                side="below" if t["side"] == "below" else "above",
                min_precision=float(t["min_precision"]),
                min_recall=float(t["min_recall"]),
            ),
            threshold=float(d["threshold"]),
            precision=float(d["precision"]),
            recall=float(d["recall"]),
            precision_met=bool(d["precision_met"]),
            recall_met=bool(d["recall_met"]),
            rule=str(d["rule"]),
        )


@dataclass
class Calibration:
    """p = sigmoid(a * cos + b); label = LABELS[#thresholds <= p] (thresholds ascending, len 3)."""

    a: float = 10.0
    b: float = -5.0
    thresholds: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    version: int = CALIBRATION_VERSION
    fitted_on: int = 0  # number of (query, product) pairs
    method: str = "unfitted"
    label_fits: list[LabelFit] = field(default_factory=list)  # one per boundary, in boundary order
    replaced: dict[str, Any] | None = None  # {"method", "thresholds"} a threshold refit replaced

    def probability(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * cos + self.b)

    def label(self, probability: float) -> str:
        k = sum(1 for t in self.thresholds if probability >= t)
        return LABELS[k]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Reads every head.json so far: one without ``method`` used balanced-accuracy thresholds."""
        if int(d.get("version", 0)) != CALIBRATION_VERSION:
            raise ValueError(f"unsupported calibration version {d.get('version')}")
        replaced = d.get("replaced")
        return cls(
            a=float(d["a"]),
            b=float(d["b"]),
            thresholds=[float(x) for x in d["thresholds"]],
            version=int(d["version"]),
            fitted_on=int(d.get("fitted_on", 0)),
            method=str(d.get("method", LEGACY_METHOD)),
            label_fits=[LabelFit.from_dict(x) for x in d.get("label_fits", [])],
            replaced=dict(replaced) if replaced is not None else None,
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


def precision_recall_curve(
    p: np.ndarray, grades: np.ndarray, target: LabelTarget
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct threshold of ``p`` for ``target``: (threshold, precision, recall, named count).

    One sort, so all 800k validation pairs are scanned exactly (quantile grids miss a rare grade).
    """
    claimed = target.claimed(np.asarray(grades))
    n_claimed = int(claimed.sum())
    if n_claimed == 0:
        raise ValueError(f"no pair has the grades label {target.label!r} claims")
    p = np.asarray(p, dtype=np.float64)
    values, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse.ravel(), weights=claimed.ravel(), minlength=values.size)
    if target.side == "above":  # names p >= values[i]
        thr = values
        named = np.cumsum(counts[::-1])[::-1]
        tp = np.cumsum(hits[::-1])[::-1]
    else:  # names p < thr[i]; the last threshold names every pair
        thr = np.append(values, np.nextafter(values[-1], np.inf))
        named = np.concatenate(([0], np.cumsum(counts)))
        tp = np.concatenate(([0.0], np.cumsum(hits)))
    precision = np.where(named > 0, tp / np.maximum(named, 1), 0.0)
    return thr, precision, tp / n_claimed, named


def measure(p: np.ndarray, grades: np.ndarray, target: LabelTarget, threshold: float) -> tuple[float, float]:
    """(precision, recall) of ``target`` at ``threshold``; precision is 0 when nothing is named."""
    claimed = target.claimed(np.asarray(grades))
    named = target.named(np.asarray(p), threshold)
    tp = float((named & claimed).sum())
    return tp / max(int(named.sum()), 1), tp / max(int(claimed.sum()), 1)


def _fit(target: LabelTarget, threshold: float, precision: float, recall: float, rule: str) -> LabelFit:
    return LabelFit(
        target=target,
        threshold=float(threshold),
        precision=float(precision),
        recall=float(recall),
        precision_met=bool(precision >= target.min_precision),
        recall_met=bool(recall >= target.min_recall),
        rule=rule,
    )


def choose_threshold(p: np.ndarray, grades: np.ndarray, target: LabelTarget) -> LabelFit:
    """The threshold for one target, by the documented rule.

    1. Both floors reachable: of the thresholds meeting both, the one with the largest smallest
       margin (min(precision - floor, recall - floor)), so noise on unseen pairs is least likely to
       break either floor.
    2. Otherwise precision wins (a label must mean what it says; a missed recall floor only means
       fewer pairs get the label): the threshold with the highest recall among those meeting the
       precision floor; the missed recall floor is recorded.
    3. Neither reachable: the most precise threshold; both misses are recorded.
    Thresholds naming fewer than ``MIN_NAMED`` pairs are never chosen (precision there is noise).
    """
    thr, prec, rec, named = precision_recall_curve(p, grades, target)
    ok = named >= min(MIN_NAMED, int(named.max()))
    p_ok = ok & (prec >= target.min_precision)
    both = p_ok & (rec >= target.min_recall)
    if both.any():
        margin = np.minimum(prec - target.min_precision, rec - target.min_recall)
        i, rule = int(np.argmax(np.where(both, margin, -np.inf))), RULE_BOTH
    elif p_ok.any():
        i, rule = int(np.argmax(np.where(p_ok, rec, -np.inf))), RULE_PRECISION
    else:
        i, rule = int(np.argmax(np.where(ok, prec, -np.inf))), RULE_NEITHER
    return _fit(target, thr[i], prec[i], rec[i], rule)


def select_thresholds(
    p: np.ndarray, grades: np.ndarray, targets: tuple[LabelTarget, ...] = LABEL_TARGETS
) -> list[LabelFit]:
    """One fit per boundary 1..3, then ordered (partial <= relevant <= exact).

    A threshold below the one before it is raised to it and re-measured (its rule says so); with
    sane targets and data this does not happen.
    """
    by_boundary = sorted(targets, key=lambda t: t.boundary)
    if [t.boundary for t in by_boundary] != [1, 2, 3]:
        raise ValueError("label targets must set exactly one target per boundary 1, 2, 3")
    p, grades = np.asarray(p, dtype=np.float64).ravel(), np.asarray(grades).ravel()
    fits: list[LabelFit] = []
    for target in by_boundary:
        fit = choose_threshold(p, grades, target)
        if fits and fit.threshold < fits[-1].threshold:
            raised = fits[-1].threshold
            fit = _fit(target, raised, *measure(p, grades, target, raised), fit.rule + "; raised to order")
        fits.append(fit)
    return fits


def _probability(a: float, b: float, cos: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-(a * cos + b))))


def fit_calibration(
    cos: np.ndarray, grades: np.ndarray, targets: tuple[LabelTarget, ...] = LABEL_TARGETS
) -> Calibration:
    """Platt on binary relevance (grade >= 2), then one threshold per boundary for its target."""
    cos = np.asarray(cos, dtype=np.float64).ravel()
    grades = np.asarray(grades).ravel()
    a, b = fit_platt(cos, (grades >= 2).astype(np.float64))
    fits = select_thresholds(_probability(a, b, cos), grades, targets)
    return Calibration(
        a=a,
        b=b,
        thresholds=[f.threshold for f in fits],
        fitted_on=int(cos.size),
        method=THRESHOLD_METHOD,
        label_fits=fits,
    )


def refit_thresholds(
    calibration: Calibration,
    cos: np.ndarray,
    grades: np.ndarray,
    targets: tuple[LabelTarget, ...] = LABEL_TARGETS,
) -> Calibration:
    """New thresholds on the same Platt scale: scores stay identical, only labels move.

    Records the thresholds it replaced; refitting to the same thresholds keeps the earlier record,
    so the before/after of the first refit survives reruns.
    """
    cos = np.asarray(cos, dtype=np.float64).ravel()
    grades = np.asarray(grades).ravel()
    fits = select_thresholds(_probability(calibration.a, calibration.b, cos), grades, targets)
    thresholds = [f.threshold for f in fits]
    unchanged = thresholds == calibration.thresholds
    return replace(
        calibration,
        thresholds=thresholds,
        fitted_on=int(cos.size),
        method=THRESHOLD_METHOD,
        label_fits=fits,
        replaced=calibration.replaced
        if unchanged
        else {"method": calibration.method, "thresholds": list(calibration.thresholds)},
    )
