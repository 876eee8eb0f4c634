"""Training resumes from its own state file, loaded with torch.load(weights_only=True)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from querylife.querygen import generate_queries
from querylife.towers import IMAGE_FEAT_DIM, TEXT_FEAT_DIM
from querylife.train import Prepared, SplitData, TrainConfig, train
from tests.toy_catalogue import TOY_PRODUCTS


def _split(products: list[dict[str, Any]], seed: int) -> SplitData:
    """Random frozen-trunk features for a toy catalogue: enough for the training loop to run."""
    g = torch.Generator().manual_seed(seed)
    n = len(products)
    queries = generate_queries(products, seed=seed, per_product=2)
    index = {str(p["product_id"]): i for i, p in enumerate(products)}
    return SplitData(
        products=products,
        image=torch.randn(n, IMAGE_FEAT_DIM, generator=g),
        title=torch.randn(n, TEXT_FEAT_DIM, generator=g),
        has_image=torch.ones(n, dtype=torch.bool),
        has_title=torch.ones(n, dtype=torch.bool),
        types=[str(p["product_type"]) for p in products],
        queries=queries,
        query_feats=torch.randn(len(queries), TEXT_FEAT_DIM, generator=g),
        query_product_idx=torch.tensor([index[q.source_product_id] for q in queries], dtype=torch.long),
        index=index,
    )


def test_training_resumes_from_its_weights_only_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = Prepared(
        splits={"train": _split(TOY_PRODUCTS, 1), "val": _split(TOY_PRODUCTS, 2)},
        type_vocab=sorted({str(p["product_type"]) for p in TOY_PRODUCTS}),
        image_size=128,
        data_hash="toy",
    )
    cfg = TrainConfig(name="resume-test", epochs=2, patience=5, batch_size=4)
    first = train(cfg, prep, tmp_path, device="cpu", progress=False)
    state = tmp_path / "train_state.pt"
    assert state.exists()
    torch.load(state, map_location="cpu", weights_only=True)  # only allow-listed types in it
    assert "resuming" not in capsys.readouterr().out
    second = train(cfg, prep, tmp_path, device="cpu", progress=False)
    assert "resuming at epoch 2" in capsys.readouterr().out
    assert second["history"] == first["history"] and second["best_epoch"] == first["best_epoch"]
