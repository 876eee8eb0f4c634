"""Demo traffic: the fashion catalogue as upsert events, and simulated search logs for an A/B test.

Variant "A" (control) ranks candidates by IDF-weighted overlap of the query with the product's
title, type, colour, gender and usage. Variant "B" keeps A's top 6 and mixes in 4 products drawn
from the whole catalogue (a ranker that promotes off-query items, as a regression would). Simulated
shoppers click with a probability that grows with the product's true (generated) relevance grade and
falls with position, and order some of what they click. So B should lose relevance, CTR and
conversion; the model's relevance scores, which never see the grades, should show the same drop.

Variants are assigned by a hash of the user (salted by the experiment), as a real experiment does:
one user is always in one arm, so the analysis by user (analysis/ab_stats.py) is valid.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from querylife.querygen import generate_queries
from schemas import Experiment, Impression, ProductImage, ProductUpsert, QueryLog

ATTRIBUTES = ("colour", "gender", "usage", "season", "master_category", "sub_category")
_WORD = re.compile(r"[a-z0-9]+")


def load_catalogue(data_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Products from `products.jsonl`, in file order."""
    products = []
    with open(data_dir / "products.jsonl", "rb") as fh:
        for line in fh:
            if line.strip():
                products.append(orjson.loads(line))
            if limit is not None and len(products) >= limit:
                break
    return products


def product_event(
    product: dict[str, Any],
    when: datetime,
    inline_image_root: Path | None = None,
) -> ProductUpsert:
    """An upsert for one catalogue row; the image by path, or inline bytes when a root is given."""
    image: ProductImage | None = None
    if product.get("image_path"):
        if inline_image_root is not None:
            data = (inline_image_root / product["image_path"]).read_bytes()
            image = ProductImage(data=data)
        else:
            image = ProductImage(path=product["image_path"])
    return ProductUpsert(
        event_id=f"p-{product['product_id']}-{int(when.timestamp())}",
        event_time=when,
        product_id=str(product["product_id"]),
        title=product.get("title") or None,
        product_type=product["product_type"],
        attributes={k: str(product[k])[:64] for k in ATTRIBUTES if product.get(k)},
        image=image,
    )


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


class _Ranker:
    """Inverted index over title words (A) or title + attribute words (B)."""

    def __init__(self, products: list[dict[str, Any]], with_attributes: bool) -> None:
        self.products = products
        self.tokens: list[set[str]] = []
        self.index: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(products):
            text = p.get("title") or ""
            if with_attributes:
                text += " " + " ".join(
                    str(p.get(k) or "") for k in ("product_type", "colour", "gender", "usage")
                )
            toks = {_stem(w) for w in _words(text)}
            self.tokens.append(toks)
            for tok in toks:
                self.index[tok].append(i)

    def rank(self, query: str, k: int, rng: random.Random) -> list[int]:
        """Top-k by summed IDF of matched query words (rare words such as a type weigh most)."""
        n = len(self.products)
        scores: dict[int, float] = defaultdict(float)
        for tok in {_stem(w) for w in _words(query)}:
            hits = self.index.get(tok, ())
            idf = math.log((n + 1) / (len(hits) + 1))
            for i in hits:
                scores[i] += idf
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], rng.random()))
        return [i for i, _ in ranked[:k]]


DEMO_EXPERIMENT_ID = "demo-ranker"


def demo_experiment(start: datetime) -> Experiment:
    """The demo's declaration: users split 50/50 between the control ranker A and B."""
    return Experiment(
        experiment_id=DEMO_EXPERIMENT_ID, unit="user", split={"A": 0.5, "B": 0.5}, control="A", start=start
    )


def assign_variant(user_id: str, salt: str = DEMO_EXPERIMENT_ID) -> str:
    """A or B from a hash of the user: stable, so one user always sees one arm."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return "A" if int.from_bytes(digest[:8], "big") % 2 == 0 else "B"


def query_log_events(
    products: list[dict[str, Any]],
    count: int,
    seed: int = 7,
    start: datetime | None = None,
    impressions_per_query: int = 10,
    experiment_id: str | None = None,
    rerank: Callable[[str, list[str], int], list[str]] | None = None,
) -> Iterator[tuple[QueryLog, dict[str, int]]]:
    """`count` query logs of 500 simulated users, each user in the arm its hash assigns, each log with
    the true grades of what it showed; `experiment_id` names the declared experiment (or none).

    Variant A shows the overlap ranking's top results. Variant B, with `rerank` (a ranker using the
    relevance contract, e.g. `harness.reference_ranker.ReferenceRanker.rerank`), shows A's top
    2 x `impressions_per_query` re-ranked by it; without, A's top 6 and 4 off-query products (a
    deliberately worse arm)."""
    rng = random.Random(seed)
    queries = generate_queries(products, seed=seed, per_product=1)
    rng.shuffle(queries)
    ranker = _Ranker(products, with_attributes=True)
    start = start or datetime.now(UTC) - timedelta(minutes=10)
    for n in range(count):
        query = queries[n % len(queries)]
        user_id = f"u{rng.randrange(500)}"
        variant = assign_variant(user_id)
        shown = ranker.rank(query.text, impressions_per_query, rng)
        if not shown:
            continue
        if variant == "B" and rerank is not None:
            pool = ranker.rank(query.text, 2 * impressions_per_query, rng)
            by_id = {str(products[i]["product_id"]): i for i in pool}
            shown = [by_id[pid] for pid in rerank(query.text, list(by_id), impressions_per_query)]
        elif variant == "B":
            shown = shown[:6] + [rng.randrange(len(products)) for _ in range(impressions_per_query - 6)]
            shown = list(dict.fromkeys(shown))  # a product is shown once
            rng.shuffle(shown)
        grades = {
            str(products[i]["product_id"]): query.relevance.get(str(products[i]["product_id"]), 0)
            for i in shown
        }
        impressions = []
        for pos, i in enumerate(shown, start=1):
            pid = str(products[i]["product_id"])
            p_click = (0.04 + 0.22 * grades[pid]) / math.log2(pos + 1)
            clicked = rng.random() < p_click
            ordered = clicked and rng.random() < 0.05 * grades[pid]
            impressions.append(Impression(product_id=pid, position=pos, clicked=clicked, ordered=ordered))
        event = QueryLog(
            event_id=f"q-{seed}-{n}",
            event_time=start + timedelta(milliseconds=200 * n),
            query_id=f"qid-{seed}-{n}",
            query=query.text,
            user_id=user_id,
            session_id=f"{user_id}-s{n // 3}",
            experiment_id=experiment_id,
            variant=variant,
            impressions=impressions,
        )
        yield event, grades
