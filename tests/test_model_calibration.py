import json

import numpy as np
import pytest
import torch

from querylife.calibration import (
    LABEL_TARGETS,
    LABELS,
    LEGACY_METHOD,
    MIN_NAMED,
    RULE_BOTH,
    RULE_NEITHER,
    RULE_PRECISION,
    THRESHOLD_METHOD,
    Calibration,
    LabelTarget,
    fit_calibration,
    measure,
    refit_thresholds,
)
from querylife.checkpoint import load_head
from querylife.data import DEFAULT_DATA_DIR
from querylife.evaluate import label_metrics
from querylife.labels import build_report, render, split_pairs


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 4, size=4000)
    cos = 0.15 * grades + rng.normal(0, 0.08, size=grades.size)
    return cos, grades


def test_platt_is_monotone_and_separates() -> None:
    cos, grades = _synthetic()
    cal = fit_calibration(cos, grades)
    assert cal.a > 0
    xs = torch.linspace(-1, 1, 101)
    p = cal.probability(xs)
    assert bool((p[1:] >= p[:-1]).all()) and float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    # mean predicted probability roughly matches the positive rate on the fitted data
    prob = cal.probability(torch.from_numpy(cos)).numpy()
    assert abs(prob.mean() - (grades >= 2).mean()) < 0.02
    assert cal.thresholds == sorted(cal.thresholds) and len(cal.thresholds) == 3


def test_labels_follow_grades_and_roundtrip() -> None:
    cos, grades = _synthetic(1)
    cal = fit_calibration(cos, grades)
    labels = [cal.label(float(cal.probability(torch.tensor(0.15 * g)))) for g in range(4)]
    assert labels == list(LABELS)
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    assert Calibration(thresholds=[0.2, 0.5, 0.8]).label(0.5) == "relevant"
    assert Calibration(thresholds=[0.2, 0.5, 0.8]).label(0.1) == "irrelevant"


# ------------------------------------------------------------------------------------------------
# Thresholds for stated precision and recall floors (issue 17, item 5)

GRADE_SHARES = (0.75, 0.20, 0.02, 0.03)  # about the real validation split's imbalance


def _imbalanced(seed: int, n: int, means: tuple[float, ...], sd: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.choice(4, size=n, p=GRADE_SHARES)
    return np.asarray(means)[grades] + rng.normal(0, sd, size=n), grades


def _brute_force(
    p: np.ndarray, grades: np.ndarray, target: LabelTarget
) -> list[tuple[float, float, float, int]]:
    """(threshold, precision, recall, named) at every distinct value of p, one threshold at a time."""
    out = []
    for thr in [*np.unique(p), np.inf]:
        named = int(target.named(p, thr).sum())
        out.append((float(thr), *measure(p, grades, target, thr), named))
    return out


def _prob(cal: Calibration, cos: np.ndarray) -> np.ndarray:
    return cal.probability(torch.from_numpy(cos)).numpy()


def test_reachable_floors_are_met_with_the_largest_margin() -> None:
    cos, grades = _imbalanced(0, 5000, means=(0.0, 0.3, 0.6, 0.9), sd=0.09)
    cal = fit_calibration(cos, grades)
    assert cal.method == THRESHOLD_METHOD and len(cal.label_fits) == 3
    assert [f.target for f in cal.label_fits] == list(LABEL_TARGETS)
    assert cal.thresholds == [f.threshold for f in cal.label_fits] == sorted(cal.thresholds)
    p = _prob(cal, cos)
    for fit in cal.label_fits:
        t = fit.target
        assert fit.rule == RULE_BOTH and fit.precision_met and fit.recall_met
        precision, recall = measure(p, grades, t, fit.threshold)
        assert precision >= t.min_precision and recall >= t.min_recall
        assert (precision, recall) == pytest.approx((fit.precision, fit.recall), abs=1e-9)
        margins = [
            min(pr - t.min_precision, rc - t.min_recall)
            for _, pr, rc, named in _brute_force(p, grades, t)
            if named >= MIN_NAMED and pr >= t.min_precision and rc >= t.min_recall
        ]
        assert min(precision - t.min_precision, recall - t.min_recall) == pytest.approx(
            max(margins), abs=1e-9
        )
    # the labels the model hands out keep the promises: exact is grade 3, irrelevant is grade 0
    labels = np.array([cal.label(float(x)) for x in p])
    exact = labels == "exact"
    assert (grades[exact] == 3).mean() >= 0.8 and exact[grades == 3].mean() >= 0.5
    irrelevant = labels == "irrelevant"
    assert (grades[irrelevant] == 0).mean() >= 0.85 and irrelevant[grades == 0].mean() >= 0.8
    reported = label_metrics(p, grades, cal.thresholds, LABEL_TARGETS)["labels"]
    for grade, name in enumerate(LABELS):
        named = labels == name
        expected = ((grades[named] == grade).mean(), named[grades == grade].mean(), named.mean())
        got = reported[name]
        assert (got["precision"], got["recall"], got["share"]) == pytest.approx(expected, abs=1e-12)


def test_unreachable_recall_floor_lets_precision_win_and_records_the_miss() -> None:
    rng = np.random.default_rng(101)  # not 1: that stream drew the grades
    cos, grades = _imbalanced(1, 5000, means=(0.0, 0.3, 0.3, 0.3), sd=0.09)
    separable = (grades == 3) & (rng.random(grades.size) < 0.5)
    cos[separable] = 0.9 + rng.normal(0, 0.03, size=int(separable.sum()))  # half of grade 3 stands out
    exact = LabelTarget("exact", boundary=3, side="above", min_precision=0.8, min_recall=0.6)
    cal = fit_calibration(cos, grades, targets=(*LABEL_TARGETS[:2], exact))
    fit = cal.label_fits[2]
    assert fit.rule == RULE_PRECISION and fit.precision_met and not fit.recall_met
    assert 0.4 < fit.recall < 0.6 and fit.precision >= 0.8
    p = _prob(cal, cos)
    best_recall = max(
        rc for _, pr, rc, named in _brute_force(p, grades, exact) if named >= MIN_NAMED and pr >= 0.8
    )
    assert fit.recall == pytest.approx(best_recall, abs=1e-9)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal and not again.label_fits[2].recall_met  # the miss is stored with the head


def test_unreachable_precision_floor_takes_the_most_precise_threshold() -> None:
    rng = np.random.default_rng(102)
    cos, grades = _imbalanced(2, 5000, means=(0.0, 0.3, 0.6, 0.6), sd=0.09)
    cos[grades == 3] = rng.normal(0.0, 0.3, size=int((grades == 3).sum()))  # grade 3 is noise
    cal = fit_calibration(cos, grades)
    fit = cal.label_fits[2]
    assert not fit.precision_met and not fit.recall_met
    p = _prob(cal, cos)
    precise = max(pr for thr, pr, _, named in _brute_force(p, grades, fit.target) if named >= MIN_NAMED)
    assert fit.precision == pytest.approx(precise, abs=1e-9) and fit.rule == RULE_NEITHER
    assert cal.thresholds == sorted(cal.thresholds)


def test_thresholds_out_of_order_are_raised_and_remeasured() -> None:
    cos, grades = _imbalanced(3, 4000, means=(0.0, 0.3, 0.6, 0.9), sd=0.09)
    targets = (
        LabelTarget("irrelevant", 1, "below", min_precision=0.5, min_recall=0.999),  # t1 high
        LabelTarget("at least relevant", 2, "above", min_precision=0.05, min_recall=0.999),  # t2 low
        LABEL_TARGETS[2],
    )
    cal = fit_calibration(cos, grades, targets=targets)
    first, second = cal.label_fits[:2]
    assert second.threshold == first.threshold and second.rule.endswith("raised to order")
    p = _prob(cal, cos)
    assert (second.precision, second.recall) == pytest.approx(
        measure(p, grades, targets[1], second.threshold)
    )


def test_old_head_json_loads_and_refit_keeps_scores_and_records_what_it_replaced() -> None:
    legacy = {"a": 18.5, "b": -9.0, "fitted_on": 10, "thresholds": [0.0017, 0.034, 0.129], "version": 1}
    old = Calibration.from_dict(legacy)
    assert old.method == LEGACY_METHOD and old.label_fits == [] and old.replaced is None
    assert old.label(0.05) == "relevant"
    cos, grades = _imbalanced(4, 5000, means=(-0.2, 0.3, 0.6, 0.9), sd=0.09)
    new = refit_thresholds(old, cos, grades)
    assert (new.a, new.b) == (old.a, old.b) and new.method == THRESHOLD_METHOD
    assert new.replaced == {"method": LEGACY_METHOD, "thresholds": legacy["thresholds"]}
    again = refit_thresholds(new, cos, grades)  # same data: same thresholds, the first record stays
    assert again == new
    stored = new.to_dict()
    assert {k: stored[k] for k in legacy} == legacy | {"thresholds": new.thresholds, "fitted_on": 5000}
    assert Calibration.from_dict(stored) == new


def test_committed_head_meets_its_stated_floors_on_validation() -> None:
    """The served labels (float32 cosine -> probability -> thresholds) of the committed head, on
    every validation pair of the real catalogue. Needs ../shared; a cold feature cache costs about
    6 minutes once (the same cache `make reproduce` builds)."""
    if not (DEFAULT_DATA_DIR / "products.jsonl").exists():
        pytest.skip(f"the shared catalogue is absent at {DEFAULT_DATA_DIR}")
    torch.set_num_threads(2)
    head, cal, meta = load_head()
    assert cal.method == THRESHOLD_METHOD
    assert [f.target for f in cal.label_fits] == list(LABEL_TARGETS)  # fitted for today's targets
    pairs = split_pairs(head, meta, None, None)
    cos, grades = pairs["val"]
    assert refit_thresholds(cal, cos, grades).thresholds == cal.thresholds  # the command is up to date
    measured = label_metrics(_prob(cal, cos), grades, cal.thresholds, LABEL_TARGETS)["targets"]
    for fit in cal.label_fits:
        m = measured[fit.target.label]
        assert m["precision"] >= fit.target.min_precision, (fit.target, m)
        assert m["recall"] >= fit.target.min_recall, (fit.target, m)
        assert (m["precision"], m["recall"]) == pytest.approx((fit.precision, fit.recall), abs=1e-4)


def test_label_report_shows_floors_misses_and_the_thresholds_replaced() -> None:
    cos, grades = _imbalanced(5, 4000, means=(0.0, 0.3, 0.6, 0.9), sd=0.09)
    test_cos, test_grades = _imbalanced(6, 4000, means=(0.0, 0.3, 0.45, 0.55), sd=0.09)  # a worse split
    old = Calibration.from_dict({"a": 8.0, "b": -4.0, "thresholds": [0.1, 0.3, 0.5], "version": 1})
    cal = refit_thresholds(old, cos, grades)
    pairs = {"version": "v-test", "val": (cos, grades), "test": (test_cos, test_grades)}
    pairs |= {"val_size": (40, 100), "test_size": (40, 100)}
    report = build_report(cal, pairs)
    assert report["before"]["thresholds"] == [0.1, 0.3, 0.5]
    exact_test = report["after"]["test"]["targets"]["exact"]
    assert not (exact_test["precision_met"] and exact_test["recall_met"])
    md = render(report, "python -m querylife.labels report")
    row = next(line for line in md.splitlines() if line.startswith("| exact (grade 3) | 0.80 / 0.50 |"))
    val_cell, test_cell = row.split(" | ")[5:7]
    assert "(missed)" not in val_cell and test_cell.endswith("(missed)")
    assert "Before: thresholds 0.10000, 0.30000, 0.50000 (`balanced_accuracy`)." in md
