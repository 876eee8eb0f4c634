"""Hand-written evaluation queries: the rubric of docs/eval_rubric.md applied to test-split products.

The queries and their intents (which catalogue values their words mean) are written by hand in
``data/handwritten-queries/queries.jsonl``; this module only applies the rubric mechanically, splits
the set once into a dev and a test half, and measures how far the queries' words stray from the
generator's (``querygen``) vocabulary. No torch: grading is attribute lookups.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from querylife.catalogue import REPO_ROOT

QUERIES_DIR = REPO_ROOT / "data" / "handwritten-queries"
QUERIES_FILE = QUERIES_DIR / "queries.jsonl"
GRADED_FILE = QUERIES_DIR / "graded.jsonl"
HALVES = ("dev", "test")
INTENT_FIELDS = {
    "types", "near_types", "brand", "near_brand", "colours", "near_colours", "gender", "near_gender",
    "usage", "season", "words",
}  # fmt: skip
# constraint field -> (product attribute, near field); brand and words are matched on the title.
_CONSTRAINTS = {
    "colours": ("colour", "near_colours"),
    "gender": ("gender", "near_gender"),
    "usage": ("usage", None),
    "season": ("season", None),
}


@dataclass(frozen=True)
class HandQuery:
    """A graded hand-written query; ``relevance`` maps test product ids to grades 1-3 (absent = 0)."""

    qid: str
    text: str
    kind: str
    half: str
    relevance: dict[str, int] = field(hash=False)
    source_product_id: str = ""  # none: the query was not made from a product


def load_intents(path: Path = QUERIES_FILE) -> list[dict[str, Any]]:
    """The hand-written queries, refusing an intent field the rubric does not define."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        unknown = set(r["intent"]) - INTENT_FIELDS
        if unknown:
            raise ValueError(f"{r['id']}: intent fields not in the rubric: {sorted(unknown)}")
        if not r["intent"].get("types") and not r["intent"].get("brand"):
            raise ValueError(f"{r['id']}: an intent needs a head (types or brand)")
    return rows


def half_of(qid: str) -> str:
    """The query's half, fixed once by a seeded hash of its id (never by its scores)."""
    return HALVES[int(hashlib.sha256(f"handqueries-split:{qid}".encode()).hexdigest()[:8], 16) % 2]


def title_words(title: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", title.lower()))


def _brand_match(title: str, brands: Iterable[str]) -> bool:
    low = title.lower()
    return any(low == b or low.startswith(b + " ") for b in brands)


def _score(wanted: Sequence[str], near: Sequence[str], value: str) -> float:
    return 1.0 if value in wanted else 0.5 if value in near else 0.0


def constraint_scores(intent: dict[str, Any], product: dict[str, Any]) -> list[float]:
    """1 (stated value), 0.5 (near value) or 0 for each constraint of the intent (not its head)."""
    scores: list[float] = []
    for name, (attr, near) in _CONSTRAINTS.items():
        if intent.get(name):
            scores.append(_score(intent[name], intent.get(near, []) if near else [], str(product.get(attr))))
    title = str(product.get("title") or "")
    if intent.get("types") and intent.get("brand"):  # brand is the head only when no type is named
        brand = _brand_match(title, intent["brand"])
        scores.append(1.0 if brand else 0.5 if _brand_match(title, intent.get("near_brand", [])) else 0.0)
    if intent.get("words"):
        scores.append(1.0 if title_words(title) & {w.lower() for w in intent["words"]} else 0.0)
    return scores


def head_score(intent: dict[str, Any], product: dict[str, Any]) -> float:
    """1 when the product is what the query names (its types, else its brand), 0.5 when near."""
    if intent.get("types"):
        return _score(intent["types"], intent.get("near_types", []), str(product.get("product_type")))
    title = str(product.get("title") or "")
    if _brand_match(title, intent["brand"]):
        return 1.0
    return 0.5 if _brand_match(title, intent.get("near_brand", [])) else 0.0


def grade(intent: dict[str, Any], product: dict[str, Any]) -> int:
    """The rubric (docs/eval_rubric.md): 3 exact, 2 relevant, 1 partial, 0 irrelevant."""
    head = head_score(intent, product)
    if head == 0.0:
        return 0
    scores = constraint_scores(intent, product)
    misses = sum(s == 0.0 for s in scores)
    if head == 0.5:
        return 1 if misses == 0 else 0
    if misses == 0:
        return 3 if all(s == 1.0 for s in scores) else 2
    if misses == 1 and len(scores) >= 2 and all(s in (0.0, 1.0) for s in scores):
        return 2
    return 1


def grade_queries(
    intents: Sequence[dict[str, Any]], products: Sequence[dict[str, Any]]
) -> tuple[list[HandQuery], list[str]]:
    """Graded queries over ``products`` (the test split) and the ids dropped for no relevant product."""
    kept: list[HandQuery] = []
    dropped: list[str] = []
    for r in intents:
        rel = {str(p["product_id"]): g for p in products if (g := grade(r["intent"], p)) > 0}
        if not any(g >= 2 for g in rel.values()):
            dropped.append(r["id"])
            continue
        kept.append(HandQuery(r["id"], r["text"], r["kind"], half_of(r["id"]), rel))
    return kept, dropped


def write_graded(queries: Sequence[HandQuery], path: Path = GRADED_FILE) -> None:
    lines = [
        json.dumps(
            {"id": q.qid, "text": q.text, "kind": q.kind, "half": q.half, "relevance": q.relevance},
            sort_keys=True,
        )
        for q in queries
    ]
    path.write_text("\n".join(lines) + "\n")


def load_graded(path: Path = GRADED_FILE, half: str | None = None) -> list[HandQuery]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = [HandQuery(r["id"], r["text"], r["kind"], r["half"], dict(r["relevance"])) for r in rows]
    return [q for q in out if half is None or q.half == half]


# ------------------------------------------------------------------------------------------------
# Distance from the generator.


def generator_vocabulary(products: Sequence[dict[str, Any]]) -> set[str]:
    """Every word the generator can put in a query: its type, colour, usage and gender terms (and
    plurals) and the brands of ``products``' titles."""
    from querylife import querygen as qg

    phrases: list[str] = []
    for terms in qg._TYPE_TERMS.values():
        phrases += [*terms, *(qg.pluralise(t) for t in terms)]
    for colour, family in qg._COLOUR_FAMILY.items():
        phrases += [colour.lower(), family]
    for syns in qg._COLOUR_SYNONYMS.values():
        phrases += syns
    for uterms in qg._USAGE_TERMS.values():
        phrases += uterms
    for gterms in qg._GENDER_TERMS.values():
        phrases += [t for t, _ in gterms]
    phrases += [qg.normalise_type(str(p.get("product_type") or "")) for p in products]
    phrases += [qg.product_brand(str(p.get("title") or ""), qg.KNOWN_BRANDS) for p in products]
    return {w for ph in phrases for w in ph.split()}


def vocabulary_overlap(texts: Sequence[str], vocab: set[str], generated: set[str]) -> dict[str, float]:
    """How much of the hand-written queries the generator could have written."""
    tokens = [w for t in texts for w in t.lower().split()]
    return {
        "queries": float(len(texts)),
        "token_share_in_generator_vocab": sum(w in vocab for w in tokens) / max(len(tokens), 1),
        "query_share_all_tokens_in_vocab": sum(all(w in vocab for w in t.lower().split()) for t in texts)
        / max(len(texts), 1),
        "query_share_identical_to_a_generated_query": sum(t.lower() in generated for t in texts)
        / max(len(texts), 1),
    }
