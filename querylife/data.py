"""Catalogue loading, deterministic product-level splits and the frozen-tower feature cache.

Features are the frozen trunks' pooled outputs (EfficientNet-Lite0 1280-d, MiniLM 384-d), cached on
disk under ``.cache/features/`` keyed by tower fingerprint + image size + data-file hash, so
training only runs the small trainable head.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from querylife.catalogue import catalogue_dir
from querylife.imaging import ImageError, decode_image, preprocess
from querylife.towers import Towers, build_towers, tower_fingerprint

DEFAULT_DATA_DIR = catalogue_dir()
DEFAULT_CACHE_DIR = Path(os.environ.get("QUERYLIFE_CACHE", ".cache/features"))
SPLITS = ("train", "val", "test")


def load_products(data_dir: str | Path = DEFAULT_DATA_DIR) -> list[dict[str, Any]]:
    path = Path(data_dir) / "products.jsonl"
    with path.open() as fh:
        products = [json.loads(line) for line in fh if line.strip()]
    for p in products:
        p["product_id"] = str(p["product_id"])
    return products


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_hash(data_dir: str | Path = DEFAULT_DATA_DIR) -> str:
    return file_hash(Path(data_dir) / "products.jsonl")


def split_of(product_id: str, val_pct: int = 10, test_pct: int = 15) -> str:
    """Deterministic split by product id (stable under catalogue growth)."""
    bucket = int(hashlib.sha256(f"querylife-split:{product_id}".encode()).hexdigest()[:8], 16) % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + val_pct:
        return "val"
    return "train"


def split_products(products: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for p in products:
        out[split_of(p["product_id"])].append(p)
    return out


@dataclass
class ProductFeatures:
    product_ids: list[str]
    image: torch.Tensor  # [N, 1280] frozen trunk features (zeros where has_image is False)
    title: torch.Tensor  # [N, 384]
    has_image: torch.Tensor  # [N] bool
    has_title: torch.Tensor  # [N] bool

    def index(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.product_ids)}


def _load_pixels(
    data_dir: Path, products: Sequence[dict[str, Any]], image_size: int
) -> tuple[torch.Tensor, list[bool]]:
    images = []
    ok = []
    for p in products:
        path = data_dir / "images" / str(p.get("image_path") or f"{p['product_id']}.jpg")
        try:
            images.append(decode_image(path.read_bytes(), image_size=image_size))
            ok.append(True)
        except (OSError, ImageError):
            ok.append(False)
    pixels = preprocess(images, image_size)
    full = torch.zeros(len(products), 3, image_size, image_size)
    if images:
        full[torch.tensor(ok)] = pixels
    return full, ok


def extract_text_features(
    towers: Towers, texts: Sequence[str], batch: int = 128, desc: str = "text"
) -> torch.Tensor:
    outs = []
    for i in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", leave=False):
        outs.append(towers.text_features(list(texts[i : i + batch])))
    return torch.cat(outs).clone() if outs else torch.empty(0, 384)


def product_features(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    image_size: int = 224,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    towers: Towers | None = None,
    batch: int = 64,
    threads: int | None = 2,
) -> ProductFeatures:
    """Frozen-tower features for every product in ``data_dir`` (cached on disk)."""
    data_dir = Path(data_dir)
    key = f"products-{tower_fingerprint(image_size)}-s{image_size}-{data_hash(data_dir)[:16]}.pt"
    cache = Path(cache_dir) / key
    if cache.exists():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        return ProductFeatures(
            product_ids=list(blob["product_ids"]),
            image=blob["image"],
            title=blob["title"],
            has_image=blob["has_image"],
            has_title=blob["has_title"],
        )
    if threads:
        torch.set_num_threads(threads)
    towers = towers or build_towers(image_size)
    products = load_products(data_dir)
    t0 = time.time()
    img_feats = []
    has_image: list[bool] = []
    for i in tqdm(range(0, len(products), batch), desc=f"image features @{image_size}px", unit="batch"):
        chunk = products[i : i + batch]
        pixels, ok = _load_pixels(data_dir, chunk, image_size)
        feats = towers.image_features(pixels).clone()
        feats[~torch.tensor(ok)] = 0.0
        img_feats.append(feats)
        has_image.extend(ok)
    t_img = time.time() - t0
    titles = [str(p.get("title") or "") for p in products]
    title_feats = extract_text_features(towers, titles, desc="title features")
    t_all = time.time() - t0
    blob = {
        "product_ids": [p["product_id"] for p in products],
        "image": torch.cat(img_feats),
        "title": title_feats,
        "has_image": torch.tensor(has_image),
        "has_title": torch.tensor([bool(t.strip()) for t in titles]),
        "timing": {"image_s": t_img, "total_s": t_all, "n": len(products)},
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(cache)
    print(
        f"features: {len(products)} products, images {len(products) / max(t_img, 1e-9):.1f}/s, "
        f"total {t_all:.1f}s"
    )
    return ProductFeatures(
        product_ids=blob["product_ids"],
        image=blob["image"],
        title=blob["title"],
        has_image=blob["has_image"],
        has_title=blob["has_title"],
    )


def text_features_cached(
    texts: Sequence[str],
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    towers: Towers | None = None,
    image_size: int = 224,
    desc: str = "query features",
) -> torch.Tensor:
    """MiniLM features for a list of texts (cached by the hash of the list)."""
    h = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"texts-{tower_fingerprint(0)}-{h}.pt"
    if cache.exists():
        feats: torch.Tensor = torch.load(cache, map_location="cpu", weights_only=True)
        return feats
    towers = towers or build_towers(image_size)
    feats = extract_text_features(towers, texts, desc=desc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats
