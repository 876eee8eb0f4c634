import numpy as np
import torch

from querylife.calibration import LABELS, Calibration, fit_calibration


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
