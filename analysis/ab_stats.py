"""A/B statistics by randomisation unit: delta-method means and lifts, SRM, always-valid intervals.

Why by unit: impressions of one search, and searches of one user, are correlated (a user who clicks,
clicks again), so treating impressions as independent Bernoulli trials understates the variance by
the design effect and declares A/A tests "significant" far more often than alpha. The unit (user,
session or query, as `Experiment.unit` declares) is what was randomised, so units are the independent
observations. Every metric here is a ratio of two per-unit totals (clicks/impressions, ...) and its
variance comes from the delta method over units. See docs/ab_analysis.md for the formulas.

Input: one row per unit with its variant and additive totals (`UnitTotals`). `sum_unit_totals`
builds it from `ABMetricsV2` records, summing a unit's windows (and partitions, and model versions)
over the analysed range FIRST: squares of totals do not add across windows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import NDArray
from scipy import special

from schemas.experiments import ABMetricsV2, Experiment

FloatArray = NDArray[np.float64]

TOTAL_FIELDS: tuple[str, ...] = (
    "searches",
    "searches_with_order",
    "impressions",
    "clicks",
    "orders",
    "scored_impressions",
    "relevance_sum_shown",
    "scored_clicks",
    "relevance_sum_clicked",
    "scored_top3",
    "relevance_sum_top3",
)
"""The additive fields of `ABMetricsV2`: the only ones that may be summed over windows."""

METRICS: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "impressions"),
    "conversion": ("searches_with_order", "searches"),
    "relevance_shown": ("relevance_sum_shown", "scored_impressions"),
    "relevance_clicked": ("relevance_sum_clicked", "scored_clicks"),
    "relevance_top3": ("relevance_sum_top3", "scored_top3"),
}
"""metric -> (numerator total, denominator total). Every metric is a ratio of sums over units."""

BINOMIAL_METRICS = frozenset({"ctr", "conversion"})
"""Metrics whose numerator counts successes among denominator trials (a naive binomial variance exists)."""

MIN_UNITS = 100
"""Below this many units with data in an arm, the normal approximation is not trusted (a note is set)."""

SRM_THRESHOLD = 1e-3
"""SRM is flagged when the chi-square p-value is below this (GrowthBook's rule): the test runs on every
look, so a strict threshold keeps false alarms rare, and a real assignment bug gives tiny p-values."""

DEFAULT_PLANNED_UNITS = 5000
"""Tuning of the sequential interval: it is narrowest near this many units (both arms together).
Must be fixed before the experiment starts, never chosen from the data (GrowthBook's default)."""


@dataclass(frozen=True)
class Interval:
    """A two-sided interval; unbounded values allowed (a lift can be negative)."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class UnitTotals:
    """One row per randomisation unit: its variant and its additive totals (columns as float arrays).

    `excluded_units` were seen in more than one variant (a broken assignment): they are left out of
    every statistic, since they belong to no arm, and counted in the report.
    """

    unit_ids: NDArray[np.str_]
    variants: NDArray[np.str_]
    totals: Mapping[str, FloatArray]
    excluded_units: tuple[str, ...] = ()
    unit_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.variants)
        if len(self.unit_ids) != n:
            raise ValueError("unit_ids and variants differ in length")
        for name in TOTAL_FIELDS:
            if name not in self.totals:
                raise ValueError(f"missing total {name!r}")
            if self.totals[name].shape != (n,):
                raise ValueError(f"total {name!r} has shape {self.totals[name].shape}, expected ({n},)")

    @classmethod
    def from_arrays(
        cls,
        variants: Sequence[str] | NDArray[np.str_],
        unit_ids: Sequence[str] | None = None,
        **totals: Sequence[float] | FloatArray,
    ) -> UnitTotals:
        """Columns given directly (simulations, other sources); omitted totals are zero."""
        unknown = set(totals) - set(TOTAL_FIELDS)
        if unknown:
            raise ValueError(f"unknown totals {sorted(unknown)}")
        v = np.asarray(variants, dtype=np.str_)
        ids = np.arange(len(v)).astype(np.str_) if unit_ids is None else np.asarray(unit_ids, dtype=np.str_)
        cols = {
            name: np.asarray(totals[name], dtype=np.float64) if name in totals else np.zeros(len(v))
            for name in TOTAL_FIELDS
        }
        return cls(unit_ids=ids, variants=v, totals=cols)

    def __len__(self) -> int:
        return len(self.variants)

    def units_per_variant(self) -> dict[str, int]:
        names, counts = np.unique(self.variants, return_counts=True)
        return {str(k): int(c) for k, c in zip(names, counts, strict=True)}

    def subset(self, mask: NDArray[np.bool_]) -> UnitTotals:
        """The units where `mask` is true (e.g. the units that had arrived by a given look)."""
        return UnitTotals(
            unit_ids=self.unit_ids[mask],
            variants=self.variants[mask],
            totals={k: v[mask] for k, v in self.totals.items()},
            excluded_units=self.excluded_units,
            unit_kinds=self.unit_kinds,
        )


def sum_unit_totals(
    records: Iterable[ABMetricsV2],
    experiment_id: str | None,
    start: datetime | None = None,
    end: datetime | None = None,
    model_version: str | None = None,
) -> UnitTotals:
    """Sum `ABMetricsV2` records per (unit_id, variant) of one experiment, over windows in [start, end).

    Only whole windows count (window_start >= start, window_end <= end). Records read from the topic
    before compaction may repeat a key with older totals of the same window: only the one with the
    highest `last_offset` (then the latest `emitted_at`) is kept, so nothing is counted twice.
    Partitions and model versions of one unit are summed (pass `model_version` to keep one).
    A unit found in two variants is excluded and listed in `excluded_units`.
    """
    latest: dict[bytes, ABMetricsV2] = {}
    for rec in records:
        if rec.experiment_id != experiment_id:
            continue
        if start is not None and rec.window_start < start:
            continue
        if end is not None and rec.window_end > end:
            continue
        if model_version is not None and rec.model_version != model_version:
            continue
        key = rec.key()
        seen = latest.get(key)
        if seen is None or (rec.last_offset, rec.emitted_at) > (seen.last_offset, seen.emitted_at):
            latest[key] = rec

    sums: dict[tuple[str, str], list[float]] = {}
    variants_of: dict[str, set[str]] = {}
    kinds: set[str] = set()
    for rec in latest.values():
        row = sums.setdefault((rec.unit_id, rec.variant), [0.0] * len(TOTAL_FIELDS))
        for i, name in enumerate(TOTAL_FIELDS):
            row[i] += float(getattr(rec, name))
        variants_of.setdefault(rec.unit_id, set()).add(rec.variant)
        kinds.add(rec.unit)

    excluded = tuple(sorted(u for u, vs in variants_of.items() if len(vs) > 1))
    bad = set(excluded)
    keys = sorted(k for k in sums if k[0] not in bad)
    matrix = np.array([sums[k] for k in keys], dtype=np.float64).reshape(len(keys), len(TOTAL_FIELDS))
    return UnitTotals(
        unit_ids=np.array([k[0] for k in keys], dtype=np.str_),
        variants=np.array([k[1] for k in keys], dtype=np.str_),
        totals={name: matrix[:, i].copy() for i, name in enumerate(TOTAL_FIELDS)},
        excluded_units=excluded,
        unit_kinds=tuple(sorted(kinds)),
    )


@functools.lru_cache(maxsize=64)
def _z(alpha: float) -> float:
    """Two-sided standard normal quantile z_{1-alpha/2}."""
    return float(special.ndtri(1 - alpha / 2))


def _normal_cdf(x: float) -> float:
    return float(special.ndtr(x))


@dataclass(frozen=True)
class RatioEstimate:
    """Mean of a ratio metric in one arm, sum(num)/sum(den) over units, with its delta-method variance.

    `n_units` counts units with a positive denominator (the others carry no information on this
    metric). `relative_unit_variance` is n * Var(mean) / mean^2, the per-unit squared coefficient of
    variation that sizes experiments (see `lift_power`). `design_effect` (binomial metrics only) is
    Var(mean) by unit over the naive binomial variance mean*(1-mean)/sum(den).
    """

    metric: str
    variant: str
    n_units: int
    numerator: float
    denominator: float
    mean: float
    variance: float
    ci: Interval
    relative_unit_variance: float
    design_effect: float | None
    notes: tuple[str, ...] = ()

    @property
    def se(self) -> float:
        return math.sqrt(self.variance) if self.variance >= 0 else math.nan


def ratio_estimate(
    num: FloatArray,
    den: FloatArray,
    metric: str = "",
    variant: str = "",
    alpha: float = 0.05,
    min_units: int = MIN_UNITS,
) -> RatioEstimate:
    """Delta-method estimate of sum(num)/sum(den) with units as the independent observations.

    Var(R) = sum_i (x_i - R y_i)^2 / ((n - 1) n ybar^2): the linearisation of x̄/ȳ around the means.
    """
    keep = den > 0
    x, y = num[keep], den[keep]
    n = int(keep.sum())
    notes: list[str] = []
    if n == 0:
        nan = math.nan
        none = Interval(nan, nan)
        return RatioEstimate(metric, variant, 0, 0.0, 0.0, nan, nan, none, nan, None, ("no data",))
    sx, sy = float(x.sum()), float(y.sum())
    r = sx / sy
    if n < 2:
        var = math.nan
        notes.append(f"too few units: {n} < 2, no variance")
    else:
        resid = x - r * y
        ybar = sy / n
        var = float(resid @ resid) / ((n - 1) * n * ybar * ybar)
        if var <= (1e-9 * abs(r)) ** 2:  # equal ratios up to rounding: exactly degenerate
            var = 0.0
    if 2 <= n < min_units:
        notes.append(f"too few units: {n} < {min_units}, the normal approximation is not trusted")
    if var == 0.0:
        notes.append("zero variance: every unit has the same ratio, the interval is degenerate")
    half = _z(alpha) * math.sqrt(var) if not math.isnan(var) else math.nan
    rel = n * var / (r * r) if r != 0 else math.nan
    deff = None
    if metric in BINOMIAL_METRICS and 0 < r < 1:
        deff = var / (r * (1 - r) / sy)
    return RatioEstimate(
        metric=metric,
        variant=variant,
        n_units=n,
        numerator=sx,
        denominator=sy,
        mean=r,
        variance=var,
        ci=Interval(r - half, r + half),
        relative_unit_variance=rel,
        design_effect=deff,
        notes=tuple(notes),
    )


def sequential_halfwidth(sigma: float, t: int, alpha: float, planned_units: int) -> float:
    """Half-width of the asymptotic confidence sequence (Waudby-Smith et al. 2021, Thm 2.2).

    sigma: per-unit standard deviation of the estimator's influence (se * sqrt(t)); t: units so far.
    rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / planned_units makes it narrowest at planned_units.
    """
    if t <= 0 or math.isnan(sigma):
        return math.nan
    la = -2 * math.log(alpha)
    rho2 = (la + math.log(la + 1)) / planned_units
    tr = t * rho2
    return sigma * math.sqrt(2 * (tr + 1) / (t * t * rho2) * math.log(math.sqrt(tr + 1) / alpha))


@dataclass(frozen=True)
class LiftEstimate:
    """Treatment vs control on one metric: relative lift mean_B/mean_A - 1 and absolute difference.

    `ci`/`p_value` are fixed-horizon (valid for ONE look at a pre-set size); `sequential_ci` and
    `sequential_difference_ci` stay valid however often the experiment is looked at (see
    `sequential_halfwidth`); decide on them when peeking.
    """

    metric: str
    control: str
    treatment: str
    lift: float
    se: float
    ci: Interval
    p_value: float
    difference: float
    difference_ci: Interval
    sequential_ci: Interval
    sequential_difference_ci: Interval
    n_units: int
    notes: tuple[str, ...] = ()

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_value < alpha)

    @property
    def sequential_significant(self) -> bool:
        return not self.sequential_ci.contains(0.0)


def relative_lift(
    control: RatioEstimate,
    treatment: RatioEstimate,
    alpha: float = 0.05,
    planned_units: int = DEFAULT_PLANNED_UNITS,
) -> LiftEstimate:
    """Delta-method lift: Var(mB/mA - 1) = Var(mB)/mA^2 + mB^2 Var(mA)/mA^4 (arms independent)."""
    ma, mb, va, vb = control.mean, treatment.mean, control.variance, treatment.variance
    notes = [f"{est.variant}: {note}" for est in (control, treatment) for note in est.notes]
    t = control.n_units + treatment.n_units
    nan = math.nan
    if ma == 0 or math.isnan(ma) or math.isnan(mb):
        notes.append("lift undefined: control mean is zero or missing")
        lift = se = p = nan
    else:
        lift = mb / ma - 1
        se = math.sqrt(vb / ma**2 + mb**2 * va / ma**4)
        if se > 0:
            p = 2 * _normal_cdf(-abs(lift) / se)
        else:
            p = nan
            notes.append("no variance: no p-value" if math.isnan(se) else "zero variance: no p-value")
    diff = mb - ma
    dse = math.sqrt(va + vb)
    z = _z(alpha)
    seq = sequential_halfwidth(se * math.sqrt(t), t, alpha, planned_units)
    dseq = sequential_halfwidth(dse * math.sqrt(t), t, alpha, planned_units)
    return LiftEstimate(
        metric=control.metric,
        control=control.variant,
        treatment=treatment.variant,
        lift=lift,
        se=se,
        ci=Interval(lift - z * se, lift + z * se),
        p_value=p,
        difference=diff,
        difference_ci=Interval(diff - z * dse, diff + z * dse),
        sequential_ci=Interval(lift - seq, lift + seq),
        sequential_difference_ci=Interval(diff - dseq, diff + dseq),
        n_units=t,
        notes=tuple(notes),
    )


def lift_power(
    control_unit_variance: float,
    treatment_unit_variance: float,
    n_control: int,
    n_treatment: int,
    lift: float,
    alpha: float = 0.05,
) -> float:
    """Analytic power of the two-sided lift test, from per-unit relative variances (delta method).

    With v = n Var(mean)/mean^2 per arm, Var(lift) = (1 + lift)^2 (v_A/n_A + v_B/n_B); power =
    Phi(|lift|/se - z) + Phi(-|lift|/se - z).
    """
    se = (1 + lift) * math.sqrt(control_unit_variance / n_control + treatment_unit_variance / n_treatment)
    z = _z(alpha)
    k = abs(lift) / se
    return _normal_cdf(k - z) + _normal_cdf(-k - z)


@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio mismatch: units per variant against the declared split (chi-square goodness of fit).

    A mismatch means assignment or logging is broken (units lost, bots, a redirect in one arm): the
    lifts are then biased in unknown ways, so a flagged experiment's results should not be trusted.
    """

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    dof: int
    p_value: float
    threshold: float
    flagged: bool
    notes: tuple[str, ...] = ()


def srm_test(
    counts: Mapping[str, int],
    split: Mapping[str, float],
    threshold: float = SRM_THRESHOLD,
    excluded_units: int = 0,
) -> SRMResult:
    """Pearson chi-square of unit counts vs `split` (shares summing to 1); flagged when p < threshold.

    Units of a variant not in the split, or seen in two variants (`excluded_units`), also flag it:
    they are assignment errors the counts of the declared variants cannot show.
    """
    notes: list[str] = []
    undeclared = {k: v for k, v in counts.items() if k not in split and v > 0}
    if undeclared:
        notes.append(f"units in undeclared variants: {undeclared}")
    if excluded_units:
        notes.append(f"{excluded_units} units seen in more than one variant (excluded)")
    names = sorted(split)
    observed = np.array([counts.get(k, 0) for k in names], dtype=np.float64)
    total = float(observed.sum())
    share = np.array([split[k] for k in names], dtype=np.float64)
    share = share / share.sum()
    exp = total * share
    if total == 0:
        notes.append("no units")
        chi2, p = math.nan, math.nan
    else:
        chi2 = float(((observed - exp) ** 2 / exp).sum())
        p = float(special.chdtrc(len(names) - 1, chi2))  # upper tail of chi-square(k - 1)
        if exp.min() < 5:
            notes.append("too few units: an expected count is below 5, the chi-square p-value is rough")
    flagged = bool((not math.isnan(p) and p < threshold) or undeclared or excluded_units)
    return SRMResult(
        counts={k: int(counts.get(k, 0)) for k in names} | {k: int(v) for k, v in undeclared.items()},
        expected={k: float(e) for k, e in zip(names, exp, strict=True)},
        chi2=chi2,
        dof=len(names) - 1,
        p_value=p,
        threshold=threshold,
        flagged=flagged,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class ExperimentReport:
    """Everything an analyst reads for one experiment: SRM first, then means and lifts per metric."""

    experiment_id: str
    unit: str
    control: str
    alpha: float
    planned_units: int
    srm: SRMResult
    means: dict[str, dict[str, RatioEstimate]]
    lifts: dict[str, dict[str, LiftEstimate]]
    notes: tuple[str, ...] = field(default=())


def analyse(
    table: UnitTotals,
    experiment: Experiment,
    metrics: Iterable[str] = tuple(METRICS),
    alpha: float = 0.05,
    planned_units: int = DEFAULT_PLANNED_UNITS,
    min_units: int = MIN_UNITS,
) -> ExperimentReport:
    """SRM check, per-variant means and lifts vs `experiment.control` for each metric.

    No correction across metrics or variants: each interval is for its own comparison.
    """
    notes: list[str] = []
    kinds = set(table.unit_kinds)
    if kinds and kinds != {experiment.unit}:
        notes.append(f"records' unit {sorted(kinds)} differs from the declared unit {experiment.unit!r}")
    srm = srm_test(table.units_per_variant(), experiment.split, excluded_units=len(table.excluded_units))
    if srm.flagged:
        notes.append("SRM flagged: the assignment is broken, do not trust the lifts")
    variants = sorted(experiment.split)
    means: dict[str, dict[str, RatioEstimate]] = {}
    lifts: dict[str, dict[str, LiftEstimate]] = {}
    for metric in metrics:
        num_name, den_name = METRICS[metric]
        num, den = table.totals[num_name], table.totals[den_name]
        per: dict[str, RatioEstimate] = {}
        for v in variants:
            arm = table.variants == v
            per[v] = ratio_estimate(num[arm], den[arm], metric, v, alpha, min_units)
        means[metric] = per
        lifts[metric] = {
            v: relative_lift(per[experiment.control], per[v], alpha, planned_units)
            for v in variants
            if v != experiment.control
        }
    return ExperimentReport(
        experiment_id=experiment.experiment_id,
        unit=experiment.unit,
        control=experiment.control,
        alpha=alpha,
        planned_units=planned_units,
        srm=srm,
        means=means,
        lifts=lifts,
        notes=tuple(notes),
    )
