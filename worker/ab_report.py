"""The per-variant A/B table merged from the metrics topic: `qlworker ab-report` and the demo's summary."""

from __future__ import annotations

from schemas import ABMetrics, EventError, decode_event
from worker.ab_metrics import merge
from worker.config import Settings
from worker.kafka_io import read_topic


def ab_rows(settings: Settings) -> list[ABMetrics]:
    """Per-variant totals over all windows, merged from the partial aggregates in the metrics topic."""
    partials = []
    for _key, value in read_topic(settings, settings.topics.ab_metrics):
        try:
            partials.append(decode_event(ABMetrics, value))
        except EventError:
            continue
    return merge(partials, per_window=False)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_ab_table(rows: list[ABMetrics]) -> str:
    """A Markdown table an analyst can paste: counts, mean relevance, CTR and conversion with 95% CIs."""
    lines = [
        "| variant | queries | impressions | mean relevance shown | top-3 | clicked | CTR (95% CI) "
        "| conversion (95% CI) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ctr_ci = f" [{_pct(r.ctr_ci.low)}, {_pct(r.ctr_ci.high)}]" if r.ctr_ci else ""
        conv_ci = f" [{_pct(r.conversion_ci.low)}, {_pct(r.conversion_ci.high)}]" if r.conversion_ci else ""
        lines.append(
            f"| {r.variant} | {r.queries} | {r.impressions} | {_num(r.mean_relevance_shown)} | "
            f"{_num(r.mean_relevance_top3)} | {_num(r.mean_relevance_clicked)} | {_pct(r.ctr)}{ctr_ci} | "
            f"{_pct(r.conversion_rate)}{conv_ci} |"
        )
    return "\n".join(lines)
