"""Draw the small sample catalogue committed in `data/sample-catalogue/` from the full one.

The sample lets `make demo` (and anyone without `../shared`) run end to end. It is drawn with a fixed
seed, keeps the file order of the source, and copies each product's 128x128 JPEG unchanged; running
it again on the same source rewrites the same files.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import orjson

from querylife.catalogue import FULL_CATALOGUE, PRODUCTS_FILE, SAMPLE_CATALOGUE, shown_path

# The source catalogue's licence (Kaggle "Fashion Product Images (Small)", MIT), shipped with the copy.
LICENCE = """MIT License

Copyright (c) 2019 Param Aggarwal

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = """# sample-catalogue

{count} products drawn (seed {seed}) from `{source}`, a subset of the Kaggle "Fashion Product Images
(Small)" catalogue, with their 128x128 JPEGs in `images/` ({size_kib} KiB in all). Licence: MIT,
see `LICENSE`. Same format as the full catalogue (`products.jsonl`: product_id, title, product_type,
master_category, sub_category, colour, gender, season, usage, year, image_path).

`make demo` uses it when `../shared/data/fashion-products` is absent (and says so). Made by
`qlharness make-sample-catalogue --count {count} --seed {seed}`; do not edit by hand.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=FULL_CATALOGUE,
        help="full catalogue to draw from (products.jsonl + images/)",
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_CATALOGUE, help="folder to (re)write")
    parser.add_argument("--count", type=int, default=300, help="products in the sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")


def draw(source: Path, count: int, seed: int) -> list[bytes]:
    """`count` product lines with an image, chosen by `seed`, in the source's file order."""
    lines = [line for line in (source / PRODUCTS_FILE).read_bytes().splitlines() if line.strip()]
    with_image = [line for line in lines if orjson.loads(line).get("image_path")]
    chosen = sorted(random.Random(seed).sample(range(len(with_image)), min(count, len(with_image))))
    return [with_image[i] for i in chosen]


def run(args: argparse.Namespace) -> int:
    """Rewrite the sample folder from the source catalogue."""
    lines = draw(args.source, args.count, args.seed)
    images = args.out / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    for line in lines:
        name = orjson.loads(line)["image_path"]
        shutil.copyfile(args.source / "images" / name, images / name)
    (args.out / PRODUCTS_FILE).write_bytes(b"\n".join(lines) + b"\n")
    size_kib = sum(p.stat().st_size for p in images.iterdir()) // 1024
    (args.out / "LICENSE").write_text(LICENCE)
    (args.out / "README.md").write_text(
        README.format(count=len(lines), seed=args.seed, source=shown_path(args.source), size_kib=size_kib)
    )
    print(f"wrote {len(lines)} products and their images ({size_kib} KiB) to {shown_path(args.out)}")
    return 0
