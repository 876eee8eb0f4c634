"""Triton python backend: per-product-type fusion of title and image embeddings.

TITLE_EMBEDDING [B,D], IMAGE_EMBEDDING [B,D] FP32, PRODUCT_TYPE [B,1] BYTES, HAS_TITLE [B,1] BOOL,
HAS_IMAGE [B,1] BOOL, optional IMAGE_ERROR [B,1] BYTES -> EMBEDDING [B,D] FP32, ERROR [B,1] BYTES,
FUSION_WEIGHTS [B,2] FP32 (title, image: the weights that made EMBEDDING, the "why" of a score).
The fusion itself is `querylife.scoring.fuse`, the function `QueryLifeModel.fuse` calls;
only the head is loaded (no towers). A row fails (zeros + ERROR) when the image encoder reported an
error for it, or when it has neither a title nor an image ("no_content: ..."). Whatever else raises
fails only its own request or item (`querylife.serving.execute_isolated`): an item that cannot be
fused alone gets ERROR "fusion_error: ...".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from querylife.scoring import fuse
from querylife.serving import (
    Outputs,
    concat_input,
    execute_isolated,
    load_head_for_triton,
    request_sizes,
    split_outputs,
)

NO_CONTENT = b"no_content: the product has neither a title nor a decodable image"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.head, self.calibration, self.device = load_head_for_triton(args, pb_utils)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_isolated(requests, self._batch, pb_utils, self._item_by_item, "fusion")

    def _batch(self, requests: list[Any]) -> list[Outputs]:
        return split_outputs(request_sizes(requests, "HAS_TITLE", pb_utils), self._fuse(requests))

    def _item_by_item(self, request: Any) -> Outputs:
        return self._fuse([request], one_at_a_time=True)

    def _fuse(self, requests: list[Any], one_at_a_time: bool = False) -> Outputs:
        sizes = request_sizes(requests, "HAS_TITLE", pb_utils)
        title = torch.from_numpy(concat_input(requests, "TITLE_EMBEDDING", pb_utils))
        image = torch.from_numpy(concat_input(requests, "IMAGE_EMBEDDING", pb_utils))
        has_title = concat_input(requests, "HAS_TITLE", pb_utils).reshape(-1).astype(np.bool_)
        has_image = concat_input(requests, "HAS_IMAGE", pb_utils).reshape(-1).astype(np.bool_)
        types = [
            b.decode("utf-8", errors="replace")
            for b in concat_input(requests, "PRODUCT_TYPE", pb_utils).reshape(-1)
        ]
        image_error: list[bytes] = []
        for r, n in zip(requests, sizes, strict=True):
            t = pb_utils.get_input_tensor_by_name(r, "IMAGE_ERROR")  # optional input
            image_error.extend([bytes(b) for b in t.as_numpy().reshape(-1)] if t is not None else [b""] * n)
        failed: dict[int, bytes] = {}
        if not one_at_a_time:
            emb, weights = self._fusion(title, image, types, has_title, has_image)
        else:
            emb = np.zeros(tuple(title.shape), dtype=np.float32)
            weights = np.zeros((len(types), 2), dtype=np.float32)
            for i in range(len(types)):
                rows = slice(i, i + 1)
                try:
                    one, one_weights = self._fusion(
                        title[rows], image[rows], types[rows], has_title[rows], has_image[rows]
                    )
                    emb[i], weights[i] = one[0], one_weights[0]
                except Exception as exc:
                    failed[i] = f"fusion_error: {type(exc).__name__}: {exc}"[:500].encode("utf-8")
        errors = np.array(
            [
                failed.get(i) or err or (b"" if (t or m) else NO_CONTENT)
                for i, (err, t, m) in enumerate(zip(image_error, has_title, has_image, strict=True))
            ],
            dtype=np.object_,
        ).reshape(-1, 1)
        emb[errors.reshape(-1) != b""] = 0.0
        weights[errors.reshape(-1) != b""] = 0.0
        return {"EMBEDDING": emb, "ERROR": errors, "FUSION_WEIGHTS": weights}

    def _fusion(
        self,
        title: torch.Tensor,
        image: torch.Tensor,
        types: list[str],
        has_title: np.ndarray,
        has_image: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fused embeddings [N,D] and the (title, image) weights [N,2] that made them."""
        flags = (torch.from_numpy(has_title), torch.from_numpy(has_image))
        fused, weights = fuse(self.head.fusion, title, image, types, *flags, device=self.device)
        return np.asarray(fused.float().cpu().numpy()), np.asarray(weights.float().cpu().numpy())
