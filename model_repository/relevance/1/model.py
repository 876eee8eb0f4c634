"""Triton python backend: row-wise calibrated relevance of (query, product) embedding pairs.

QUERY_EMBEDDING [B,D], PRODUCT_EMBEDDING [B,D] FP32 -> SIMILARITY [B,1] FP32 (cosine),
SCORE [B,1] FP32 (calibrated probability), LABEL [B,1] BYTES (irrelevant|partial|relevant|exact).
Same arithmetic as `QueryLifeModel.relevance` / `.label`: cosine, then the head's `Calibration`
(the object training fits and evaluation uses); only the head is loaded, no towers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import triton_python_backend_utils as pb_utils

from querylife.calibration import Calibration
from querylife.checkpoint import Head, load_head


def load_for_triton(args: dict[str, Any]) -> tuple[Head, Calibration, torch.device]:
    """Only the trained head (no towers: ~5 s and ~500 MB less per stub), checked against the stamp."""
    config: dict[str, Any] = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    torch.set_num_threads(int(params.get("num_threads", "1")))
    device = torch.device("cpu")
    if args.get("model_instance_kind") == "GPU":
        device = torch.device(f"cuda:{args['model_instance_device_id']}")
    checkpoint = Path(args["model_repository"]) / args["model_version"] / "checkpoint"
    if not checkpoint.is_dir():
        raise pb_utils.TritonModelException(
            f"{checkpoint} is missing: run `querylife export --out <model_repository>` first"
        )
    head, calibration, meta = load_head(checkpoint)
    stamped = params.get("querylife_version")
    if stamped != str(meta["version"]):
        raise pb_utils.TritonModelException(
            f"config.pbtxt stamps querylife_version={stamped!r} but {checkpoint} holds {meta['version']!r}; "
            "re-run `querylife export`"
        )
    return head.to(device).eval(), calibration, device


def _concat_tensor(requests: list[Any], name: str) -> torch.Tensor:
    return torch.from_numpy(
        np.concatenate([pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests])
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.head, self.calibration, self.device = load_for_triton(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        queries = [pb_utils.get_input_tensor_by_name(r, "QUERY_EMBEDDING").as_numpy() for r in requests]
        sizes = [q.shape[0] for q in queries]
        with torch.inference_mode():  # QueryLifeModel.relevance: cosine, then the head's calibration
            query = F.normalize(torch.from_numpy(np.concatenate(queries)).to(self.device).float(), dim=-1)
            product = F.normalize(
                _concat_tensor(requests, "PRODUCT_EMBEDDING").to(self.device).float(), dim=-1
            )
            sim_t = (query * product).sum(-1)
            prob_t = self.calibration.probability(sim_t)
        sim = sim_t.cpu().numpy().reshape(-1, 1)
        prob = prob_t.cpu().numpy().reshape(-1, 1)
        labels = np.array([self.calibration.label(float(p)).encode() for p in prob[:, 0]], dtype=np.object_)
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
