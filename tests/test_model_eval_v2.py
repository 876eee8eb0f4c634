"""Honest evaluation (#22): the bootstrap and MDE on seeded synthetic deltas, the rubric's grades on
hand-made products, and the committed graded set against the catalogue it was graded on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from querylife import handqueries as hq
from querylife.bootstrap import min_detectable_effect, paired_bootstrap
from querylife.catalogue import FULL_CATALOGUE
from querylife.eval_v2 import SECTION_BEGIN, SECTION_END, splice_section

# ------------------------------------------------------------------------------------------------
# Bootstrap


def test_constant_delta_has_a_zero_width_interval() -> None:
    b = np.linspace(0.0, 1.0, 50)
    i = paired_bootstrap(b + 0.1, b)
    assert (i.delta, i.lo, i.hi) == pytest.approx((0.1, 0.1, 0.1))


def test_a_real_effect_is_found_and_a_null_one_is_not() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.9, 400)  # query difficulty, shared by both heads (paired)
    better = base + rng.normal(0.05, 0.1, 400)
    same = base + rng.normal(0.0, 0.1, 400)
    up = paired_bootstrap(better, base, seed=1)
    null = paired_bootstrap(same, base, seed=1)
    assert up.lo > 0.03 and up.hi < 0.07 and up.verdict() == "helps"
    assert null.lo < 0.0 < null.hi and null.verdict() == "no detectable effect"
    assert paired_bootstrap(base - 0.05, base).verdict() == "hurts"


def test_bootstrap_is_seeded_and_refuses_unpaired_input() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(60), rng.random(60)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_minimum_detectable_effect_matches_the_formula() -> None:
    d = np.array([0.1, -0.1] * 50)  # sd (ddof=1) = 0.1005..., n = 100
    expected = (1.959964 + 0.841621) * d.std(ddof=1) / 10.0
    assert min_detectable_effect(d) == pytest.approx(expected, rel=1e-5)
    assert np.isnan(min_detectable_effect([0.3]))


# ------------------------------------------------------------------------------------------------
# Rubric


def _product(**kw: str) -> dict[str, str]:
    base = {
        "product_id": "1",
        "title": "Nike Men Striped Blue Shirt",
        "product_type": "Shirts",
        "colour": "Blue",
        "gender": "Men",
        "usage": "Casual",
        "season": "Summer",
    }
    return {**base, **kw}


INTENT = {
    "types": ["Shirts"],
    "near_types": ["Tshirts"],
    "colours": ["Blue"],
    "near_colours": ["Navy Blue"],
    "gender": ["Men", "Unisex"],
}


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        (_product(), 3),  # type, colour and gender as asked
        (_product(colour="Navy Blue"), 2),  # only a near shade missed
        (_product(colour="Red"), 2),  # one of two constraints missed, the other met
        (_product(colour="Red", gender="Women"), 1),  # right type only
        (_product(product_type="Tshirts"), 1),  # a near type, every constraint met
        (_product(product_type="Tshirts", colour="Red"), 0),  # a near type with a miss
        (_product(product_type="Belts"), 0),
    ],
)
def test_rubric_grades(product: dict[str, str], expected: int) -> None:
    assert hq.grade(INTENT, product) == expected


def test_one_constraint_missed_alone_is_partial_and_words_are_whole_title_words() -> None:
    striped = {"types": ["Shirts"], "words": ["striped"]}
    assert hq.grade(striped, _product()) == 3
    assert hq.grade(striped, _product(title="Nike Men Stripedy Blue Shirt")) == 1  # not a whole word
    assert hq.grade({"types": ["Shirts"], "colours": ["Red"]}, _product()) == 1


def test_brand_is_the_head_without_a_type_and_a_constraint_with_one() -> None:
    assert hq.grade({"brand": ["nike"]}, _product()) == 3
    assert hq.grade({"brand": ["puma"], "near_brand": ["nike"]}, _product()) == 1
    assert hq.grade({"types": ["Shirts"], "brand": ["puma"]}, _product()) == 1
    assert hq.grade({"types": ["Shirts"], "brand": ["puma"], "colours": ["Blue"]}, _product()) == 2


def test_intents_outside_the_rubric_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"id": "x", "text": "t", "kind": "type", "intent": {"mood": ["happy"]}}))
    with pytest.raises(ValueError, match="not in the rubric"):
        hq.load_intents(bad)
    bad.write_text(json.dumps({"id": "x", "text": "t", "kind": "type", "intent": {"colours": ["Red"]}}))
    with pytest.raises(ValueError, match="head"):
        hq.load_intents(bad)


def test_halves_are_fixed_by_the_id() -> None:
    halves = [hq.half_of(f"h{i:03d}") for i in range(200)]
    assert halves == [hq.half_of(f"h{i:03d}") for i in range(200)]
    assert 70 < halves.count("dev") < 130


@pytest.mark.skipif(not (FULL_CATALOGUE / "products.jsonl").exists(), reason="full catalogue absent")
def test_committed_graded_set_is_the_rubric_over_test_products() -> None:
    from querylife.data import load_products, split_products

    test = split_products(load_products(FULL_CATALOGUE))["test"]
    graded, dropped = hq.grade_queries(hq.load_intents(), test)
    committed = hq.load_graded()
    assert committed == graded and len(committed) >= 120
    assert {q.half for q in committed} == {"dev", "test"}
    test_ids = {p["product_id"] for p in test}
    for q in committed:
        assert set(q.relevance) <= test_ids and max(q.relevance.values()) >= 2
    assert len(committed) + len(dropped) == len(hq.load_intents())


# ------------------------------------------------------------------------------------------------
# Report section


def test_section_is_replaced_in_place(tmp_path: Path) -> None:
    report = tmp_path / "model_eval.md"
    report.write_text("# report\n\ntable\n")
    splice_section(report, f"{SECTION_BEGIN}\nfirst\n{SECTION_END}")
    report.write_text(report.read_text() + "\ntail\n")
    splice_section(report, f"{SECTION_BEGIN}\nsecond\n{SECTION_END}")
    text = report.read_text()
    assert "second" in text and "first" not in text and text.index("second") < text.index("tail")


def test_summary_pairs_by_query_and_reports_the_seed_spread() -> None:
    from querylife.eval_v2 import BASELINE, Scores, render_modules, summarise

    rng = np.random.default_rng(11)
    base = rng.uniform(0.3, 0.9, size=(3, 300))  # [seeds, queries]
    full = base + 0.05 + rng.normal(0.0, 0.02, size=(3, 300))
    scores = Scores({"s": {BASELINE: base, "querylife_full": full, "ablate_no_genfilt": full.copy()}})
    table = summarise(scores, n_boot=500)["s"]
    assert table[BASELINE].vs_baseline is None and table[BASELINE].seeds == 3
    assert table[BASELINE].seed_sd == pytest.approx(float(base.mean(axis=1).std(ddof=1)))
    ci = table["querylife_full"].vs_baseline
    assert ci is not None and 0.045 < ci.lo < ci.delta < ci.hi < 0.055
    modules = render_modules(scores, 200)
    assert "| querylife_full − ablate_no_genfilt | +0.0000 [+0.0000, +0.0000] no detectable" in modules
    assert "| image adapter | image_adapter − ablate_no_genfilt | - |" in modules  # not trained: no cell


def test_per_group_rows_pool_small_types_and_follow_the_source_product() -> None:
    import torch

    from querylife.eval_v2 import Scores, query_types, render_groups
    from querylife.handqueries import HandQuery
    from querylife.splits import SplitData

    types = ["Shirts", "Shirts", "Watches", "Belts"]
    pids = [str(i) for i in range(4)]
    hand = [HandQuery(f"h{i}", "q", "colour", "dev", {"0": 3, "1": 3, "2": 2}) for i in range(3)]
    hand.append(HandQuery("h9", "q", "brand", "dev", {"2": 3, "3": 1}))
    split = SplitData(
        products=[{"product_id": p} for p in pids],
        image=torch.zeros(4, 1),
        title=torch.zeros(4, 1),
        has_image=torch.ones(4, dtype=torch.bool),
        has_title=torch.ones(4, dtype=torch.bool),
        types=types,
        queries=list(hand),
        query_feats=torch.zeros(4, 1),
        query_product_idx=torch.zeros(4, dtype=torch.long),
        index={p: i for i, p in enumerate(pids)},
    )
    assert query_types(split) == ["Shirts", "Shirts", "Shirts", "other"]  # Watches: 1 query < 3
    scores = Scores({"hand dev": {"a": np.array([[1.0, 0.5, 0.0, 0.25]])}})
    table = render_groups(scores, {"hand dev": split}, "product type", query_types)
    assert "| hand dev | Shirts | 3 | 0.500 |" in table
    assert table.splitlines()[-1] == "| hand dev | other | 1 | 0.250 |"


def test_judged_variants_are_named_by_judge_and_compared_with_the_genfilt_ablation() -> None:
    from querylife.eval_v2 import JUDGED, Scores, parse_variant, render_judges, with_judge

    assert with_judge(JUDGED, "gemma3") == "querylife_full[gemma3]"
    assert parse_variant("querylife_full[gemma3]", "smollm2") == ("querylife_full", "gemma3")
    assert parse_variant("querylife_full", "smollm2") == ("querylife_full", "smollm2")
    rng = np.random.default_rng(5)
    none = rng.uniform(0.3, 0.9, size=(3, 200))
    scores = Scores({"s": {"ablate_no_genfilt": none, JUDGED: none + 0.05, "querylife_full[gemma3]": none}})
    table = render_judges(scores, {"smollm2": JUDGED, "gemma3": "querylife_full[gemma3]", "x": "absent"}, 200)
    assert "| smollm2 | querylife_full | +0.0500 [+0.0500, +0.0500] helps |" in table
    assert "| gemma3 | querylife_full[gemma3] | +0.0000 [+0.0000, +0.0000] no detectable" in table
    assert "| x | absent | - |" in table


def test_a_cached_run_trained_with_another_judge_is_refused(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any

    from querylife.eval_v2 import run_dir, train_seeds

    out = run_dir(tmp_path, "querylife_full", 0)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"config": {"genfilt": "smollm2"}}))
    prep: Any = SimpleNamespace(image_size=128)
    assert train_seeds(prep, ["querylife_full"], [0], tmp_path, "smollm2") == {"querylife_full": [out]}
    with pytest.raises(ValueError, match=r"querylife_full\[gemma3\]"):
        train_seeds(prep, ["querylife_full"], [0], tmp_path, "gemma3")


def test_large_catalogue_judgements_are_kept_apart() -> None:
    """A judge's verdicts on the large catalogue's queries live in a cache of their own, so judging them
    never changes what a small-catalogue run masks; the records still carry the judge's own name."""
    from querylife.eval_v2 import large_judge
    from querylife.train import genfilt_cache_path, variant_config

    judge = large_judge("smollm2")
    assert genfilt_cache_path(judge) == genfilt_cache_path("smollm2").parent / "large" / "smollm2.jsonl"
    assert variant_config("querylife_full", judge=judge).genfilt == judge
    assert variant_config("ablate_no_genfilt", judge=judge).genfilt == "none"
