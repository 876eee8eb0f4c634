"""Triton python backend: encoded image bytes -> L2-normalised image embeddings.

IMAGE [B,1] BYTES (empty = no image) -> EMBEDDING [B,D] FP32, HAS_IMAGE [B,1] BOOL, ERROR [B,1] BYTES.
Decoding, limits, resize and normalisation are `querylife.imaging.decode_batch` with
`schemas.limits.LIMITS`, the same code training uses; each image is reduced to the model input size
right after decoding, so a batch never holds full-size images (a 1 MiB PNG can decode to 16.7 Mpx),
and the work per image is bounded before it is done (aspect ratio, JPEG scans, WEBP canvas).
A bad image fails only its own row: zeros, HAS_IMAGE false and ERROR "reason: message"; an empty
payload is simply "no image" (ERROR empty). Whatever else raises fails only its own request or item
(`querylife.serving.execute_isolated`): an item the tower cannot encode alone gets
ERROR "image_encode_error: ...".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from querylife.imaging import decode_batch
from querylife.serving import (
    Outputs,
    concat_input,
    execute_isolated,
    load_model_for_triton,
    request_sizes,
    split_outputs,
)
from schemas.limits import LIMITS


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.model = load_model_for_triton(args, pb_utils)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_isolated(requests, self._batch, pb_utils, self._item_by_item, "image_encoder")

    def _batch(self, requests: list[Any]) -> list[Outputs]:
        sizes = request_sizes(requests, "IMAGE", pb_utils)
        return split_outputs(sizes, self._encode(concat_input(requests, "IMAGE", pb_utils)))

    def _item_by_item(self, request: Any) -> Outputs:
        return self._encode(concat_input([request], "IMAGE", pb_utils), one_at_a_time=True)

    def _encode(self, images: np.ndarray, one_at_a_time: bool = False) -> Outputs:
        payloads = [bytes(b) for b in images.reshape(-1)]
        n = len(payloads)
        errors = np.full((n, 1), b"", dtype=np.object_)
        has_image = np.zeros((n, 1), dtype=np.bool_)
        batch = decode_batch(
            payloads,
            self.model.image_size,
            max_bytes=LIMITS.max_image_bytes,
            max_pixels=LIMITS.max_image_pixels,
            allowed_formats=LIMITS.allowed_image_formats,
        )
        for i, exc in batch.errors.items():
            errors[i, 0] = f"{exc.reason}: {exc.message}"[:500].encode("utf-8")
        emb = np.zeros((n, self.model.embed_dim), dtype=np.float32)
        if batch.rows and not one_at_a_time:
            emb[batch.rows] = self.model.encode_images(batch.pixels).float().cpu().numpy()
            has_image[batch.rows, 0] = True
        for k, i in enumerate(batch.rows if one_at_a_time else []):
            try:
                emb[i] = self.model.encode_images(batch.pixels[k : k + 1]).float().cpu().numpy()[0]
                has_image[i, 0] = True
            except Exception as exc:
                errors[i, 0] = f"image_encode_error: {type(exc).__name__}: {exc}"[:500].encode("utf-8")
        return {"EMBEDDING": emb, "HAS_IMAGE": has_image, "ERROR": errors}
