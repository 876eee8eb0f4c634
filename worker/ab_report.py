"""`qlworker ab-report` (and the demo's summary): per-unit totals from the `ab-units` topic, analysed
by `analysis/` for one experiment and time range, printed as a table, CSV or JSON, optionally plotted.

The statistics need scipy and the plot matplotlib (the `analysis` extra), which the slim worker image
does not carry: they are imported here only when a report is made, and their absence is a clear
message naming the extra, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from schemas import ABMetricsV2, EventError, Experiment, decode_event
from worker.config import Settings
from worker.experiments import load_experiments
from worker.kafka_io import read_topic

ANALYSIS_EXTRA = "the 'analysis' extra (scipy, matplotlib): pip install 'querylife[analysis]'"
Format = Literal["table", "csv", "json"]


class ReportError(RuntimeError):
    """The report cannot be made as asked; the message says why (missing extra, unknown experiment)."""


@dataclass(frozen=True)
class ReportRequest:
    """What an analyst asks for: one experiment (None: searches outside any), a range, a layout."""

    experiment_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    per_window: bool = False
    fmt: Format = "table"
    plot: Path | None = None
    planned_units: int = 5000


def aware_time(text: str) -> datetime:
    """An ISO-8601 time with its timezone (argparse type): a naive time would be guessed at."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone (add Z or +00:00)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="experiment id (default: searches outside any experiment)")
    parser.add_argument(
        "--experiments-file", type=Path, help="declarations (default: QL_WORKER_EXPERIMENTS_FILE)"
    )
    parser.add_argument("--since", type=aware_time, help="first window start, ISO-8601 with timezone")
    parser.add_argument("--until", type=aware_time, help="last window end (exclusive)")
    parser.add_argument("--per-window", action="store_true", help="means per window instead of lifts")
    parser.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="Markdown table, CSV or JSON"
    )
    parser.add_argument("--plot", type=Path, help="write the per-window plot (PNG) here")
    parser.add_argument(
        "--planned-units", type=int, default=5000, help="tuning of the always-valid interval (fix in advance)"
    )


def request_from_args(args: argparse.Namespace) -> ReportRequest:
    return ReportRequest(
        args.experiment, args.since, args.until, args.per_window, args.format, args.plot, args.planned_units
    )


def read_unit_records(settings: Settings) -> list[ABMetricsV2]:
    """Every decodable record of the `ab-units` topic (the analysis keeps the latest per key)."""
    records = []
    for _key, value in read_topic(settings, settings.topics.ab_units):
        try:
            records.append(decode_event(ABMetricsV2, value))
        except EventError:
            continue
    return records


def render(records: list[ABMetricsV2], experiments: dict[str, Experiment], request: ReportRequest) -> str:
    """The report's text; writes the plot when asked. Raises `ReportError`."""
    try:
        from analysis import report
    except ImportError as exc:
        raise ReportError(f"the A/B report needs {ANALYSIS_EXTRA} ({exc})") from exc
    if request.experiment_id is None:
        experiment = report.implicit_experiment(records)
    elif request.experiment_id in experiments:
        experiment = experiments[request.experiment_id]
    else:
        known = ", ".join(sorted(experiments)) or "none"
        raise ReportError(f"experiment {request.experiment_id!r} is not declared (declared: {known})")
    since = request.since or (experiment.start if request.experiment_id else None)
    until = request.until or experiment.end
    windows = report.window_means(records, experiment, since, until)
    if request.plot is not None:
        try:
            from analysis.plot import plot_windows
        except ImportError as exc:
            raise ReportError(f"--plot needs {ANALYSIS_EXTRA} ({exc})") from exc
        plot_windows(windows, request.plot, f"experiment {experiment.experiment_id} ({experiment.unit})")
    if request.per_window:
        rows = report.window_dicts(windows)
        if request.fmt == "table":
            return report.format_window_table(windows)
        return report.to_csv(rows) if request.fmt == "csv" else report.to_json(rows)
    result = report.analyse_range(records, experiment, since, until, request.planned_units)
    if request.fmt == "table":
        return report.format_lift_table(result)
    if request.fmt == "csv":
        return report.to_csv(report.lift_rows(result))
    return report.to_json(report.report_json(result))


def run(args: argparse.Namespace) -> int:
    """`qlworker ab-report`: 0, or 2 with a message on stderr when the report cannot be made."""
    settings = Settings()
    try:
        experiments = load_experiments(args.experiments_file or settings.worker.experiments_file)
        print(render(read_unit_records(settings), experiments, request_from_args(args)))
    except (ReportError, ValueError) as exc:
        print(f"qlworker ab-report: {exc}", file=sys.stderr)
        return 2
    return 0
