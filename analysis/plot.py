"""The per-window plot of `qlworker ab-report --plot`: each metric's mean per window, with its 95 %
interval by unit as a band, one colour per variant (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from analysis.report import WindowMean

PLOTTED = ("ctr", "conversion", "relevance_shown", "relevance_top3")
LABELS = {
    "ctr": "CTR (clicks / impressions)",
    "conversion": "conversion (searches with an order)",
    "relevance_shown": "mean relevance of shown products",
    "relevance_top3": "mean relevance of the top 3",
}


def plot_windows(rows: Sequence[WindowMean], path: Path, title: str) -> Path:
    """Write the plot to `path` (PNG); windows where an arm has no interval show its mean alone."""
    fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(9, 2.4 * len(PLOTTED)), sharex=True)
    variants = sorted({r.variant for r in rows})
    for ax, metric in zip(axes, PLOTTED, strict=True):
        for variant in variants:
            mine = [r for r in rows if r.metric == metric and r.variant == variant and not math.isnan(r.mean)]
            if not mine:
                continue
            x = [r.window_start for r in mine]
            (line,) = ax.plot(x, [r.mean for r in mine], marker="o", markersize=3, label=variant)
            low = [r.low if not math.isnan(r.low) else r.mean for r in mine]
            high = [r.high if not math.isnan(r.high) else r.mean for r in mine]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_ylabel(LABELS[metric], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(title="variant", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[-1].set_xlabel("window start (UTC); bands: 95 % interval by unit (delta method)")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
