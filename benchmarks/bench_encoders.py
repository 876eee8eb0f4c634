"""Embeddings/s of the Query-LIFE serving paths (text and image) at batch 1, 8 and 32.

    .venv/bin/python benchmarks/bench_encoders.py [--threads 1] [--seconds 3] [--image-size N]

Text path: ``encode_texts`` (tokenise + MiniLM + projection). Image path: JPEG bytes ->
``imaging.decode_image`` -> ``imaging.preprocess`` -> ``encode_images`` (what Triton's image encoder
runs), and the model-only part on already preprocessed pixels. Prints items/s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from querylife.data import DEFAULT_DATA_DIR, load_products
from querylife.imaging import decode_image, preprocess
from querylife.model import load_model


def _rate(fn: Callable[[], object], items: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            return n * items / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core CPU (measured)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint)
    products = load_products(a.data_dir)[:64]
    titles = [p["title"] for p in products]
    jpegs = [(a.data_dir / "images" / p["image_path"]).read_bytes() for p in products]
    print(f"model {model.version}, image size {model.image_size}, torch threads {torch.get_num_threads()}")
    results = []
    for b in (int(x) for x in a.batches.split(",")):
        texts = titles[:b]
        pix = preprocess([decode_image(j) for j in jpegs[:b]], model.image_size)

        def full_image(b: int = b) -> object:
            return model.encode_images(preprocess([decode_image(j) for j in jpegs[:b]], model.image_size))

        rows = {
            "text (encode_texts)": _rate(partial(model.encode_texts, texts), b, a.seconds),
            "image (model only)": _rate(partial(model.encode_images, pix), b, a.seconds),
            "image (jpeg->decode->preprocess->model)": _rate(full_image, b, a.seconds),
        }
        for name, r in rows.items():
            print(f"batch {b:>3}  {name:<42} {r:8.1f} items/s")
            results.append({"batch": b, "path": name, "items_per_s": r})
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
