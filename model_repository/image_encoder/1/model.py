"""Triton python backend: encoded image bytes -> L2-normalised image embeddings.

IMAGE [B,1] BYTES (empty = no image) -> EMBEDDING [B,D] FP32, HAS_IMAGE [B,1] BOOL, ERROR [B,1] BYTES.
Decoding, limits, resize and normalisation are `querylife.imaging` with `schemas.limits.LIMITS`, the
same code training uses. A bad image fails only its own row: zeros, HAS_IMAGE false and
ERROR "reason: message"; an empty payload is simply "no image" (ERROR empty).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image

from querylife.imaging import ImageError, decode_image, preprocess
from querylife.model import QueryLifeModel, load_model
from schemas.limits import LIMITS


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


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.model, _ = load_for_triton(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        payloads: list[bytes] = []
        sizes: list[int] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            payloads.extend(bytes(b) for b in raw)
            sizes.append(len(raw))
        n = len(payloads)
        errors = np.full((n, 1), b"", dtype=np.object_)
        has_image = np.zeros((n, 1), dtype=np.bool_)
        images: list[Image.Image] = []
        rows: list[int] = []
        for i, data in enumerate(payloads):
            if not data:
                continue
            try:
                images.append(
                    decode_image(
                        data,
                        max_bytes=LIMITS.max_image_bytes,
                        max_pixels=LIMITS.max_image_pixels,
                        allowed_formats=LIMITS.allowed_image_formats,
                    )
                )
                rows.append(i)
            except ImageError as exc:
                errors[i, 0] = f"{exc.reason}: {exc.message}"[:500].encode("utf-8")
        emb = np.zeros((n, self.model.embed_dim), dtype=np.float32)
        if images:
            pixels = preprocess(images, self.model.image_size)
            emb[rows] = self.model.encode_images(pixels).float().cpu().numpy()
            has_image[rows, 0] = True
        responses = []
        start = 0
        for size in sizes:
            end = start + size
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", emb[start:end]),
                        pb_utils.Tensor("HAS_IMAGE", has_image[start:end]),
                        pb_utils.Tensor("ERROR", errors[start:end]),
                    ]
                )
            )
            start = end
        return responses
