"""Train the Query-LIFE head (projections + fusion + temperature) on cached frozen-tower features.

Seeded and resumable; early stopping on validation NDCG@10. Variants are config flags (fusion kind,
alignment terms, GenFilt, batch sampler, zero-shot); see ``VARIANTS``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from querylife.calibration import Calibration, fit_calibration
from querylife.checkpoint import Head, save_head
from querylife.data import (
    DEFAULT_CACHE_DIR,
    DEFAULT_DATA_DIR,
    ProductFeatures,
    data_hash,
    load_products,
    product_features,
    split_products,
    text_features_cached,
)
from querylife.losses import AlignmentWeights, alignment_loss, info_nce
from querylife.splits import SplitData, split_similarities

RUNS_DIR = Path(".cache/runs")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "querylife_full"
    image_size: int = 128
    fusion: str = "type_gate"  # type_gate | gate | mean | concat
    align: bool = True  # query-aware alignment terms (q-image, q-title, image-title)
    w_main: float = 1.0
    w_qi: float = 0.5
    w_qt: float = 0.5
    w_it: float = 0.25
    genfilt: str = "none"  # none | [<catalogue>/]<judge> (querylife/genfilt_cache/<that>.jsonl) | oracle
    # measured: type-aware batches hurt unless false negatives are filtered near-perfectly (see report)
    sampler: str = "random"  # random | mixed | type_aware
    types_per_batch: int = 4
    batch_size: int = 128
    epochs: int = 40
    patience: int = 6
    lr: float = 2e-3
    weight_decay: float = 1e-4
    modality_dropout: float = 0.05  # train the single-modality paths too
    zero_shot: bool = False  # image-title CLIP alignment only: never sees a query
    image_adapter: int = 0  # width of a residual MLP on the frozen image features (0: none)
    seed: int = 0
    query_seed: int = 0
    per_product: int = 2

    def alignment(self) -> AlignmentWeights:
        if not self.align:
            return AlignmentWeights(main=self.w_main, query_image=0.0, query_title=0.0, image_title=0.0)
        return AlignmentWeights(
            main=self.w_main, query_image=self.w_qi, query_title=self.w_qt, image_title=self.w_it
        )


VARIANTS: dict[str, dict[str, Any]] = {
    # query never seen: projections aligned on (image, title) pairs only, mean fusion
    "zero_shot": {"fusion": "mean", "align": False, "zero_shot": True},
    "baseline_mean": {"fusion": "mean", "align": False, "genfilt": "none"},
    "baseline_concat": {"fusion": "concat", "align": False, "genfilt": "none"},
    "querylife_full": {"fusion": "type_gate", "align": True, "genfilt": "@judge"},
    "ablate_no_type_fusion": {"fusion": "gate", "align": True, "genfilt": "@judge"},
    "ablate_no_alignment": {"fusion": "type_gate", "align": False, "genfilt": "@judge"},
    "ablate_no_genfilt": {"fusion": "type_gate", "align": True, "genfilt": "none"},
    # #22 item 4: ablate_no_genfilt plus a residual adapter on the image features, so the image side
    # is no longer one linear map of ImageNet features
    "image_adapter": {"fusion": "type_gate", "align": True, "genfilt": "none", "image_adapter": 256},
    "genfilt_oracle": {"fusion": "type_gate", "align": True, "genfilt": "oracle"},
    "type_aware_batches": {
        "fusion": "type_gate",
        "align": True,
        "genfilt": "@judge",
        "sampler": "type_aware",
    },
    "type_aware_batches_oracle": {
        "fusion": "type_gate",
        "align": True,
        "genfilt": "oracle",
        "sampler": "type_aware",
    },
}


def variant_config(name: str, judge: str = "none", **overrides: Any) -> TrainConfig:
    spec = dict(VARIANTS[name])
    if spec.get("genfilt") == "@judge":
        spec["genfilt"] = judge
    spec.update(overrides)
    return replace(TrainConfig(name=name), **spec)


# ------------------------------------------------------------------------------------------------
# Prepared data: products, features, queries (with graded labels) per split.


@dataclass
class Prepared:
    splits: dict[str, SplitData]
    type_vocab: list[str]
    image_size: int
    data_hash: str


def prepare(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    image_size: int = 128,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    query_seed: int = 0,
    per_product: int = 2,
) -> Prepared:
    from querylife.querygen import generate_queries

    products = load_products(data_dir)
    feats: ProductFeatures = product_features(data_dir, image_size=image_size, cache_dir=cache_dir)
    fidx = feats.index()
    splits: dict[str, SplitData] = {}
    for name, prods in split_products(products).items():
        rows = torch.tensor([fidx[p["product_id"]] for p in prods], dtype=torch.long)
        queries = generate_queries(prods, seed=query_seed, per_product=per_product)
        qf = text_features_cached(
            [q.text for q in queries],
            cache_dir=cache_dir,
            image_size=image_size,
            desc=f"{name} query features",
        )
        index = {p["product_id"]: i for i, p in enumerate(prods)}
        splits[name] = SplitData(
            products=prods,
            image=feats.image[rows],
            title=feats.title[rows],
            has_image=feats.has_image[rows],
            has_title=feats.has_title[rows],
            types=[str(p.get("product_type") or "") for p in prods],
            queries=queries,
            query_feats=qf,
            query_product_idx=torch.tensor([index[q.source_product_id] for q in queries], dtype=torch.long),
            index=index,
        )
    vocab = sorted({t for p in splits["train"].products if (t := str(p.get("product_type") or ""))})
    return Prepared(splits=splits, type_vocab=vocab, image_size=image_size, data_hash=data_hash(data_dir))


# ------------------------------------------------------------------------------------------------
# Batch samplers.


def batches(cfg: TrainConfig, s: SplitData, rng: random.Random) -> list[list[int]]:
    """One epoch of query-index batches; a product appears at most once per batch."""
    nq = len(s.queries)
    steps = max(1, nq // cfg.batch_size)
    by_product: dict[int, list[int]] = defaultdict(list)
    for qi, pj in enumerate(s.query_product_idx.tolist()):
        by_product[pj].append(qi)
    out: list[list[int]] = []
    if cfg.sampler == "random":
        order = list(range(nq))
        rng.shuffle(order)
        cur: list[int] = []
        seen: set[int] = set()
        for qi in order:
            pj = int(s.query_product_idx[qi])
            if pj in seen:
                continue
            cur.append(qi)
            seen.add(pj)
            if len(cur) == cfg.batch_size:
                out.append(cur)
                cur, seen = [], set()
        return out
    # type-aware: each batch drawn from a few product types -> hard in-batch negatives;
    # "mixed": half of each batch type-aware, the rest uniform (keeps cross-type contrast)
    n_typed = cfg.batch_size // 2 if cfg.sampler == "mixed" else cfg.batch_size
    by_type: dict[str, list[int]] = defaultdict(list)
    for pj, t in enumerate(s.types):
        if pj in by_product:
            by_type[t].append(pj)
    types = sorted(by_type)
    all_products = sorted(by_product)
    weights = [math.sqrt(len(by_type[t])) for t in types]
    for _ in range(steps):
        chosen: list[int] = []
        picked_types: set[str] = set()
        while len(chosen) < n_typed and len(picked_types) < len(types):
            t = rng.choices(types, weights)[0]
            if t in picked_types:
                continue
            picked_types.add(t)
            per = cfg.batch_size // cfg.types_per_batch
            pool = by_type[t]
            take = rng.sample(pool, min(per, len(pool), n_typed - len(chosen)))
            chosen.extend(take)
        if len(chosen) < cfg.batch_size:
            taken = set(chosen)
            rest = [
                pj
                for pj in rng.sample(all_products, min(len(all_products), 2 * cfg.batch_size))
                if pj not in taken
            ]
            chosen.extend(rest[: cfg.batch_size - len(chosen)])
        out.append([rng.choice(by_product[pj]) for pj in chosen])
    return out


# ------------------------------------------------------------------------------------------------
# GenFilt masks.


def genfilt_cache_path(judge: str) -> Path:
    return Path(__file__).resolve().parent / "genfilt_cache" / f"{judge}.jsonl"


def make_mask_fn(cfg: TrainConfig, s: SplitData) -> Callable[[list[int]], torch.Tensor | None]:
    pids = [p["product_id"] for p in s.products]
    if cfg.genfilt == "none" or cfg.zero_shot:
        return lambda qs: None
    if cfg.genfilt == "oracle":

        def oracle(qs: list[int]) -> torch.Tensor:
            cols = [pids[int(s.query_product_idx[q])] for q in qs]
            m = torch.tensor([[s.queries[q].relevance.get(c, 0) >= 2 for c in cols] for q in qs])
            m.fill_diagonal_(False)
            return m

        return oracle
    from querylife import genfilt

    path = genfilt_cache_path(cfg.genfilt)
    if not path.exists():
        print(f"warning: GenFilt cache {path} missing: only same-product/same-text pairs are masked")
    judgements = genfilt.load_judgements(path, Path(cfg.genfilt).name)  # "large/smollm2": smollm2's

    def judged(qs: list[int]) -> torch.Tensor:
        texts = [s.queries[q].text for q in qs]
        cols = [pids[int(s.query_product_idx[q])] for q in qs]
        return genfilt.false_negative_mask(texts, cols, judgements)

    return judged


# ------------------------------------------------------------------------------------------------
# Training loop.


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: TrainConfig,
    prep: Prepared,
    out_dir: str | Path | None = None,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one variant; writes head.pt/head.json + metrics.json + curves into ``out_dir``."""
    from querylife.evaluate import retrieval_metrics

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir) if out_dir is not None else RUNS_DIR / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)
    head = Head(prep.type_vocab, fusion=cfg.fusion, image_adapter=cfg.image_adapter).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr, va = prep.splits["train"], prep.splits["val"]
    mask_fn = make_mask_fn(cfg, tr)
    weights = cfg.alignment()
    rng = random.Random(cfg.seed)
    state_path = out / "train_state.pt"
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"ndcg10": -1.0, "epoch": -1, "state": None}
    start_epoch = 0
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    if resume and state_path.exists():
        # weights_only: tensors, numbers, strings and containers only (no pickled code); train() writes
        # nothing else into it, and a file swapped into the run directory cannot execute on resume.
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st.get("config") == cfg_json and st.get("data_hash") == prep.data_hash:
            head.load_state_dict(st["head"])
            opt.load_state_dict(st["opt"])
            rng.setstate(st["rng"])
            torch.set_rng_state(st["torch_rng"])
            history, best, start_epoch = st["history"], st["best"], st["epoch"] + 1
            print(f"[{cfg.name}] resuming at epoch {start_epoch}")
    tr_img, tr_title = tr.image.to(dev), tr.title.to(dev)
    tr_hi, tr_ht = tr.has_image.to(dev), tr.has_title.to(dev)
    tr_q = tr.query_feats.to(dev)
    tr_type_ids = head.fusion.type_ids(tr.types, device=dev)
    val_grades = va.grades()
    t0 = time.time()
    bad_epochs = 0 if not history else (history[-1]["epoch"] - best["epoch"])
    epochs = range(start_epoch, cfg.epochs)
    bar = tqdm(epochs, desc=f"train {cfg.name}", unit="ep", disable=not progress)
    for epoch in bar:
        if bad_epochs >= cfg.patience:
            break
        head.train()
        losses: list[float] = []
        masked = 0
        for qs in batches(cfg, tr, rng):
            pj = tr.query_product_idx[qs].to(dev)
            t = F.normalize(head.text_proj(tr_title[pj]), dim=-1)
            i = F.normalize(head.image_proj(tr_img[pj]), dim=-1)
            has_i, has_t = tr_hi[pj].clone(), tr_ht[pj].clone()
            if cfg.modality_dropout > 0:
                drop = torch.rand(len(qs), device=dev) < cfg.modality_dropout
                which = torch.rand(len(qs), device=dev) < 0.5
                has_i = has_i & ~(drop & which & has_t)
                has_t = has_t & ~(drop & ~which & has_i)
            scale = head.logit_scale()
            if cfg.zero_shot:
                loss = info_nce(i, t, scale)
            else:
                q = F.normalize(head.text_proj(tr_q[qs]), dim=-1)
                f = head.fusion(t, i, tr_type_ids[pj], has_t, has_i)
                mask = mask_fn(qs)
                if mask is not None:
                    mask = mask.to(dev)
                    masked += int(mask.sum())
                loss, _parts = alignment_loss(
                    q, f, i, t, scale, weights, mask, has_image=has_i, has_title=has_t
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sims = split_similarities(head, va, dev)
        m = retrieval_metrics(sims.numpy(), val_grades)
        rec = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_ndcg10": m["ndcg10"],
            "val_mrr": m["mrr"],
            "masked_per_step": masked / max(1, len(losses)),
            "temperature": float(1.0 / head.logit_scale().detach()),
            "elapsed_s": time.time() - t0,
        }
        history.append(rec)
        if m["ndcg10"] > best["ndcg10"]:
            best = {
                "ndcg10": m["ndcg10"],
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val_ndcg10=f"{m['ndcg10']:.4f}", best=best["epoch"])
        torch.save(
            {
                "config": cfg_json,
                "data_hash": prep.data_hash,
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "epoch": epoch,
            },
            state_path,
        )
    head.load_state_dict(best["state"])
    head.cpu().eval()
    calibration = calibrate(head, va, val_grades)
    result = {
        "config": asdict(cfg),
        "best_epoch": best["epoch"],
        "best_val_ndcg10": best["ndcg10"],
        "history": history,
        "train_seconds": time.time() - t0,
    }
    version = save_head(
        out,
        head,
        calibration,
        prep.image_size,
        extra={
            "trained": True,
            "variant": cfg.name,
            "train_config": asdict(cfg),
            "data_hash": prep.data_hash,
            "best_epoch": best["epoch"],
            "val_ndcg10": best["ndcg10"],
            "splits": {k: len(v.products) for k, v in prep.splits.items()},
        },
    )
    result["version"] = version
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def calibrate(head: Head, s: SplitData, grades: np.ndarray | None = None) -> Calibration:
    sims = split_similarities(head, s).numpy()
    g = s.grades() if grades is None else grades
    return fit_calibration(sims.ravel(), g.ravel())
