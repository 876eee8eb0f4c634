"""What `qlworker ab-report` prints: the lift table (default), means per window, as table, CSV or JSON.

The statistics are `analysis.ab_stats`'s (by unit, delta method, SRM, always-valid intervals); this
module only selects the records (experiment, time range, windows) and lays the numbers out.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from analysis.ab_stats import ExperimentReport, analyse, sum_unit_totals
from schemas.experiments import ABMetricsV2, Experiment

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNASSIGNED = "unassigned"
"""The id shown for searches outside any declared experiment (`experiment_id` null)."""


def implicit_experiment(records: Sequence[ABMetricsV2]) -> Experiment:
    """The declaration assumed for searches outside any experiment: equal split over the variants
    seen, the first (alphabetically) as control, the unit the records carry."""
    mine = [r for r in records if r.experiment_id is None]
    variants = sorted({r.variant for r in mine}) or ["A", "B"]
    if len(variants) < 2:
        variants.append("B" if variants[0] != "B" else "A")
        variants.sort()
    units = sorted({r.unit for r in mine}) or ["user"]
    return Experiment(
        experiment_id=UNASSIGNED,
        unit=units[0],
        split={v: 1 / len(variants) for v in variants},
        control=variants[0],
        start=min((r.window_start for r in mine), default=EPOCH),
    )


def experiment_filter(experiment: Experiment) -> str | None:
    """The `experiment_id` the records of this experiment carry (null outside any experiment)."""
    return None if experiment.experiment_id == UNASSIGNED else experiment.experiment_id


def analyse_range(
    records: Iterable[ABMetricsV2],
    experiment: Experiment,
    since: datetime | None,
    until: datetime | None,
    planned_units: int,
) -> ExperimentReport:
    """SRM, means and lifts over the whole windows in [since, until), units summed over them first."""
    table = sum_unit_totals(records, experiment_filter(experiment), since, until)
    return analyse(table, experiment, planned_units=planned_units)


@dataclass(frozen=True)
class WindowMean:
    """One variant's mean of one metric in one window, with its 95 % interval by unit."""

    window_start: datetime
    window_end: datetime
    metric: str
    variant: str
    n_units: int
    mean: float
    low: float
    high: float


def window_means(
    records: Iterable[ABMetricsV2],
    experiment: Experiment,
    since: datetime | None,
    until: datetime | None,
) -> list[WindowMean]:
    """Per window, each variant's mean and interval, from the units active in that window alone."""
    wanted = experiment_filter(experiment)
    by_window: dict[tuple[datetime, datetime], list[ABMetricsV2]] = defaultdict(list)
    for rec in records:
        if rec.experiment_id != wanted:
            continue
        if (since is not None and rec.window_start < since) or (until is not None and rec.window_end > until):
            continue
        by_window[(rec.window_start, rec.window_end)].append(rec)
    rows: list[WindowMean] = []
    for (start, end), recs in sorted(by_window.items()):
        report = analyse(sum_unit_totals(recs, wanted), experiment, min_units=2)
        for metric, per in report.means.items():
            for variant, est in per.items():
                low, high = est.ci.low, est.ci.high
                rows.append(WindowMean(start, end, metric, variant, est.n_units, est.mean, low, high))
    return rows


def _num(x: float, digits: int = 4) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.1f}%"


def _p(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def lift_rows(report: ExperimentReport) -> list[dict[str, Any]]:
    """One flat row per (metric, treatment): both means with intervals, the lift, p, always-valid CI."""
    rows = []
    for metric, per in report.lifts.items():
        control = report.means[metric][report.control]
        for variant, lift in per.items():
            treated = report.means[metric][variant]
            rows.append(
                {
                    "metric": metric,
                    "control": report.control,
                    "variant": variant,
                    "control_units": control.n_units,
                    "control_mean": control.mean,
                    "control_low": control.ci.low,
                    "control_high": control.ci.high,
                    "variant_units": treated.n_units,
                    "variant_mean": treated.mean,
                    "variant_low": treated.ci.low,
                    "variant_high": treated.ci.high,
                    "lift": lift.lift,
                    "lift_low": lift.ci.low,
                    "lift_high": lift.ci.high,
                    "p_value": lift.p_value,
                    "always_valid_low": lift.sequential_ci.low,
                    "always_valid_high": lift.sequential_ci.high,
                    "notes": "; ".join(lift.notes),
                }
            )
    return rows


def srm_line(report: ExperimentReport) -> str:
    srm = report.srm
    counts = ", ".join(f"{k} {v}" for k, v in srm.counts.items())
    verdict = "FLAGGED: do not trust the lifts" if srm.flagged else "ok"
    return (
        f"experiment {report.experiment_id} (unit: {report.unit}, control {report.control}); units: "
        f"{counts}; SRM chi-square p = {_p(srm.p_value)} (flagged below {srm.threshold:g}): {verdict}"
    )


def format_lift_table(report: ExperimentReport) -> str:
    """Markdown: the SRM line, then per metric and treatment the means, the lift and its intervals."""
    lines = [
        srm_line(report),
        "",
        "| metric | variant | units | control mean [95% CI] | variant mean [95% CI] | lift [95% CI] | p "
        "| lift, always-valid 95% CI |",
        "|---|---|---:|---|---|---|---:|---|",
    ]
    for row in lift_rows(report):
        lines.append(
            f"| {row['metric']} | {row['variant']} vs {row['control']} | "
            f"{row['variant_units']} / {row['control_units']} | "
            f"{_num(row['control_mean'])} [{_num(row['control_low'])}, {_num(row['control_high'])}] | "
            f"{_num(row['variant_mean'])} [{_num(row['variant_low'])}, {_num(row['variant_high'])}] | "
            f"{_pct(row['lift'])} [{_pct(row['lift_low'])}, {_pct(row['lift_high'])}] | "
            f"{_p(row['p_value'])} | [{_pct(row['always_valid_low'])}, {_pct(row['always_valid_high'])}] |"
        )
    notes = list(report.notes) + list(report.srm.notes)
    notes += sorted({n for row in lift_rows(report) for n in row["notes"].split("; ") if n})
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def window_dicts(rows: Sequence[WindowMean]) -> list[dict[str, Any]]:
    return [
        {
            "window_start": r.window_start.isoformat(),
            "window_end": r.window_end.isoformat(),
            "metric": r.metric,
            "variant": r.variant,
            "units": r.n_units,
            "mean": r.mean,
            "low": r.low,
            "high": r.high,
        }
        for r in rows
    ]


def format_window_table(rows: Sequence[WindowMean]) -> str:
    lines = ["| window start | metric | variant | units | mean [95% CI] |", "|---|---|---|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r.window_start.isoformat()} | {r.metric} | {r.variant} | {r.n_units} | "
            f"{_num(r.mean)} [{_num(r.low)}, {_num(r.high)}] |"
        )
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(value: Any) -> str:
    """JSON with NaN as null (an undefined mean or lift), as every JSON reader accepts."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return orjson.dumps(clean(value), option=orjson.OPT_INDENT_2).decode()


def report_json(report: ExperimentReport) -> dict[str, Any]:
    srm = report.srm
    return {
        "experiment_id": report.experiment_id,
        "unit": report.unit,
        "control": report.control,
        "srm": {
            "counts": srm.counts,
            "p_value": srm.p_value,
            "flagged": srm.flagged,
            "notes": list(srm.notes),
        },
        "lifts": lift_rows(report),
        "notes": list(report.notes),
    }
