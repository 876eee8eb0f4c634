"""Triton python backend: row-wise calibrated relevance of (query, product) embedding pairs.

QUERY_EMBEDDING [B,D], PRODUCT_EMBEDDING [B,D] FP32 -> SIMILARITY [B,1] FP32 (cosine),
SCORE [B,1] FP32 (calibrated probability), LABEL [B,1] BYTES (irrelevant|partial|relevant|exact).
The arithmetic is `querylife.scoring.relevance`, the function `QueryLifeModel.relevance` calls
(cosine, then the head's `Calibration`, the object training fits and evaluation uses); labels as
`QueryLifeModel.label`; only the head is loaded, no towers.
There is no per-item error output: a request that fails by itself gets its own error response and
the requests batched with it their scores (`querylife.serving.execute_isolated`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from querylife.scoring import relevance
from querylife.serving import (
    Outputs,
    concat_input,
    execute_isolated,
    load_head_for_triton,
    request_sizes,
    split_outputs,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.head, self.calibration, self.device = load_head_for_triton(args, pb_utils)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_isolated(requests, self._batch, pb_utils, model="relevance")

    def _batch(self, requests: list[Any]) -> list[Outputs]:
        sizes = request_sizes(requests, "QUERY_EMBEDDING", pb_utils)
        query = torch.from_numpy(concat_input(requests, "QUERY_EMBEDDING", pb_utils)).to(self.device)
        product = torch.from_numpy(concat_input(requests, "PRODUCT_EMBEDDING", pb_utils)).to(self.device)
        sim_t, prob_t = relevance(self.calibration, query, product)  # exactly QueryLifeModel.relevance
        sim = sim_t.cpu().numpy().reshape(-1, 1)
        prob = prob_t.cpu().numpy().reshape(-1, 1)
        labels = np.array([self.calibration.label(float(p)).encode() for p in prob[:, 0]], dtype=np.object_)
        labels = labels.reshape(-1, 1)
        return split_outputs(sizes, {"SIMILARITY": sim, "SCORE": prob, "LABEL": labels})
