"""Triton python backend: row-wise calibrated relevance of (query, product) embedding pairs.

QUERY_EMBEDDING [B,D], PRODUCT_EMBEDDING [B,D] FP32 -> SIMILARITY [B,1] FP32 (cosine),
SCORE [B,1] FP32 (calibrated probability), LABEL [B,1] BYTES (irrelevant|partial|relevant|exact).
Everything is `QueryLifeModel.relevance` / `QueryLifeModel.label`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from querylife.model import QueryLifeModel, load_model


def load_for_triton(args: dict[str, Any]) -> tuple[QueryLifeModel, dict[str, Any]]:
    """Load the exported checkpoint of this model version and check it against the stamped version."""
    config: dict[str, Any] = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    torch.set_num_threads(int(params.get("num_threads", "1")))
    device = "cpu"
    if args.get("model_instance_kind") == "GPU":
        device = f"cuda:{args['model_instance_device_id']}"
    checkpoint = Path(args["model_repository"]) / args["model_version"] / "checkpoint"
    if not checkpoint.is_dir():
        raise pb_utils.TritonModelException(
            f"{checkpoint} is missing: run `querylife export --out <model_repository>` first"
        )
    model = load_model(checkpoint, device=device)
    stamped = params.get("querylife_version")
    if stamped != model.version:
        raise pb_utils.TritonModelException(
            f"config.pbtxt stamps querylife_version={stamped!r} but {checkpoint} holds {model.version!r}; "
            "re-run `querylife export`"
        )
    return model, config


def _concat(requests: list[Any], name: str) -> np.ndarray:
    return np.concatenate([pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.model, _ = load_for_triton(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        queries = [pb_utils.get_input_tensor_by_name(r, "QUERY_EMBEDDING").as_numpy() for r in requests]
        sizes = [q.shape[0] for q in queries]
        query = torch.from_numpy(np.concatenate(queries)).to(self.model.device)
        product = torch.from_numpy(_concat(requests, "PRODUCT_EMBEDDING")).to(self.model.device)
        sim_t, prob_t = self.model.relevance(query, product)
        sim = sim_t.float().cpu().numpy().reshape(-1, 1)
        prob = prob_t.float().cpu().numpy().reshape(-1, 1)
        labels = np.array([self.model.label(float(p)).encode() for p in prob[:, 0]], dtype=np.object_)
        labels = labels.reshape(-1, 1)
        responses = []
        start = 0
        for n in sizes:
            end = start + n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SIMILARITY", sim[start:end]),
                        pb_utils.Tensor("SCORE", prob[start:end]),
                        pb_utils.Tensor("LABEL", labels[start:end]),
                    ]
                )
            )
            start = end
        return responses
