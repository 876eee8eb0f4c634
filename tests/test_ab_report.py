"""`qlworker ab-report`'s layouts on known per-unit totals: lift table, CSV, JSON, per-window, plot,
the implicit experiment of searches outside any, and the message when the analysis extra is missing."""

from __future__ import annotations

import csv
import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas import ABMetricsV2, Experiment
from worker.ab_report import ReportError, ReportRequest, render

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EXP = Experiment(experiment_id="exp-1", unit="user", split={"A": 0.5, "B": 0.5}, control="A", start=T0)


def records(experiment_id: str | None = "exp-1", users: int = 400, windows: int = 3) -> list[ABMetricsV2]:
    """Each user in one arm, a few searches per window; B clicks 1.5x as often as A."""
    rng = np.random.default_rng(1)
    out = []
    for u in range(users):
        variant = "AB"[u % 2]
        for w in range(windows):
            impressions = int(rng.integers(5, 20))
            p = 0.1 * (1.5 if variant == "B" else 1.0)
            clicks = int(rng.binomial(impressions, p))
            start = T0 + timedelta(minutes=5 * w)
            out.append(
                ABMetricsV2(
                    experiment_id=experiment_id,
                    unit="user",
                    unit_id=f"u{u}",
                    variant=variant,
                    model_version="v1",
                    window_start=start,
                    window_end=start + timedelta(minutes=5),
                    source_partition=u % 3,
                    last_offset=u * 10 + w,
                    searches=2,
                    searches_with_order=int(rng.integers(0, 2)),
                    impressions=impressions,
                    clicks=clicks,
                    orders=0,
                    scored_impressions=impressions,
                    scored_clicks=clicks,
                    scored_top3=min(3, impressions),
                    relevance_sum_shown=0.5 * impressions,
                    relevance_sum_clicked=0.6 * clicks,
                    relevance_sum_top3=0.7 * min(3, impressions),
                    emitted_at=T0,
                )
            )
    return out


def test_lift_table_csv_and_json_agree() -> None:
    recs = records()
    table = render(recs, {"exp-1": EXP}, ReportRequest("exp-1"))
    assert table.startswith("experiment exp-1 (unit: user, control A); units: A 200, B 200")
    assert "SRM chi-square p = 1.000" in table and "FLAGGED" not in table
    rows = list(csv.DictReader(io.StringIO(render(recs, {"exp-1": EXP}, ReportRequest("exp-1", fmt="csv")))))
    ctr = next(r for r in rows if r["metric"] == "ctr")
    clicks = {v: sum(r.clicks for r in recs if r.variant == v) for v in "AB"}
    shown = {v: sum(r.impressions for r in recs if r.variant == v) for v in "AB"}
    assert float(ctr["control_mean"]) == pytest.approx(clicks["A"] / shown["A"])
    assert float(ctr["lift"]) == pytest.approx((clicks["B"] / shown["B"]) / (clicks["A"] / shown["A"]) - 1)
    assert float(ctr["p_value"]) < 0.001  # a 50 % lift over 400 users is detected
    assert float(ctr["always_valid_low"]) < float(ctr["lift_low"])  # wider than the one-look interval
    data = orjson.loads(render(recs, {"exp-1": EXP}, ReportRequest("exp-1", fmt="json")))
    assert data["srm"]["flagged"] is False
    assert {row["metric"] for row in data["lifts"]} == {
        "ctr",
        "conversion",
        "relevance_shown",
        "relevance_clicked",
        "relevance_top3",
    }
    # --since/--until keep whole windows only: the last window alone
    late = render(recs, {"exp-1": EXP}, ReportRequest("exp-1", since=T0 + timedelta(minutes=10), fmt="json"))
    assert orjson.loads(late)["lifts"][0]["control_units"] == 200


def test_per_window_rows_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "ab.png"
    text = render(records(), {"exp-1": EXP}, ReportRequest("exp-1", per_window=True, fmt="csv", plot=plot))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len({r["window_start"] for r in rows}) == 3
    assert len(rows) == 3 * 5 * 2  # windows x metrics x variants
    assert all(float(r["low"]) <= float(r["mean"]) <= float(r["high"]) for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_searches_outside_any_experiment_and_unknown_experiments() -> None:
    table = render(records(experiment_id=None), {}, ReportRequest())
    assert "experiment unassigned (unit: user, control A)" in table
    with pytest.raises(ReportError, match="'exp-2' is not declared"):
        render(records(), {"exp-1": EXP}, ReportRequest("exp-2"))


def test_missing_analysis_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slim worker image has no scipy: the report says which extra to install."""
    import analysis

    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    for name in ("report", "ab_stats", "plot"):
        monkeypatch.delitem(sys.modules, f"analysis.{name}", raising=False)
        monkeypatch.delattr(analysis, name, raising=False)
    with pytest.raises(ReportError, match=r"querylife\[analysis\]"):
        render(records(), {"exp-1": EXP}, ReportRequest("exp-1"))
