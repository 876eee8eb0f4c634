"""A/B statistics by randomisation unit (analysis/ab_stats.py), checked on seeded simulations.

The simulated clicks are correlated the way real ones are: each user has a click propensity
p_u ~ Beta(mu*phi, (1-mu)*phi), each search of a user a propensity q ~ Beta(kappa*p_u, kappa*(1-p_u))
(a search-level shock with mean p_u), and the impressions of a search click ~ Binomial(K, q). The
treatment multiplies p_u by (1 + lift), so the true CTR ratio is exactly 1 + lift. Units (users) are
what is randomised. Every rate asserted below is over 300 simulated experiments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from analysis.ab_stats import (
    UnitTotals,
    analyse,
    lift_power,
    ratio_estimate,
    sequential_halfwidth,
    srm_test,
    sum_unit_totals,
)
from schemas.experiments import ABMetricsV2, Experiment

T0 = datetime(2026, 11, 1, tzinfo=UTC)
AB = Experiment(experiment_id="exp-1", unit="user", split={"A": 0.5, "B": 0.5}, control="A", start=T0)
N_EXPERIMENTS = 300


@dataclass(frozen=True)
class Design:
    """The simulated population; `unit_moments` gives its exact per-unit variances (no simulation)."""

    mu: float = 0.10  # mean user click propensity = control CTR
    phi: float = 9.0  # Beta concentration of users: ICC of impressions of one user ~ 1/(phi+1)
    kappa: float = 20.0  # Beta concentration of searches around their user's propensity
    extra_searches: float = 2.0  # searches per user = 1 + Poisson(extra_searches)
    k_min: int = 4  # impressions per search ~ uniform{k_min..k_max}
    k_max: int = 16

    def simulate(self, rng: np.random.Generator, n_units: int, lift: float = 0.0) -> UnitTotals:
        treated = rng.random(n_units) < 0.5
        # clipped before the lift, so the arms' CTR ratio stays exactly 1 + lift (P(p > 0.9) ~ 1e-8)
        p = np.clip(rng.beta(self.mu * self.phi, (1 - self.mu) * self.phi, n_units), 1e-6, 0.9)
        p = np.where(treated, p * (1 + lift), p)
        searches = 1 + rng.poisson(self.extra_searches, n_units)
        unit = np.repeat(np.arange(n_units), searches)
        ps = p[unit]
        q = rng.beta(self.kappa * ps, self.kappa * (1 - ps))
        k = rng.integers(self.k_min, self.k_max + 1, len(unit))
        clicks = rng.binomial(k, q)
        ordered = rng.random(len(unit)) < 0.3 * (clicks > 0)
        return UnitTotals.from_arrays(
            np.where(treated, "B", "A"),
            searches=searches,
            searches_with_order=np.bincount(unit, weights=ordered, minlength=n_units),
            impressions=np.bincount(unit, weights=k, minlength=n_units),
            clicks=np.bincount(unit, weights=clicks, minlength=n_units),
        )

    def unit_moments(self, lift: float = 0.0) -> tuple[float, float]:
        """Exact per-unit relative variance n*Var(CTR)/CTR^2 and design effect of one arm.

        Y = impressions of a unit, X = its clicks, R = E[X]/E[Y]. The delta method needs
        Var(X - R Y) = E[Var(X | p, searches)] + E[Y^2] Var(p), where a search of K impressions has the
        beta-binomial variance K p(1-p) (1 + (K-1)/(kappa+1)).
        """
        ks = np.arange(self.k_min, self.k_max + 1, dtype=np.float64)
        ek, vk, ekk1 = ks.mean(), ks.var(), (ks * (ks - 1)).mean()
        es, vs = 1 + self.extra_searches, self.extra_searches
        ey = es * ek
        ey2 = es * vk + vs * ek**2 + ey**2
        m = self.mu * (1 + lift)
        var_p = (1 + lift) ** 2 * self.mu * (1 - self.mu) / (self.phi + 1)
        e_pq = m - (var_p + m * m)
        v = e_pq * es * (ek + ekk1 / (self.kappa + 1)) + ey2 * var_p
        return float(v / (ey**2 * m * m)), float(v / (ey * m * (1 - m)))


DESIGN = Design()


def wilson(successes: float, trials: float, z: float = 1.959964) -> tuple[float, float]:
    """The worker's impression-level interval (worker/ab_metrics.wilson_interval): every impression
    treated as an independent Bernoulli trial."""
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return centre - half, centre + half


def naive_lift_p_value(table: UnitTotals) -> float:
    """The baseline: a two-proportion z test on impressions (binomial variance, no clustering)."""
    arm = table.variants == "B"
    clicks, imps = table.totals["clicks"], table.totals["impressions"]
    pa, na = clicks[~arm].sum() / imps[~arm].sum(), imps[~arm].sum()
    pb, nb = clicks[arm].sum() / imps[arm].sum(), imps[arm].sum()
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    return float(2 * stats.norm.sf(abs(pb - pa) / se))


def test_aa_false_positive_rate_by_unit_vs_by_impression() -> None:
    rng = np.random.default_rng(20261101)
    unit_fp = naive_fp = wilson_covers = 0
    deffs = []
    for _ in range(N_EXPERIMENTS):
        table = DESIGN.simulate(rng, 2000)
        report = analyse(table, AB, metrics=("ctr",))
        lift = report.lifts["ctr"]["B"]
        unit_fp += lift.significant(0.05)
        naive_fp += naive_lift_p_value(table) < 0.05
        control = report.means["ctr"]["A"]
        low, high = wilson(control.numerator, control.denominator)
        wilson_covers += low <= DESIGN.mu <= high
        assert control.design_effect is not None
        deffs.append(control.design_effect)
    unit_rate, naive_rate = unit_fp / N_EXPERIMENTS, naive_fp / N_EXPERIMENTS
    design_effect = float(np.mean(deffs))
    _, exact_deff = DESIGN.unit_moments()
    print(
        f"A/A: unit-level FPR {unit_rate:.3f}, impression-level FPR {naive_rate:.3f}, design effect "
        f"{design_effect:.2f} (exact {exact_deff:.2f}), Wilson coverage {wilson_covers / N_EXPERIMENTS:.3f}"
    )
    # impressions are correlated within users: the variance by unit is >= 2x the binomial one
    assert design_effect >= 2
    assert design_effect == pytest.approx(exact_deff, rel=0.1)
    assert 0.02 <= unit_rate <= 0.09
    assert naive_rate > 0.12
    # the worker's per-variant Wilson interval misses the true CTR far more often than 5 %
    assert wilson_covers / N_EXPERIMENTS < 0.85


def test_power_matches_the_delta_method_formula() -> None:
    lift, n_units = 0.05, 22_000  # 5 % relative CTR lift, 11,000 users per arm (~80 % power)
    v_a, _ = DESIGN.unit_moments()
    v_b, _ = DESIGN.unit_moments(lift)
    analytic = lift_power(v_a, v_b, n_units // 2, n_units // 2, lift)
    rng = np.random.default_rng(5)
    detected = 0
    for _ in range(N_EXPERIMENTS):
        est = analyse(DESIGN.simulate(rng, n_units, lift), AB, metrics=("ctr",)).lifts["ctr"]["B"]
        detected += est.significant(0.05) and est.lift > 0
    simulated = detected / N_EXPERIMENTS
    print(f"power at lift {lift} with {n_units} units: simulated {simulated:.3f}, analytic {analytic:.3f}")
    assert 0.7 <= analytic <= 0.9
    assert abs(simulated - analytic) <= 0.10


def test_sequential_interval_covers_the_true_lift_over_ten_looks() -> None:
    lift, n_units, looks = 0.05, 8000, 10
    rng = np.random.default_rng(11)
    sequential_covers = fixed_covers = 0
    for _ in range(N_EXPERIMENTS):
        table = DESIGN.simulate(rng, n_units, lift)  # rows in arrival order
        seq_ok = fixed_ok = True
        for look in range(1, looks + 1):
            arrived = np.arange(n_units) < n_units * look // looks
            est = analyse(table.subset(arrived), AB, metrics=("ctr",), planned_units=n_units)
            lift_b = est.lifts["ctr"]["B"]
            seq_ok &= lift_b.sequential_ci.contains(lift)
            fixed_ok &= lift_b.ci.contains(lift)
        sequential_covers += seq_ok
        fixed_covers += fixed_ok
    seq_rate, fixed_rate = sequential_covers / N_EXPERIMENTS, fixed_covers / N_EXPERIMENTS
    print(f"coverage at all {looks} looks: sequential {seq_rate:.3f}, fixed-horizon {fixed_rate:.3f}")
    assert seq_rate >= 0.95
    # peeking at the fixed-horizon interval 10 times loses its 95 %: what the sequential one is for
    assert fixed_rate < 0.92


def test_srm_flags_52_48_at_10k_units_but_not_50_50() -> None:
    skewed = srm_test({"A": 5200, "B": 4800}, {"A": 0.5, "B": 0.5})
    even = srm_test({"A": 5000, "B": 5000}, {"A": 0.5, "B": 0.5})
    slight = srm_test({"A": 5050, "B": 4950}, {"A": 0.5, "B": 0.5})
    print(
        f"SRM p-values: 52/48 {skewed.p_value:.2e}, 50/50 {even.p_value:.3f}, 50.5/49.5 {slight.p_value:.3f}"
    )
    assert skewed.flagged and skewed.chi2 == pytest.approx(16.0) and skewed.p_value < 1e-3
    assert not even.flagged and even.p_value == pytest.approx(1.0)
    assert not slight.flagged
    # an uneven declared split is tested against its own shares
    assert not srm_test({"A": 9000, "B": 1000}, {"A": 0.9, "B": 0.1}).flagged
    assert srm_test({"A": 5000, "B": 5000}, {"A": 0.9, "B": 0.1}).flagged
    # undeclared variants and units seen in two variants are assignment errors too
    assert srm_test({"A": 5000, "B": 5000, "C": 3}, {"A": 0.5, "B": 0.5}).flagged
    assert srm_test({"A": 5000, "B": 5000}, {"A": 0.5, "B": 0.5}, excluded_units=2).flagged


def test_srm_false_alarm_rate_under_a_correct_split() -> None:
    rng = np.random.default_rng(3)
    n_a = rng.binomial(10_000, 0.5, size=2000)
    flagged = sum(srm_test({"A": int(a), "B": 10_000 - int(a)}, {"A": 0.5, "B": 0.5}).flagged for a in n_a)
    assert flagged / 2000 <= 0.005


def test_srm_through_analyse_on_unit_totals() -> None:
    variants = ["A"] * 5200 + ["B"] * 4800
    table = UnitTotals.from_arrays(variants, impressions=np.full(10_000, 10.0), clicks=np.ones(10_000))
    report = analyse(table, AB)
    assert report.srm.flagged and report.srm.counts == {"A": 5200, "B": 4800}
    assert any("SRM" in note for note in report.notes)


def test_delta_method_known_values() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 4.0])
    est = ratio_estimate(x, y, "ctr", "A", min_units=2)
    # R = 6/8; residuals x - R y = (-0.5, 0.5, 0); Var = 0.5 / ((n-1) n ybar^2) with ybar = 8/3
    assert est.mean == pytest.approx(0.75)
    assert est.variance == pytest.approx(0.5 / (2 * 3 * (8 / 3) ** 2))
    assert est.ci.low == pytest.approx(0.75 - 1.959964 * math.sqrt(est.variance), rel=1e-6)
    # the same variance written with per-unit variances and covariance (the textbook form)
    r, ybar = 0.75, y.mean()
    textbook = (np.var(x, ddof=1) - 2 * r * np.cov(x, y)[0, 1] + r * r * np.var(y, ddof=1)) / (3 * ybar**2)
    assert est.variance == pytest.approx(textbook)
    # units without a denominator carry no information on the metric
    with_empty = ratio_estimate(np.append(x, 0.0), np.append(y, 0.0), "ctr", "A", min_units=2)
    assert with_empty.n_units == 3 and with_empty.variance == pytest.approx(est.variance)


def test_lift_delta_method_matches_a_large_simulation() -> None:
    rng = np.random.default_rng(9)
    lifts, ses = [], []
    for _ in range(200):
        table = DESIGN.simulate(rng, 2000, lift=0.1)
        est = analyse(table, AB, metrics=("ctr",)).lifts["ctr"]["B"]
        lifts.append(est.lift)
        ses.append(est.se)
    # the delta-method standard error is the actual spread of the lift over experiments
    assert float(np.mean(ses)) == pytest.approx(float(np.std(lifts, ddof=1)), rel=0.15)
    assert float(np.mean(lifts)) == pytest.approx(0.1, abs=0.01)


def test_too_few_data_and_degenerate_inputs_are_noted() -> None:
    small = UnitTotals.from_arrays(["A", "B"] * 20, impressions=np.full(40, 10.0), clicks=np.arange(40) % 3)
    report = analyse(small, AB, metrics=("ctr",))
    assert any("too few units" in n for n in report.means["ctr"]["A"].notes)
    assert any("too few units" in n for n in report.lifts["ctr"]["B"].notes)

    constant = UnitTotals.from_arrays(["A", "B"] * 200, impressions=np.full(400, 10.0), clicks=np.ones(400))
    est = analyse(constant, AB, metrics=("ctr",))
    assert any("zero variance" in n for n in est.means["ctr"]["A"].notes)
    assert math.isnan(est.lifts["ctr"]["B"].p_value)

    no_clicks = UnitTotals.from_arrays(["A", "B"] * 200, impressions=np.full(400, 10.0))
    zero = analyse(no_clicks, AB, metrics=("ctr", "relevance_clicked"))
    assert any("lift undefined" in n for n in zero.lifts["ctr"]["B"].notes)
    assert zero.means["relevance_clicked"]["A"].notes == ("no data",)


def test_sequential_interval_is_wider_than_fixed_and_narrowest_near_the_plan() -> None:
    rng = np.random.default_rng(2)
    table = DESIGN.simulate(rng, 8000, lift=0.05)
    est = analyse(table, AB, metrics=("ctr",), planned_units=8000).lifts["ctr"]["B"]
    assert est.sequential_ci.width > est.ci.width
    assert est.sequential_ci.contains(est.lift) and est.sequential_difference_ci.contains(est.difference)
    widths = {plan: sequential_halfwidth(1.0, 8000, 0.05, plan) for plan in (500, 8000, 200_000)}
    assert widths[8000] < widths[500] and widths[8000] < widths[200_000]


def record(
    unit_id: str,
    variant: str,
    window: int,
    clicks: int,
    impressions: int,
    last_offset: int = 1,
    partition: int = 0,
    experiment_id: str | None = "exp-1",
) -> ABMetricsV2:
    start = T0 + timedelta(hours=window)
    return ABMetricsV2(
        experiment_id=experiment_id,
        unit="user",
        unit_id=unit_id,
        variant=variant,
        model_version="v1",
        window_start=start,
        window_end=start + timedelta(hours=1),
        source_partition=partition,
        last_offset=last_offset,
        searches=1,
        searches_with_order=0,
        impressions=impressions,
        clicks=clicks,
        orders=0,
        scored_impressions=impressions,
        scored_clicks=clicks,
        scored_top3=min(3, impressions),
        relevance_sum_shown=0.5 * impressions,
        relevance_sum_clicked=0.7 * clicks,
        relevance_sum_top3=0.6 * min(3, impressions),
        emitted_at=start + timedelta(hours=1),
    )


def test_sum_unit_totals_sums_windows_first_and_keeps_the_latest_record_per_key() -> None:
    records = [
        record("u1", "A", 0, clicks=1, impressions=5, last_offset=3),  # superseded partial of window 0
        record("u1", "A", 0, clicks=2, impressions=10, last_offset=7),
        record("u1", "A", 1, clicks=1, impressions=10),
        record("u2", "B", 0, clicks=0, impressions=4, partition=0),
        record("u2", "B", 0, clicks=3, impressions=6, partition=1),  # same unit, another partition
        record("u3", "A", 0, clicks=1, impressions=5),
        record("u3", "B", 1, clicks=1, impressions=5),  # a unit in two variants: excluded
        record("u4", "A", 0, clicks=9, impressions=9, experiment_id="other"),
        record("u5", "B", 5, clicks=9, impressions=9),  # outside the analysed range
    ]
    table = sum_unit_totals(reversed(records), "exp-1", start=T0, end=T0 + timedelta(hours=2))
    assert list(table.unit_ids) == ["u1", "u2"] and list(table.variants) == ["A", "B"]
    assert list(table.totals["clicks"]) == [3.0, 3.0]
    assert list(table.totals["impressions"]) == [20.0, 10.0]
    assert list(table.totals["searches"]) == [2.0, 2.0]
    assert table.excluded_units == ("u3",) and table.unit_kinds == ("user",)
    report = analyse(table, AB)
    assert report.srm.flagged  # u3's double assignment
    assert report.means["ctr"]["A"].mean == pytest.approx(3 / 20)
    assert report.means["relevance_clicked"]["B"].mean == pytest.approx(0.7)


def test_worker_and_schemas_do_not_need_scipy_or_analysis() -> None:
    """scipy is the optional `analysis` extra: the worker image and the contracts must not import it at
    module level. Only the report path (`worker/ab_report.py`) imports `analysis` inside a function,
    and says which extra to install when it is missing (tests/test_ab_report.py)."""
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(root))
        for folder in ("worker", "schemas")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^(from|import)\s+(scipy|analysis|matplotlib)\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
