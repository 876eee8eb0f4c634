"""Refit a head's label thresholds on validation and report each label's precision and recall.

``python -m querylife.labels refit`` chooses new thresholds for the stated targets
(``calibration.LABEL_TARGETS``) on the validation pairs of the committed head, on its existing Platt
scale (scores do not move, only labels; the head's weights and version stay), writes them into
head.json and writes the report. ``python -m querylife.labels report`` only writes the report:
``reports/model_labels.md`` and ``.json``, validation and test, before (the thresholds a refit
replaced) and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from querylife.calibration import (
    LABEL_TARGETS,
    LABELS,
    MIN_NAMED,
    Calibration,
    LabelTarget,
    precision_recall_curve,
    refit_thresholds,
)
from querylife.checkpoint import DEFAULT_DIR, Head, load_head, save_calibration
from querylife.evaluate import label_metrics

SPLITS = ("val", "test")
RECALL_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
PRECISION_LEVELS = (0.7, 0.8, 0.85, 0.9, 0.95)
REPORT_NAME = "model_labels"


def split_pairs(
    head: Head, meta: dict[str, Any], data_dir: Path | None, cache_dir: Path | None
) -> dict[str, Any]:
    """Cosine similarity and grade of every (query, product) pair of validation and test."""
    from querylife.train import prepare, split_similarities

    kwargs: dict[str, Any] = {"image_size": int(meta["image_size"])}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    prep = prepare(**kwargs)
    pairs: dict[str, Any] = {"version": meta["version"]}
    for name in SPLITS:
        split = prep.splits[name]
        pairs[name] = (split_similarities(head, split).numpy().ravel(), split.grades().ravel())
        pairs[f"{name}_size"] = (len(split.queries), len(split.products))
    return pairs


def headroom(prob: np.ndarray, grades: np.ndarray, target: LabelTarget) -> dict[str, dict[str, float]]:
    """What any threshold could reach: best precision at each recall level, best recall at each
    precision level (thresholds naming fewer than ``MIN_NAMED`` pairs excluded)."""
    _, prec, rec, named = precision_recall_curve(prob, grades, target)
    ok = named >= MIN_NAMED
    return {
        "precision_at_recall": {
            f"{r:g}": float(prec[ok & (rec >= r)].max(initial=0.0)) for r in RECALL_LEVELS
        },
        "recall_at_precision": {
            f"{q:g}": float(rec[ok & (prec >= q)].max(initial=0.0)) for q in PRECISION_LEVELS
        },
    }


def _metrics(cal: Calibration, thresholds: Sequence[float], pairs: dict[str, Any]) -> dict[str, Any]:
    targets = [f.target for f in cal.label_fits] or list(LABEL_TARGETS)
    out: dict[str, Any] = {}
    for name in SPLITS:
        sims, grades = pairs[name]
        prob = cal.probability(torch.from_numpy(sims)).numpy()
        out[name] = label_metrics(prob, grades, thresholds, targets)
    return out


def build_report(cal: Calibration, pairs: dict[str, Any]) -> dict[str, Any]:
    sims, grades = pairs["val"]
    prob = cal.probability(torch.from_numpy(sims)).numpy()
    targets = [f.target for f in cal.label_fits] or list(LABEL_TARGETS)
    report: dict[str, Any] = {
        "model_version": pairs["version"],
        "method": cal.method,
        "a": cal.a,
        "b": cal.b,
        "thresholds": cal.thresholds,
        "sizes": {n: {"queries": pairs[f"{n}_size"][0], "products": pairs[f"{n}_size"][1]} for n in SPLITS},
        "fits": cal.to_dict()["label_fits"],
        "after": _metrics(cal, cal.thresholds, pairs),
        "headroom_val": {t.label: headroom(prob, grades, t) for t in targets},
    }
    if cal.replaced is not None:
        report["before"] = {
            "method": cal.replaced["method"],
            "thresholds": cal.replaced["thresholds"],
            **_metrics(cal, cal.replaced["thresholds"], pairs),
        }
    return report


def _pr(m: dict[str, Any]) -> str:
    return f"{m['precision']:.3f} / {m['recall']:.3f}"


def _claim(target: dict[str, Any]) -> str:
    k = int(target["boundary"])
    if target["side"] == "above":
        return "grade 3" if k == 3 else f"grade >= {k}"
    return "grade 0" if k == 1 else f"grade < {k}"


def _target_cell(m: dict[str, Any]) -> str:
    return _pr(m) + ("" if m["precision_met"] and m["recall_met"] else " (missed)")


def _target_rows(report: dict[str, Any]) -> list[str]:
    """One row per stated target: floors, threshold, validation and test (before, when refit)."""
    before = report.get("before")
    cols = [f"before: {s}" for s in SPLITS] if before else []
    rows = [
        "| label (claims) | floors: precision / recall | threshold | "
        + " | ".join([*cols, *SPLITS])
        + " | rule |",
        "| --- | --- | --- |" + " --- |" * (len(cols) + len(SPLITS) + 1),
    ]
    for f in report["fits"]:
        t = f["target"]
        runs = [before, report["after"]] if before else [report["after"]]
        cells = [_target_cell(r[s]["targets"][t["label"]]) for r in runs for s in SPLITS]
        rows.append(
            f"| {t['label']} ({_claim(t)}) | {t['min_precision']:.2f} / {t['min_recall']:.2f} | "
            f"{f['threshold']:.5f} | " + " | ".join(cells) + f" | {f['rule']} |"
        )
    return rows


def _label_rows(report: dict[str, Any]) -> list[str]:
    before = report.get("before")
    head = "| label | split | " + ("before: precision / recall (share) | " if before else "")
    rows = [head + "precision / recall (share) |", "| --- | --- | " + ("--- | " if before else "") + "--- |"]
    for name in LABELS:
        for split in SPLITS:
            cells = [before[split]["labels"][name]] if before else []
            cells.append(report["after"][split]["labels"][name])
            text = " | ".join(f"{_pr(m)} ({m['share']:.3f})" for m in cells)
            rows.append(f"| {name} | {split} | {text} |")
    return rows


def _headroom_rows(report: dict[str, Any]) -> list[str]:
    rec = " | ".join(f"P@R>={r:g}" for r in RECALL_LEVELS)
    prec = " | ".join(f"R@P>={q:g}" for q in PRECISION_LEVELS)
    rows = [
        f"| label | {rec} | {prec} |",
        "| --- |" + " --- |" * (len(RECALL_LEVELS) + len(PRECISION_LEVELS)),
    ]
    for label, h in report["headroom_val"].items():
        cells = [*h["precision_at_recall"].values(), *h["recall_at_precision"].values()]
        rows.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return rows


def render(report: dict[str, Any], command: str) -> str:
    sizes = ", ".join(
        f"{n}: {s['queries']} queries x {s['products']} products" for n, s in report["sizes"].items()
    )
    thr = ", ".join(f"{t:.5f}" for t in report["thresholds"])
    lines = [
        "## Label precision and recall",
        "",
        f"Generated by `{command}` for head `{report['model_version']}` ({sizes}; every pair, grades from "
        f"querygen). Thresholds on the calibrated probability (partial, relevant, exact): {thr}, chosen on "
        f"validation by `{report['method']}` (targets: `querylife.calibration.LABEL_TARGETS`). "
        "Precision: named pairs with the claimed grades; recall: pairs with those grades that are named.",
        "",
        "### Stated targets",
        "",
        *_target_rows(report),
        "",
        "### Each label (label k vs grade k)",
        "",
    ]
    if "before" in report:
        old = ", ".join(f"{t:.5f}" for t in report["before"]["thresholds"])
        lines += [f"Before: thresholds {old} (`{report['before']['method']}`).", ""]
    lines += [*_label_rows(report), "", "### Headroom on validation (best over all thresholds)", ""]
    lines += _headroom_rows(report)
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], reports: Path, command: str) -> Path:
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    path = reports / f"{REPORT_NAME}.md"
    path.write_text(render(report, command))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m querylife.labels", description=__doc__)
    ap.add_argument("action", choices=("refit", "report"))
    ap.add_argument("--head", type=Path, default=DEFAULT_DIR, help="head checkpoint directory")
    ap.add_argument("--reports", type=Path, default=Path("reports"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(args)
    torch.set_num_threads(1)  # a few small matmuls; the features come from the cache
    head, cal, meta = load_head(a.head)
    pairs = split_pairs(head, meta, a.data_dir, a.cache_dir)
    if a.action == "refit":
        cal = refit_thresholds(cal, *pairs["val"])
        pairs["version"] = save_calibration(a.head, cal)  # new thresholds, new version
    path = write_report(build_report(cal, pairs), a.reports, "python -m querylife.labels " + " ".join(args))
    for f in cal.label_fits:
        print(f"{f.target.label}: threshold {f.threshold:.5f}, validation {f.precision:.3f} / {f.recall:.3f}")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
