"""Query generator: determinism, the documented label rule, and the query shapes it emits."""

from __future__ import annotations

import re

import numpy as np

from querylife.querygen import (
    KNOWN_BRANDS,
    generate_queries,
    normalise_type,
    pluralise,
    product_brand,
    relevance_grade,
)
from tests.toy_catalogue import TOY_PRODUCTS

PRODUCTS = TOY_PRODUCTS


def test_normalise_type_and_plurals() -> None:
    assert normalise_type("Tshirts") == "tshirt"
    assert normalise_type("T-Shirts") == "tshirt"
    assert normalise_type("Casual Shoes") == "casual shoe"
    assert normalise_type("Watches") == "watch"
    assert normalise_type("Jeans") == "jeans"
    assert normalise_type("Kurtis") == "kurti"
    assert normalise_type("Dresses") == "dress"
    assert normalise_type("Scarves") == "scarf"
    assert pluralise("watch") == "watches"
    assert pluralise("running shoe") == "running shoes"
    assert pluralise("jeans") == "jeans"
    assert pluralise("scarf") == "scarves"


def test_product_brand() -> None:
    assert product_brand("Nike Men AS T90 Black Tshirts") == "nike"
    assert product_brand("United Colors of Benetton Women Solid Pink Dress") == "united colors of benetton"
    assert product_brand("Flying Machine Blue Jeans", ["flying machine", "flying"]) == "flying machine"
    assert product_brand("Genesis Maroon Formal Shirt") == "genesis"
    assert product_brand("Flying Machine Blue Jeans", KNOWN_BRANDS) == "flying machine"


def test_relevance_grade_rule() -> None:
    head = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    a1 = np.array([1, 1, 0, 0, 1, 1, 0], dtype=bool)
    a2 = np.array([1, 0, 1, 0, 1, 0, 0], dtype=bool)
    # all match -> 3; half -> 2; half -> 2; type only -> 1; attrs only -> 1; partial attrs -> 0
    assert relevance_grade(head, [a1, a2]).tolist() == [3, 2, 2, 1, 1, 0, 0]
    a3 = np.array([1, 0, 0, 0, 1, 0, 0], dtype=bool)
    # three attributes: 3 of 3 -> 3, 1 of 3 -> 1 (less than half), 0 of 3 -> 1
    assert relevance_grade(head, [a1, a2, a3]).tolist() == [3, 1, 1, 1, 1, 0, 0]
    assert relevance_grade(head, []).tolist() == [3, 3, 3, 3, 0, 0, 0]


# Texts the seed-0 generator emits for PRODUCTS (per_product=12) and their exact labels.
EXPECTED = {
    # colour+type+gender: unisex counts as men; one of two attributes -> 2; attributes only -> 1
    "mens blacck t shirts": {"1": 3, "2": 2, "3": 2, "4": 1, "6": 3, "8": 2},
    "black t shirt": {"1": 3, "2": 3, "3": 1, "4": 1, "6": 3, "8": 1},
    # "sneakers" covers casual and sports shoes; black non-shoe products get 1 (attributes only)
    "black sneakers": {"1": 1, "2": 1, "4": 3, "6": 1},
    "kurta for her": {"2": 1, "5": 3, "6": 1},
    "navy kurta": {"5": 3},  # navy is Navy Blue only; "blue kurta" would also touch blue jeans
    "blue kurta": {"5": 3, "7": 1},
    "nike": {"1": 3, "2": 3},  # brand-only queries are headed by the brand
    "adidas originals": {"8": 3},
    "adidas t shirts": {"1": 1, "2": 1, "3": 1, "6": 3, "8": 3},  # adidas covers adidas originals
}


def test_labels_on_hand_made_products() -> None:
    qs = generate_queries(PRODUCTS, seed=0, per_product=12)
    by_text = {q.text: q for q in qs}
    for text, labels in EXPECTED.items():
        assert text in by_text, text
        assert by_text[text].relevance == labels, text
    assert by_text["mens blacck t shirts"].shape == "colour_type_gender+misspelt"
    for q in qs:
        assert q.relevance[q.source_product_id] == 3
        assert set(q.relevance.values()) <= {1, 2, 3}


def test_deterministic_and_seed_dependent() -> None:
    a = generate_queries(PRODUCTS, seed=3, per_product=3)
    b = generate_queries(PRODUCTS, seed=3, per_product=3)
    c = generate_queries(PRODUCTS, seed=4, per_product=3)
    assert [(q.text, q.source_product_id, q.relevance) for q in a] == [
        (q.text, q.source_product_id, q.relevance) for q in b
    ]
    assert [q.text for q in a] != [q.text for q in c]
    assert len(a) == 3 * len(PRODUCTS)
    # A product's queries do not depend on the other products passed.
    solo = generate_queries(PRODUCTS[:1], seed=3, per_product=3)
    assert [q.text for q in solo] == [q.text for q in a[:3]]
    # Also for titles without a gender word, whose brand comes from the fixed KNOWN_BRANDS list.
    jeans = generate_queries(PRODUCTS[6:7], seed=3, per_product=3)
    assert [q.text for q in jeans] == [q.text for q in a[18:21]]
    # Per-product queries are distinct.
    for k in range(len(PRODUCTS)):
        chunk = [q.text for q in a[3 * k : 3 * k + 3]]
        assert len(set(chunk)) == 3


def test_shapes_appear() -> None:
    qs = generate_queries(PRODUCTS, seed=0, per_product=40)
    shapes = {q.shape.split("+")[0] for q in qs}
    assert {"type", "colour_type", "brand_type", "type_gender", "usage_type", "brand"} <= shapes
    misspelt = [q for q in qs if q.shape.endswith("+misspelt")]
    assert misspelt, "seeded misspellings must appear"
    texts = " ".join(q.text for q in qs)
    assert re.search(r"\btshirts\b", texts) and re.search(r"\btshirt\b", texts)  # plural and singular
    assert re.search(r"\b(mens|men's|for men|for him|male)\b", texts)
    assert re.search(r"\b(navy|dark blue)\b", texts)  # colour synonyms
    # A misspelt query keeps the intent's labels: its source product is still graded 3.
    for q in misspelt:
        assert q.relevance[q.source_product_id] == 3
