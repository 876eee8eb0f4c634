"""Synthetic search queries with graded relevance labels over a product catalogue.

The catalogue has no query log, so training and evaluation queries are generated from product
attributes and titles in the shapes real shoppers type ("black running shoes men", "kurta for
women", "nike tshirt", "mens jaens"). Each query records its *intent* (which attribute values it
names) and is labelled against every product passed in with one vectorised rule (see
``relevance_grade``), so labels are consistent for every product, not just the source one.

Label rule. A query names a *head* (its product type term if it has one, else its brand) and a
set A of other attributes (colour, gender, usage, brand). For a product let H = head matches and
m = number of attributes in A that match:

* 3: H and m == |A|
* 2: H and |A| >= 2 and 2*m >= |A| (most, i.e. at least half, but not all)
* 1: H and fewer than half of A match ("type matches only"), or not H and |A| >= 1 and all of A
  match ("only attributes")
* 0: otherwise

Terms match sets of catalogue values, not one string: "blue" matches Blue, Navy Blue, Turquoise
Blue, Teal; "sneakers" matches casual and sports shoes; "men" matches Men and Unisex; "adidas"
matches the brands "adidas" and "adidas originals". The source product is always graded 3.
Misspellings change the text only; labels come from the intent.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KNOWN_BRANDS",
    "Query",
    "generate_queries",
    "normalise_type",
    "pluralise",
    "product_brand",
    "relevance_grade",
]


@dataclass(frozen=True)
class Query:
    """A generated search query; ``relevance`` is read-only and may be shared between equal intents."""

    text: str
    source_product_id: str
    relevance: dict[str, int] = field(hash=False)  # graded 0-3 over product_ids; absent = 0
    shape: str = ""  # template name, plus "+misspelt" when a typo was injected


# --------------------------------------------------------------------------------------------
# Normalisation helpers (reused by the trainer to group batches by product type).

# Words that are plural-only or already singular: never strip their final "s".
_KEEP_S = {
    "jeans", "shorts", "trousers", "capris", "leggings", "briefs", "sunglasses", "pants", "tights",
    "glasses", "dress", "boxers", "jeggings", "dungarees", "pyjamas", "chinos", "lens", "mist",
}  # fmt: skip


_IRREGULAR = {"scarves": "scarf", "booties": "bootie", "knives": "knife", "wolves": "wolf"}


def _singular_word(w: str) -> str:
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _KEEP_S or len(w) <= 3 or w.endswith("ss") or w.endswith("us"):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


def normalise_type(product_type: str) -> str:
    """Canonical product-type key: lower case, no hyphens, last word singular.

    "Tshirts" -> "tshirt", "T-Shirts" -> "tshirt", "Casual Shoes" -> "casual shoe", "Watches" ->
    "watch", "Jeans" -> "jeans". Used to group products so near-duplicates of the same type
    share one key regardless of spelling in the source data.
    """
    s = product_type.lower().replace("-", "").replace("_", " ")
    words = re.sub(r"[^a-z0-9& ]+", " ", s).split()
    if not words:
        return ""
    words[-1] = _singular_word(words[-1])
    return " ".join(words)


def pluralise(phrase: str) -> str:
    """Plural of a query phrase's last word ("watch" -> "watches", "jeans" -> "jeans")."""
    words = phrase.split()
    if not words:
        return phrase
    w = words[-1]
    if w in _KEEP_S or w.endswith("s"):
        return phrase
    irregular = {v: k for k, v in _IRREGULAR.items()}
    if w in irregular:
        return " ".join([*words[:-1], irregular[w]])
    if w.endswith(("ch", "sh", "x")):
        w += "es"
    elif w.endswith("y") and len(w) > 2 and w[-2] not in "aeiou":
        w = w[:-1] + "ies"
    else:
        w += "s"
    return " ".join([*words[:-1], w])


_GENDER_TOKENS = {
    "men", "women", "boys", "girls", "unisex", "kids", "men's", "women's", "mens", "womens",
    "boy's", "girl's", "boy", "girl", "kid's",
}  # fmt: skip


# Multi-word brands that appear in titles without a gender word ("Flying Machine Blue Jeans").
KNOWN_BRANDS = (
    "carlton london", "chhota bheem", "flying machine", "gini and jony", "united colors of benetton",
    "warner bros",
)  # fmt: skip


def product_brand(title: str, known_brands: Iterable[str] = ()) -> str:
    """Brand from a title: the words before the gender word ("Nike Men ..." -> "nike").

    Catalogue titles read "<Brand> <Gender> <description> <Colour> <Type>". Titles without a
    gender word fall back to the longest known brand that prefixes the title, else the first word.
    Pass ``KNOWN_BRANDS`` for the catalogue's multi-word brands.
    """
    words = title.split()
    for i, w in enumerate(words):
        if w.lower() in _GENDER_TOKENS:
            if i > 0:
                return " ".join(words[:i]).lower()
            break
    low = " ".join(words).lower()
    best = ""
    for b in known_brands:
        if len(b) > len(best) and (low == b or low.startswith(b + " ")):
            best = b
    return best or (words[0].lower() if words else "")


# --------------------------------------------------------------------------------------------
# Vocabulary: query terms and the catalogue values they match.

# Colour family of each catalogue colour: a family word ("blue") matches every member.
_COLOUR_FAMILY = {
    "Navy Blue": "blue", "Turquoise Blue": "blue", "Teal": "blue", "Blue": "blue",
    "Grey Melange": "grey", "Charcoal": "grey", "Grey": "grey", "Steel": "grey",
    "Off White": "white", "Cream": "white", "White": "white",
    "Maroon": "red", "Burgundy": "red", "Red": "red", "Rust": "orange", "Orange": "orange",
    "Peach": "orange", "Magenta": "pink", "Pink": "pink", "Lavender": "purple", "Purple": "purple",
    "Olive": "green", "Sea Green": "green", "Fluorescent Green": "green", "Green": "green",
    "Coffee Brown": "brown", "Tan": "brown", "Taupe": "brown", "Brown": "brown", "Copper": "brown",
    "Khaki": "beige", "Beige": "beige", "Mustard": "yellow", "Yellow": "yellow", "Gold": "gold",
    "Silver": "silver", "Black": "black", "Bronze": "bronze", "Multi": "multicolour",
    "Metallic": "silver", "Skin": "beige",
}  # fmt: skip
# Specific query words for a catalogue colour (besides its own lower-cased name and family word).
_COLOUR_SYNONYMS = {
    "Navy Blue": ["navy", "dark blue"], "Off White": ["offwhite", "ivory"], "Grey": ["gray"],
    "Grey Melange": ["grey melange", "heather grey"], "Charcoal": ["charcoal grey", "dark grey"],
    "Maroon": ["wine"], "Burgundy": ["wine"], "Multi": ["multicolor", "multi colour"],
    "Turquoise Blue": ["turquoise"], "Olive": ["olive green"], "Khaki": ["khaki"],
}  # fmt: skip

# Query phrases (singular) for each normalised type; unknown types use the type key itself.
_TYPE_TERMS = {
    "tshirt": ["tshirt", "t shirt", "t-shirt", "tee"],
    "shirt": ["shirt"],
    "casual shoe": ["casual shoe", "sneaker", "shoe"],
    "sports shoe": ["sports shoe", "running shoe", "sneaker", "shoe", "trainer"],
    "formal shoe": ["formal shoe", "office shoe", "shoe", "leather shoe"],
    "flip flop": ["flip flop", "slipper", "chappal"],
    "sandal": ["sandal", "chappal"],
    "sports sandal": ["sports sandal", "sandal"],
    "heel": ["heel", "high heel"],
    "flat": ["flat", "ballerina"],
    "top": ["top"],
    "kurta": ["kurta"],
    "kurti": ["kurti"],
    "watch": ["watch"],
    "handbag": ["handbag", "bag", "purse"],
    "backpack": ["backpack", "bag", "school bag"],
    "laptop bag": ["laptop bag", "bag"],
    "duffel bag": ["duffel bag", "travel bag", "bag"],
    "messenger bag": ["messenger bag", "bag"],
    "clutch": ["clutch", "purse"],
    "sunglasses": ["sunglasses", "shades"],
    "sweater": ["sweater", "pullover"],
    "sweatshirt": ["sweatshirt", "hoodie"],
    "jacket": ["jacket"],
    "wallet": ["wallet"],
    "trousers": ["trousers", "pants"],
    "track pants": ["track pants", "joggers"],
    "jeans": ["jeans", "denim"],
    "belt": ["belt"],
    "sock": ["sock"],
    "briefs": ["briefs", "underwear"],
    "trunk": ["trunk", "underwear"],
    "innerwear vest": ["innerwear vest", "vest"],
    "shorts": ["shorts"],
    "cap": ["cap", "hat"],
    "tie": ["tie"],
    "dress": ["dress"],
    "perfume and body mist": ["perfume", "body mist"],
    "deodorant": ["deodorant", "deo"],
}
_USAGE_TERMS = {
    "Casual": ["casual"], "Formal": ["formal", "office"], "Sports": ["sports", "gym"],
    "Ethnic": ["ethnic", "traditional"], "Smart Casual": ["smart casual"], "Travel": ["travel"],
    "Party": ["party", "partywear"],
}  # fmt: skip
_USAGE_MATCH = {
    "casual": {"Casual", "Smart Casual"}, "formal": {"Formal", "Smart Casual"},
    "office": {"Formal", "Smart Casual"}, "sports": {"Sports"}, "gym": {"Sports"},
    "ethnic": {"Ethnic"}, "traditional": {"Ethnic"}, "smart casual": {"Smart Casual"},
    "travel": {"Travel"}, "party": {"Party"}, "partywear": {"Party"},
}  # fmt: skip
# (term, position): "pre" words go before the type ("mens shoes"), "post" after ("shoes for men").
_GENDER_TERMS = {
    "Men": [("men", "any"), ("mens", "pre"), ("men's", "pre"), ("for men", "post"),
            ("for him", "post"), ("male", "pre")],
    "Women": [("women", "any"), ("womens", "pre"), ("women's", "pre"), ("for women", "post"),
              ("for her", "post"), ("ladies", "pre")],
    "Boys": [("boys", "any"), ("for boys", "post"), ("kids", "any")],
    "Girls": [("girls", "any"), ("for girls", "post"), ("kids", "any")],
    "Unisex": [("unisex", "pre")],
}  # fmt: skip
_GENDER_MATCH = {
    "men": {"Men", "Unisex"}, "mens": {"Men", "Unisex"}, "men's": {"Men", "Unisex"},
    "for men": {"Men", "Unisex"}, "for him": {"Men", "Unisex"}, "male": {"Men", "Unisex"},
    "women": {"Women", "Unisex"}, "womens": {"Women", "Unisex"}, "women's": {"Women", "Unisex"},
    "for women": {"Women", "Unisex"}, "for her": {"Women", "Unisex"}, "ladies": {"Women", "Unisex"},
    "boys": {"Boys"}, "for boys": {"Boys"}, "girls": {"Girls"}, "for girls": {"Girls"},
    "kids": {"Boys", "Girls"}, "unisex": {"Unisex"},
}  # fmt: skip


def _type_terms(ntype: str) -> list[str]:
    return _TYPE_TERMS.get(ntype, [ntype])


def _type_match(term: str) -> frozenset[str]:
    """Normalised types a (singular) type phrase matches."""
    hits = {t for t, terms in _TYPE_TERMS.items() if term in terms}
    return frozenset(hits or {normalise_type(term)})


def _colour_terms(colour: str) -> list[str]:
    own = colour.lower()
    fam = _COLOUR_FAMILY.get(colour, own)
    return list(dict.fromkeys([own, fam, *_COLOUR_SYNONYMS.get(colour, [])]))


def _colour_match(term: str) -> frozenset[str]:
    """Catalogue colours a query colour word matches (family words match the whole family)."""
    hits = {c for c, fam in _COLOUR_FAMILY.items() if fam == term or c.lower() == term}
    hits |= {c for c, syns in _COLOUR_SYNONYMS.items() if term in syns}
    return frozenset(hits)


# --------------------------------------------------------------------------------------------
# Attribute index: one integer code array per attribute, so a term resolves to a bool mask.

Slot = tuple[str, frozenset[str]]  # (attribute, catalogue values matched)


class _Index:
    """Column codes for the catalogue; masks per (attribute, value set) are cached."""

    def __init__(self, products: Sequence[dict]) -> None:
        self.ids = [str(p["product_id"]) for p in products]
        # A fixed brand list (not one learned from ``products``) keeps a product's query texts
        # independent of the other products passed, e.g. of the trainer's split.
        self.brands = [product_brand(str(p.get("title", "")), KNOWN_BRANDS) for p in products]
        cols = {
            "type": [normalise_type(str(p.get("product_type", ""))) for p in products],
            "colour": [str(p.get("colour", "")) for p in products],
            "gender": [str(p.get("gender", "")) for p in products],
            "usage": [str(p.get("usage", "")) for p in products],
            "brand": self.brands,
        }
        self.values: dict[str, list[str]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for name, col in cols.items():
            vocab = sorted(set(col))
            pos = {v: i for i, v in enumerate(vocab)}
            self.values[name] = vocab
            self.codes[name] = np.fromiter((pos[v] for v in col), dtype=np.int32, count=len(col))
        self._masks: dict[Slot, np.ndarray] = {}

    def mask(self, slot: Slot) -> np.ndarray:
        m = self._masks.get(slot)
        if m is None:
            attr, wanted = slot
            vocab = self.values[attr]
            if attr == "brand":  # "adidas" also matches "adidas originals"
                ok = [i for i, v in enumerate(vocab) if any(v == w or v.startswith(w + " ") for w in wanted)]
            else:
                ok = [i for i, v in enumerate(vocab) if v in wanted]
            m = np.isin(self.codes[attr], np.asarray(ok, dtype=np.int32))
            self._masks[slot] = m
        return m


def relevance_grade(head: np.ndarray, attrs: Sequence[np.ndarray]) -> np.ndarray:
    """Vectorised label rule (module docstring): head mask + attribute masks -> uint8 grades."""
    n_a = len(attrs)
    m = np.zeros(head.shape[0], dtype=np.int16)
    for a in attrs:
        m += a
    grade = np.zeros(head.shape[0], dtype=np.uint8)
    if n_a:
        all_a = m == n_a
        grade[~head & all_a] = 1
        grade[head] = 1
        if n_a >= 2:
            grade[head & (2 * m >= n_a)] = 2
        grade[head & all_a] = 3
    else:
        grade[head] = 3
    return grade


# --------------------------------------------------------------------------------------------
# Query shapes.

# name -> (weight, slots used). "type" is the head; brand-only queries use the brand as head.
_SHAPES: dict[str, tuple[float, tuple[str, ...]]] = {
    "type": (1.0, ("type",)),
    "colour_type": (2.0, ("colour", "type")),
    "colour_type_gender": (2.0, ("colour", "type", "gender")),
    "type_gender": (1.5, ("type", "gender")),
    "brand_type": (1.5, ("brand", "type")),
    "brand": (0.5, ("brand",)),
    "brand_gender": (0.3, ("brand", "gender")),
    "usage_type": (1.0, ("usage", "type")),
    "usage_type_gender": (0.7, ("usage", "type", "gender")),
    "brand_colour_type": (0.8, ("brand", "colour", "type")),
    "brand_type_gender": (0.7, ("brand", "type", "gender")),
}
_MISSPELL_P = 0.15
_PLURAL_P = 0.5


def _misspell(text: str, rng: random.Random) -> str:
    """One seeded typo (adjacent swap, dropped or doubled letter) in a word of >= 5 letters."""
    words = text.split(" ")
    cand = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not cand:
        return text
    i = rng.choice(cand)
    w = words[i]
    op = rng.choice(("swap", "drop", "double"))
    j = rng.randrange(1, len(w) - 1)  # keep the first letter, as most real typos do
    if op == "swap":
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif op == "drop":
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def _compose(rng: random.Random, p: dict, brand: str, shape: str) -> tuple[str, Slot | None, list[Slot]]:
    """Text, head slot and attribute slots of one query of ``shape`` built from product ``p``."""
    slots = _SHAPES[shape][1]
    ntype = normalise_type(str(p.get("product_type", "")))
    pre: list[str] = []
    post: list[str] = []
    head: Slot | None = None
    attrs: list[Slot] = []
    type_text = ""
    uterm = ""
    if "usage" in slots:
        usage = str(p.get("usage", ""))
        uterm = rng.choice(_USAGE_TERMS.get(usage, [usage.lower()]))
    if "type" in slots:
        # "casual casual shoes" is not a query: avoid type phrases that repeat the usage word.
        terms = [t for t in _type_terms(ntype) if not uterm or uterm not in t.split()]
        term = rng.choice(terms or _type_terms(ntype))
        if uterm and uterm in term.split():
            uterm = ""
        head = ("type", _type_match(term) | {ntype})
        type_text = pluralise(term) if rng.random() < _PLURAL_P else term
    if "brand" in slots:
        slot: Slot = ("brand", frozenset({brand}))
        if head is None:
            head = slot
        else:
            attrs.append(slot)
        pre.append(brand)
    if uterm:
        attrs.append(("usage", frozenset(_USAGE_MATCH.get(uterm, set())) | {str(p.get("usage"))}))
        pre.append(uterm)
    if "colour" in slots:
        cterm = rng.choice(_colour_terms(str(p.get("colour", ""))))
        attrs.append(("colour", _colour_match(cterm) | {str(p.get("colour"))}))
        pre.append(cterm)
    if "gender" in slots:
        g = str(p.get("gender", ""))
        gterm, where = rng.choice(_GENDER_TERMS.get(g, [(g.lower(), "any")]))
        attrs.append(("gender", frozenset(_GENDER_MATCH.get(gterm, {g}))))
        if where == "any":
            where = rng.choice(("pre", "post"))
        (pre.insert(0, gterm) if where == "pre" else post.append(gterm))
    parts = [*pre, *([type_text] if type_text else []), *post]
    text = " ".join(x for x in parts if x)
    return text, head, attrs


def generate_queries(products: list[dict], seed: int, per_product: int = 2) -> list[Query]:
    """``per_product`` distinct-shape queries per product, labelled over all ``products``.

    Deterministic: each product draws from its own RNG seeded by (seed, product_id), so a
    product's queries do not depend on which other products are passed. Queries with the same
    intent share one (read-only) relevance dict, which keeps memory bounded on large catalogues.
    """
    if not products:
        return []
    idx = _Index(products)
    shape_names = list(_SHAPES)
    out: list[Query] = []
    label_cache: dict[tuple[Slot | None, tuple[Slot, ...]], dict[str, int]] = {}
    ids = np.asarray(idx.ids, dtype=object)
    for k, p in enumerate(products):
        pid = idx.ids[k]
        rng = random.Random(f"querygen:{seed}:{pid}")
        brand = idx.brands[k]
        usable = [s for s in shape_names if brand or "brand" not in _SHAPES[s][1]]
        if str(p.get("usage", "")) in ("", "NA"):
            usable = [s for s in usable if "usage" not in _SHAPES[s][1]]
        weights = [_SHAPES[s][0] for s in usable]
        seen: set[str] = set()
        for _ in range(per_product):
            text = ""
            shape = ""
            head: Slot | None = None
            attrs: list[Slot] = []
            for _attempt in range(8):  # resample until the product's queries differ
                shape = rng.choices(usable, weights)[0]
                text, head, attrs = _compose(rng, p, brand, shape)
                if rng.random() < _MISSPELL_P:
                    typo = _misspell(text, rng)
                    if typo != text:
                        text, shape = typo, shape + "+misspelt"
                if text and text not in seen:
                    break
            seen.add(text)
            key = (head, tuple(sorted(attrs, key=lambda s: (s[0], sorted(s[1])))))
            rel = label_cache.get(key)
            if rel is None:
                head_mask = idx.mask(head) if head is not None else np.ones(len(ids), dtype=bool)
                grade = relevance_grade(head_mask, [idx.mask(a) for a in attrs])
                nz = np.flatnonzero(grade)
                rel = dict(zip(ids[nz].tolist(), grade[nz].tolist(), strict=True))
                label_cache[key] = rel
            if rel.get(pid) != 3:  # cannot happen by construction; guard the invariant cheaply
                raise AssertionError(f"source product {pid} not graded 3 for {text!r}")
            out.append(Query(text=text, source_product_id=pid, relevance=rel, shape=shape))
    return out
