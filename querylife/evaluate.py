"""Test-split evaluation of trained heads and the model report (``reports/model_eval.md`` + PNGs).

Queries are generated from test products and retrieve among test products only (never trained on).
Graded labels 0-3 come from ``querygen`` (products absent from a query's dict are 0).

Metric definitions (per query, averaged):
- NDCG@10 with gain 2^grade - 1, ideal DCG over all test products;
- R@k: relevant (grade >= 2) products in the top k / min(k, #relevant) (capped recall, so R@1 is
  precision@1 and a query with many exact matches can still reach 1.0);
- MRR: reciprocal rank of the first relevant (grade >= 2) product;
- AUC: calibrated probability, relevant (grade >= 2) vs not, over all test (query, product) pairs;
- labels: each label's precision (named pairs with its grade) and recall (pairs of its grade named),
  and each stated target's (``calibration.LABEL_TARGETS``), over all test pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from querylife.calibration import LABEL_TARGETS, LABELS, LabelTarget, measure
from querylife.checkpoint import Head
from querylife.splits import SplitData, split_similarities

REPORTS_DIR = Path("reports")


def retrieval_metrics(
    sims: np.ndarray, grades: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    per = per_query_metrics(sims, grades, ks)
    return {k: float(np.mean(v)) for k, v in per.items()}


def per_query_metrics(
    sims: np.ndarray, grades: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, np.ndarray]:
    _, p = sims.shape
    kmax = min(max(*ks, 10), p)
    top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    g_top = np.take_along_axis(grades, top, axis=1).astype(np.float64)
    disc = 1.0 / np.log2(np.arange(2, kmax + 2))
    dcg = ((2.0**g_top - 1.0)[:, :10] * disc[:10]).sum(1)
    ideal = -np.sort(-grades.astype(np.float64), axis=1)[:, :10]
    idcg = ((2.0**ideal - 1.0) * disc[: ideal.shape[1]]).sum(1)
    out: dict[str, np.ndarray] = {"ndcg10": np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)}
    rel = grades >= 2
    n_rel = rel.sum(1)
    rel_top = g_top >= 2
    for k in ks:
        hit = rel_top[:, :k].sum(1)
        out[f"r{k}"] = np.where(n_rel > 0, hit / np.maximum(np.minimum(k, n_rel), 1), 0.0)
    # MRR over the full ranking: rank of the best-scored relevant product
    masked = np.where(rel, sims, -np.inf)
    best_rel = masked.max(1)
    rank = (sims > best_rel[:, None]).sum(1) + 1
    out["mrr"] = np.where(n_rel > 0, 1.0 / rank, 0.0)
    return out


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC via the rank-sum statistic (ties averaged)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    prob, y = prob.ravel(), y.ravel().astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(prob[m].mean() - y[m].mean())
    return float(ece)


def label_metrics(
    prob: np.ndarray, grades: np.ndarray, thresholds: Sequence[float], targets: Sequence[LabelTarget]
) -> dict[str, Any]:
    """Per label (label k vs grade k) and per stated target: share named, precision, recall."""
    p, g = np.asarray(prob, dtype=np.float64).ravel(), np.asarray(grades).ravel()
    k = np.searchsorted(np.asarray(thresholds, dtype=np.float64), p, side="right")  # Calibration.label
    labels: dict[str, dict[str, float]] = {}
    for grade, name in enumerate(LABELS):
        named, claimed = k == grade, g == grade
        tp = float((named & claimed).sum())
        labels[name] = {
            "share": float(named.mean()),
            "precision": tp / max(int(named.sum()), 1),
            "recall": tp / max(int(claimed.sum()), 1),
        }
    stated: dict[str, dict[str, float | bool]] = {}
    for t in targets:
        precision, recall = measure(p, g, t, float(thresholds[t.boundary - 1]))
        stated[t.label] = {
            "precision": precision,
            "recall": recall,
            "precision_met": precision >= t.min_precision,
            "recall_met": recall >= t.min_recall,
        }
    return {"labels": labels, "targets": stated}


def evaluate_head(head: Head, calibration: Any, split: SplitData, per_type_top: int = 12) -> dict[str, Any]:
    """Test metrics for one head on a split (the test split, in reports)."""
    sims = split_similarities(head, split).numpy()
    grades = split.grades()
    per = per_query_metrics(sims, grades)
    res: dict[str, Any] = {k: float(np.mean(v)) for k, v in per.items()}
    prob = calibration.probability(torch.from_numpy(sims)).numpy()
    y = grades >= 2
    res["auc"] = auc(prob, y)
    res["ece"] = expected_calibration_error(prob, y)
    targets = [f.target for f in getattr(calibration, "label_fits", [])] or list(LABEL_TARGETS)
    res["labels"] = label_metrics(prob, grades, calibration.thresholds, targets)
    src_types = [split.types[int(j)] for j in split.query_product_idx]
    by_type: dict[str, list[int]] = defaultdict(list)
    for qi, t in enumerate(src_types):
        by_type[t].append(qi)
    top_types = sorted(by_type, key=lambda t: -len(by_type[t]))[:per_type_top]
    res["per_type"] = {
        t: {"n_queries": len(by_type[t]), "ndcg10": float(per["ndcg10"][by_type[t]].mean())}
        for t in top_types
    }
    res["n_queries"], res["n_products"] = int(sims.shape[0]), int(sims.shape[1])
    return res


def zero_shot_text_only(split: SplitData) -> dict[str, Any]:
    """No training at all: raw MiniLM query<->title cosine (images unused: no joint space exists)."""
    q = F.normalize(split.query_feats, dim=-1)
    t = F.normalize(split.title, dim=-1)
    sims = (q @ t.t()).numpy()
    grades = split.grades()
    res: dict[str, Any] = retrieval_metrics(sims, grades)
    res["auc"] = auc(sims, grades >= 2)  # monotone transform: AUC of raw cosine
    res["ece"] = float("nan")
    return res


# ------------------------------------------------------------------------------------------------
# Plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["train_loss"] for h in hist], label=name)
        axes[1].plot(ep, [h["val_ndcg10"] for h in hist], label=name)
    axes[0].set_title("training loss (per-variant objective, not comparable across variants)")
    axes[0].set_xlabel("epoch")
    axes[1].set_title("validation NDCG@10")
    axes[1].set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_score_hist(head: Head, calibration: Any, split: SplitData, path: Path, title: str) -> None:
    plt = _plt()
    sims = split_similarities(head, split).numpy()
    grades = split.grades()
    prob = calibration.probability(torch.from_numpy(sims)).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for g, c in zip(range(4), ("tab:gray", "tab:blue", "tab:orange", "tab:green"), strict=True):
        m = grades == g
        if m.any():
            axes[0].hist(
                sims[m], bins=60, density=True, alpha=0.5, color=c, label=f"grade {g} (n={int(m.sum())})"
            )
            axes[1].hist(prob[m], bins=60, density=True, alpha=0.5, color=c, label=f"grade {g}")
    for t in calibration.thresholds:
        axes[1].axvline(t, color="k", ls="--", lw=0.8)
    axes[0].set_title(f"{title}: cosine similarity by label (test)")
    axes[1].set_title("calibrated probability (dashed: label thresholds)")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(head: Head, calibration: Any, split: SplitData, path: Path) -> None:
    plt = _plt()
    sims = split_similarities(head, split).numpy().ravel()
    y = (split.grades() >= 2).ravel()
    prob = calibration.probability(torch.from_numpy(sims)).numpy()
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(prob, edges) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for b in range(10):
        m = idx == b
        if m.sum() > 20:
            xs.append(prob[m].mean())
            ys.append(y[m].mean())
            ns.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(xs, ys, "o-")
    ax.set_xlabel("calibrated probability")
    ax.set_ylabel("fraction relevant (grade >= 2)")
    ax.set_title("reliability (test pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict[str, Any]], path: Path, context: dict[str, Any]) -> None:
    lines = ["# Query-LIFE model evaluation", ""]
    lines += [
        f"Generated by `{context.get('command', 'querylife reproduce')}`. {context.get('summary', '')}",
        "",
    ]
    lines += [
        "| variant | NDCG@10 | R@1 | R@5 | R@10 | MRR | AUC | ECE | best epoch | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        m = r["test"]
        lines.append(
            f"| {r['label']} | {m['ndcg10']:.4f} | {m['r1']:.4f} | {m['r5']:.4f} | {m['r10']:.4f} | "
            f"{m['mrr']:.4f} | {m['auc']:.4f} | {m['ece']:.4f} | {r.get('best_epoch', '-')} | "
            f"{r.get('train_seconds', 0):.0f} |"
        )
    lines.append("")
    for sec in context.get("sections", []):
        lines += [sec, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
