"""What float16 state storage does to calibrated scores: every (query, product) pair of the test split.

`python -m benchmarks.state_dtype` embeds the test split's products with the committed head (as the
product path does), stores them as float32 and as float16 (`QL_WORKER_STATE_DTYPE`), scores every
generated test query against every test product both ways, and reports the largest absolute
difference of the calibrated score, the mean one, and how many labels change. Writes the numbers to
reports/bench/state_dtype.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson
import torch
import torch.nn.functional as F

from querylife.checkpoint import load_head
from querylife.splits import embed_products, embed_queries
from querylife.train import prepare

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench" / "state_dtype.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the figures (JSON)")
    args = ap.parse_args(argv)
    head, calibration, meta = load_head(None)
    split = prepare(image_size=int(meta.get("image_size", 128))).splits["test"]
    with torch.no_grad():
        head.eval()
        products = embed_products(head, split)
        queries = embed_queries(head, split)
    half = products.to(torch.float16).to(torch.float32)  # what a float16 state hands back
    sims = {
        "float32": queries @ F.normalize(products, dim=-1).t(),
        "float16": queries @ F.normalize(half, dim=-1).t(),
    }
    probs = {k: calibration.probability(v).numpy() for k, v in sims.items()}
    diff = np.abs(probs["float16"] - probs["float32"])
    labels = {
        k: np.searchsorted(np.asarray(calibration.thresholds), v.ravel(), side="right")
        for k, v in probs.items()
    }
    result = {
        "model_version": meta["version"],
        "pairs": int(diff.size),
        "queries": int(sims["float32"].shape[0]),
        "products": int(sims["float32"].shape[1]),
        "max_abs_score_diff": float(diff.max()),
        "mean_abs_score_diff": float(diff.mean()),
        "max_abs_similarity_diff": float((sims["float16"] - sims["float32"]).abs().max()),
        "label_changes": int((labels["float16"] != labels["float32"]).sum()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
