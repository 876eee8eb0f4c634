"""Honest evaluation (#22): every variant with several seeds, on generated test queries and on both
halves of the hand-written set, with paired bootstrap intervals against the fine-tuned mean-fusion
baseline and each query set's minimum detectable effect.

Per query, a variant's score is its NDCG@10 averaged over its seeds; deltas are paired by query. The
interval therefore covers query sampling; the seeds' spread is reported beside it (the standard
deviation of the per-seed means), not folded into it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from querylife.bootstrap import Interval, min_detectable_effect, paired_bootstrap
from querylife.checkpoint import Head, load_head
from querylife.data import text_features_cached
from querylife.evaluate import per_query_metrics
from querylife.handqueries import HandQuery
from querylife.splits import SplitData, split_similarities
from querylife.train import Prepared, genfilt_cache_path, train, variant_config

RUNS_V2_DIR = Path(".cache/runs-v2")
BASELINE = "baseline_mean"
V2_VARIANTS = (
    "baseline_mean",
    "baseline_concat",
    "zero_shot",
    "querylife_full",
    "ablate_no_type_fusion",
    "ablate_no_alignment",
    "ablate_no_genfilt",
    "image_adapter",
)
SERVED = "served head"
SECTION_BEGIN = "<!-- eval-v2:begin -->"
SECTION_END = "<!-- eval-v2:end -->"


LARGE_TAG = "large"
IMAGE_PARENT = "ablate_no_genfilt"  # also scored with images hidden; the image adapter's parent
JUDGED = "querylife_full"  # the variant that --judges retrains with each other GenFilt judge


def with_judge(variant: str, judge: str) -> str:
    """A variant trained with a named GenFilt judge: "querylife_full[gemma3]" in tables and run dirs."""
    return f"{variant}[{judge}]"


def parse_variant(name: str, default_judge: str) -> tuple[str, str]:
    """The base variant and its judge: "querylife_full[gemma3]" -> ("querylife_full", "gemma3"); a
    plain name keeps the default judge."""
    if name.endswith("]") and "[" in name:
        base, judge = name[:-1].split("[", 1)
        return base, judge
    return name, default_judge


def run_dir(runs_dir: Path, variant: str, seed: int, tag: str = "") -> Path:
    return runs_dir / f"{variant}{'@' + tag if tag else ''}-s{seed}"


def train_seeds(
    prep: Prepared, variants: Sequence[str], seeds: Sequence[int], runs_dir: Path, judge: str, tag: str = ""
) -> dict[str, list[Path]]:
    """Each variant trained once per seed; a finished run (metrics.json present) is reused, refused
    if its GenFilt judge is not the one asked for (plain run names do not carry the judge)."""
    runs: dict[str, list[Path]] = {}
    for name in variants:
        for seed in seeds:
            out = run_dir(runs_dir, name, seed, tag)
            base, variant_judge = parse_variant(name, judge)
            cfg = variant_config(base, judge=variant_judge, image_size=prep.image_size, seed=seed)
            done = out / "metrics.json"
            if not done.exists():
                train(cfg, prep, out, resume=True, progress=False)
            elif (trained := json.loads(done.read_text())["config"]["genfilt"]) != cfg.genfilt:
                raise ValueError(
                    f"{out} was trained with GenFilt {trained!r}, not {cfg.genfilt!r}: ask for "
                    f"{with_judge(base, cfg.genfilt)} (--judges) or use another --runs-dir"
                )
            runs.setdefault(name, []).append(out)
    return runs


def hand_split(test: SplitData, queries: Sequence[HandQuery], cache_dir: Path) -> SplitData:
    """The test split's products with hand-written queries in place of generated ones (no query has a
    source product, so query_product_idx is a placeholder no metric here reads)."""
    feats = text_features_cached([q.text for q in queries], cache_dir=cache_dir, desc="hand query features")
    return replace(
        test,
        queries=list(queries),
        query_feats=feats,
        query_product_idx=torch.zeros(len(queries), dtype=torch.long),
    )


def per_query_ndcg(head: Head, split: SplitData) -> np.ndarray:
    sims = split_similarities(head, split).numpy()
    return per_query_metrics(sims, split.grades())["ndcg10"]


@dataclass
class Scores:
    """Per-query NDCG@10 of every variant on every query set: ``values[set][variant]`` is [seeds, Q]."""

    values: dict[str, dict[str, np.ndarray]]

    def query_mean(self, qset: str, variant: str) -> np.ndarray:
        return self.values[qset][variant].mean(axis=0)


def no_images(variant: str) -> str:
    """The row of a variant scored with every product's image hidden (fusion falls back to the title)."""
    return f"{variant} (images hidden)"


def score_runs(
    runs: dict[str, list[Path]],
    sets: dict[str, SplitData],
    served: Path | None = None,
    blind: Sequence[str] = (),
) -> Scores:
    """Load every run once and score it on every query set; the served head is one more row, and each
    variant in ``blind`` one more with the images hidden (what the image side adds, paired by query)."""
    heads: dict[str, list[Head]] = {n: [load_head(p)[0] for p in paths] for n, paths in runs.items()}
    if served is not None:
        heads[SERVED] = [load_head(served)[0]]
    values: dict[str, dict[str, np.ndarray]] = {}
    for qset, split in sets.items():
        values[qset] = {n: np.stack([per_query_ndcg(h, split) for h in hs]) for n, hs in heads.items()}
        hidden = replace(split, has_image=torch.zeros_like(split.has_image))
        for n in blind:
            values[qset][no_images(n)] = np.stack([per_query_ndcg(h, hidden) for h in heads[n]])
    return Scores(values)


@dataclass(frozen=True)
class Cell:
    mean: float
    seed_sd: float
    seeds: int
    vs_baseline: Interval | None


def summarise(scores: Scores, n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Cell]]:
    """Mean, seed spread and paired interval against the baseline, per query set and variant."""
    out: dict[str, dict[str, Cell]] = {}
    for qset, by_variant in scores.values.items():
        base = scores.query_mean(qset, BASELINE) if BASELINE in by_variant else None
        out[qset] = {}
        for name, v in by_variant.items():
            per_seed = v.mean(axis=1)
            ci = None
            if base is not None and name != BASELINE:
                ci = paired_bootstrap(v.mean(axis=0), base, n_boot=n_boot, seed=seed)
            sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
            out[qset][name] = Cell(float(per_seed.mean()), sd, len(per_seed), ci)
    return out


def set_mde(scores: Scores, qset: str) -> float:
    """A query set's minimum detectable effect: the median over variants of the MDE of their paired
    deltas against the baseline (what one more module would need to show up here)."""
    by_variant = scores.values[qset]
    base = scores.query_mean(qset, BASELINE)
    mdes = [
        min_detectable_effect(scores.query_mean(qset, n) - base)
        for n in by_variant
        if n not in (BASELINE, SERVED)
    ]
    return float(np.median(mdes)) if mdes else float("nan")


def _cell(c: Cell) -> str:
    spread = f" ± {c.seed_sd:.4f}" if c.seeds > 1 else ""
    if c.vs_baseline is None:
        return f"{c.mean:.4f}{spread}"
    i = c.vs_baseline
    return f"{c.mean:.4f}{spread}<br>Δ {i.delta:+.4f} [{i.lo:+.4f}, {i.hi:+.4f}]"


def render_section(
    table: dict[str, dict[str, Cell]], mdes: dict[str, float], sizes: dict[str, int], context: dict[str, Any]
) -> str:
    """Markdown: the table, the generated-vs-hand gap, MDEs and a plain verdict per module."""
    sets = list(table)
    variants = list(table[sets[0]])
    lines = [
        SECTION_BEGIN,
        "## Honest evaluation: seeds, hand-written queries, bootstrap intervals",
        "",
        f"Generated by `{context['command']}`. NDCG@10, mean over {context['seeds']} seeds ± the seeds' "
        f"standard deviation; Δ: paired difference against `{BASELINE}` (fine-tuned, mean fusion), "
        f"per-query scores averaged over seeds, with its 95 % bootstrap interval over queries "
        f"({context['n_boot']} resamples). Products: the {context['products']} test-split products.",
        "",
        "| variant | " + " | ".join(f"{s} ({sizes[s]} q)" for s in sets) + " | gap generated − hand dev |",
        "| --- | " + " | ".join("---" for _ in sets) + " | --- |",
    ]
    for v in variants:
        gap = table[sets[0]][v].mean - table["hand dev"][v].mean if "hand dev" in table else float("nan")
        lines.append(f"| {v} | " + " | ".join(_cell(table[s][v]) for s in sets) + f" | {gap:+.4f} |")
    lines += ["", "Minimum detectable effect (80 % power, two-sided 5 %), NDCG@10:", ""]
    lines += [f"- {s}: {mdes[s]:.4f}" for s in sets]
    lines += ["", "Which modules help (interval against the baseline; dev half decides):", ""]
    for v in variants:
        verdicts = [
            f"{s}: {c.vs_baseline.verdict()} ({c.vs_baseline.delta:+.4f})"
            for s in sets
            if (c := table[s][v]).vs_baseline is not None
        ]
        if verdicts:
            lines.append(f"- {v}: " + "; ".join(verdicts))
    for note in context.get("notes", []):
        lines += ["", note]
    lines.append(SECTION_END)
    return "\n".join(lines)


MODULES = {  # module -> (the variant with it, its parent without it)
    "type fusion": ("querylife_full", "ablate_no_type_fusion"),
    "query-aware alignment": ("querylife_full", "ablate_no_alignment"),
    "GenFilt": ("querylife_full", "ablate_no_genfilt"),
    "image adapter": ("image_adapter", IMAGE_PARENT),
    "images at all": (IMAGE_PARENT, no_images(IMAGE_PARENT)),
}


def delta_cell(scores: Scores, qset: str, with_it: str, without: str, n_boot: int) -> str:
    """One table cell: `with_it` minus `without` on a query set, paired by query, with its interval and
    verdict; "-" when either row is missing there."""
    if with_it not in scores.values[qset] or without not in scores.values[qset]:
        return "-"
    i = paired_bootstrap(scores.query_mean(qset, with_it), scores.query_mean(qset, without), n_boot=n_boot)
    return f"{i.delta:+.4f} [{i.lo:+.4f}, {i.hi:+.4f}] {i.verdict()}"


def render_modules(
    scores: Scores,
    n_boot: int = 2000,
    pairs: dict[str, tuple[str, str]] = MODULES,
    title: str = "What each module adds (variant with it − its parent without it, 95 % interval)",
    what: str = "module",
) -> str:
    """What each module adds: the variant with it minus its parent without it, paired by query (also
    used for what the large catalogue adds: the same variant trained on each)."""
    sets = list(scores.values)
    lines = [
        f"### {title}",
        "",
        f"| {what} | with − without | " + " | ".join(sets) + " |",
        "| --- | --- | " + " | ".join("---" for _ in sets) + " |",
    ]
    for module, (with_it, without) in pairs.items():
        cells = [delta_cell(scores, s, with_it, without, n_boot) for s in sets]
        lines.append(f"| {module} | {with_it} − {without} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_judges(scores: Scores, judges: dict[str, str], n_boot: int = 2000) -> str:
    """GenFilt per judge: querylife_full trained with each judge minus ablate_no_genfilt (the same model
    without GenFilt), paired by query. ``judges``: judge name -> its variant's row name."""
    sets = [s for s, d in scores.values.items() if "ablate_no_genfilt" in d]
    lines = [
        "### GenFilt per judge (querylife_full with that judge − ablate_no_genfilt, 95 % interval)",
        "",
        "| judge | variant | " + " | ".join(sets) + " |",
        "| --- | --- | " + " | ".join("---" for _ in sets) + " |",
    ]
    for judge, variant in judges.items():
        cells = [delta_cell(scores, s, variant, "ablate_no_genfilt", n_boot) for s in sets]
        lines.append(f"| {judge} | {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Judge quality (AUC, precision, recall): querylife/genfilt_cache/<judge>_report.json."]
    return "\n".join(lines)


def query_kind(q: Any) -> str:
    """A hand-written query's kind as written; a generated one's from its template (brand, colour,
    occasion, gender, type), misspelt ones apart."""
    if isinstance(q, HandQuery):
        return q.kind
    shape = str(q.shape)
    if shape.endswith("+misspelt"):
        return "misspelling"
    for key, kind in (("brand", "brand"), ("colour", "colour"), ("usage", "occasion"), ("gender", "gender")):
        if key in shape:
            return kind
    return "type"


def query_types(split: SplitData) -> list[str]:
    """Each query's product type: its source product's, else (hand-written) the commonest type among
    its best-graded products; types with under 2 % of the set's queries (or under 3) pooled as
    "other", so every row averages enough queries to read."""
    min_queries = max(3, len(split.queries) // 50)
    out = []
    for q in split.queries:
        if q.source_product_id in split.index:
            out.append(split.types[split.index[q.source_product_id]])
            continue
        top = max(q.relevance.values(), default=0)
        types = [split.types[split.index[p]] for p, g in q.relevance.items() if g == top and p in split.index]
        out.append(Counter(types).most_common(1)[0][0] if types else "")
    counts = Counter(out)
    return [t if counts[t] >= min_queries and t else "other" for t in out]


def render_groups(
    scores: Scores,
    sets: dict[str, SplitData],
    title: str,
    groups: Callable[[SplitData], Sequence[str]],
    skip: Sequence[str] = ("hand test",),
) -> str:
    """NDCG@10 per group of queries (seed-averaged), for the sets not in ``skip`` (the test half is
    reported only in the main table, so per-group reading does not tune on it)."""
    variants = list(next(iter(scores.values.values())))
    lines = [
        f"### Per {title} (NDCG@10, mean over seeds)",
        "",
        f"| set | {title} | queries | " + " | ".join(variants) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in variants) + " |",
    ]
    for qset, split in sets.items():
        if qset in skip:
            continue
        labels = np.array(groups(split))
        for label in sorted(set(labels), key=lambda g: (g == "other", g)):
            m = labels == label
            cells = " | ".join(f"{scores.query_mean(qset, v)[m].mean():.3f}" for v in variants)
            lines.append(f"| {qset} | {label} | {int(m.sum())} | {cells} |")
    return "\n".join(lines)


def splice_section(report: Path, section: str) -> None:
    """Put the section into the model report, replacing an earlier one (or appending)."""
    text = report.read_text() if report.exists() else "# Query-LIFE model evaluation\n"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    report.write_text(text)


def dump_scores(scores: Scores, path: Path) -> None:
    """Per-query, per-seed scores (JSON) so the intervals can be recomputed without retraining."""
    blob = {s: {v: a.round(4).tolist() for v, a in d.items()} for s, d in scores.values.items()}
    path.write_text(json.dumps(blob) + "\n")


@dataclass(frozen=True)
class V2Options:
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    runs_dir: Path
    judge: str
    reports: Path
    cache_dir: Path
    images_dir: Path
    command: str
    served: Path
    n_boot: int = 2000
    sheet_queries: int = 6
    large: Path | None = None  # a larger training catalogue (a superset), evaluated on the same sets
    large_variants: tuple[str, ...] = ("baseline_mean", "ablate_no_genfilt")
    large_seeds: tuple[int, ...] | None = None  # default: the same seeds
    judges: tuple[str, ...] = ()  # more GenFilt judges: querylife_full retrained with each


def large_judge(judge: str) -> str:
    """The judge's verdicts on the large catalogue's own queries: a cache of their own
    (`querylife/genfilt_cache/large/<judge>.jsonl`), so they never change what a small-catalogue run
    masks (its cached runs stay reproducible)."""
    return f"{LARGE_TAG}/{judge}"


def train_large(prep: Prepared, opts: V2Options) -> dict[str, tuple[str, list[Path]]]:
    """Variants trained on the larger catalogue, by row name -> (variant, runs); refused if any product
    of the evaluation's test split would be trained on there."""
    from querylife.train import prepare

    assert opts.large is not None
    big = prepare(opts.large, image_size=prep.image_size, cache_dir=opts.cache_dir)
    test_ids = {p["product_id"] for p in prep.splits["test"].products}
    seen = test_ids & {p["product_id"] for s in ("train", "val") for p in big.splits[s].products}
    if seen:
        raise ValueError(f"{len(seen)} test products are in the large catalogue's train/val splits")
    seeds = opts.seeds if opts.large_seeds is None else opts.large_seeds
    judge = large_judge(opts.judge)
    needs = [v for v in opts.large_variants if variant_config(v, judge=judge).genfilt == judge]
    if needs and not genfilt_cache_path(judge).exists():
        raise FileNotFoundError(
            f"{needs} on the large catalogue need {genfilt_cache_path(judge)}: judge its queries with "
            f"`querylife genfilt-cache --products <large>/products.jsonl --cache-dir "
            f"querylife/genfilt_cache/{LARGE_TAG}` (make genfilt-large)"
        )
    runs = train_seeds(big, opts.large_variants, seeds, opts.runs_dir, judge, tag=LARGE_TAG)
    n = len(big.splits["train"].products)
    return {f"{name} (trained on {n:,} products)": (name, paths) for name, paths in runs.items()}


def evaluate_v2(prep: Prepared, opts: V2Options) -> dict[str, dict[str, Cell]]:
    """Train what is missing, score every set, write the report section, scores and contact sheet."""
    from querylife.contact_sheet import sample_queries, write_contact_sheet
    from querylife.handqueries import load_graded

    judged = {opts.judge: JUDGED, **{j: with_judge(JUDGED, j) for j in opts.judges if j != opts.judge}}
    missing = [j for j in opts.judges if not genfilt_cache_path(j).exists()]
    if missing:  # a run without judgements would be cached under the judge's name
        raise FileNotFoundError(f"no GenFilt cache for {missing} (build it with `querylife genfilt-cache`)")
    extra = tuple(v for v in judged.values() if v not in opts.variants and v != JUDGED)
    runs = train_seeds(prep, (*opts.variants, *extra), opts.seeds, opts.runs_dir, opts.judge)
    large = train_large(prep, opts) if opts.large is not None else {}
    runs.update({row: paths for row, (_, paths) in large.items()})
    test = prep.splits["test"]
    dev_q, test_q = load_graded(half="dev"), load_graded(half="test")
    sets = {
        "generated test": test,
        "hand dev": hand_split(test, dev_q, opts.cache_dir),
        "hand test": hand_split(test, test_q, opts.cache_dir),
    }
    scores = score_runs(runs, sets, served=opts.served, blind=[IMAGE_PARENT] if IMAGE_PARENT in runs else [])
    table = summarise(scores, n_boot=opts.n_boot)
    mdes = {s: set_mde(scores, s) for s in sets}
    notes = [
        f"Hand-written queries: {len(dev_q) + len(test_q)} graded (docs/eval_rubric.md, "
        "data/handwritten-queries/graded.jsonl), split once by a seeded hash of the query id. "
        f"`{SERVED}`: querylife/weights as committed (one seed). Contact sheet: "
        "reports/model_contact_sheet.png (hand dev queries, served head beside seed-0 baseline_mean).",
    ]
    if large:
        notes.append(
            "Large catalogue rows: trained on the larger catalogue (GenFilt variants with the judge's "
            f"verdicts on its own queries, querylife/genfilt_cache/{LARGE_TAG}/), scored on the same test "
            "products and queries."
        )
        pairs = {v: (row, v) for row, (v, _) in large.items()}
        title = "What the large catalogue adds (the same variant, large − small catalogue, 95 % interval)"
        notes.append(render_modules(scores, opts.n_boot, pairs, title, what="variant"))
    if opts.judges:
        notes.append(render_judges(scores, judged, opts.n_boot))
    notes += [
        render_modules(scores, opts.n_boot),
        render_groups(scores, sets, "query kind", lambda s: [query_kind(q) for q in s.queries]),
        render_groups(scores, sets, "product type", query_types),
    ]
    ctx = {
        "command": opts.command,
        "seeds": len(opts.seeds),
        "n_boot": opts.n_boot,
        "products": len(test.products),
        "notes": notes,
    }
    section = render_section(table, mdes, {s: len(v.queries) for s, v in sets.items()}, ctx)
    opts.reports.mkdir(parents=True, exist_ok=True)
    (opts.reports / "model_eval_v2.md").write_text(section + "\n")
    splice_section(opts.reports / "model_eval.md", section)
    dump_scores(scores, opts.reports / "model_eval_v2_scores.json")
    sample = sample_queries(dev_q, opts.sheet_queries)
    heads = {SERVED: load_head(opts.served)[0], f"{BASELINE} s0": load_head(runs[BASELINE][0])[0]}
    sheet_split = hand_split(test, sample, opts.cache_dir)
    write_contact_sheet(sheet_split, heads, opts.images_dir, opts.reports / "model_contact_sheet.png")
    return table
