"""Triton python backend: per-product-type fusion of title and image embeddings.

TITLE_EMBEDDING [B,D], IMAGE_EMBEDDING [B,D] FP32, PRODUCT_TYPE [B,1] BYTES, HAS_TITLE [B,1] BOOL,
HAS_IMAGE [B,1] BOOL, optional IMAGE_ERROR [B,1] BYTES -> EMBEDDING [B,D] FP32, ERROR [B,1] BYTES.
The fusion itself is the head's `querylife.fusion.Fusion`, exactly what `QueryLifeModel.fuse` calls;
only the head is loaded (no towers). A row fails (zeros + ERROR) when the image encoder reported an
error for it, or when it has neither a title nor an image ("no_content: ...").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from querylife.calibration import Calibration
from querylife.checkpoint import Head, load_head

NO_CONTENT = b"no_content: the product has neither a title nor a decodable image"


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


def _concat(requests: list[Any], name: str) -> np.ndarray:
    return np.concatenate([pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.head, self.calibration, self.device = load_for_triton(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        sizes = [pb_utils.get_input_tensor_by_name(r, "HAS_TITLE").as_numpy().shape[0] for r in requests]
        title = torch.from_numpy(_concat(requests, "TITLE_EMBEDDING"))
        image = torch.from_numpy(_concat(requests, "IMAGE_EMBEDDING"))
        has_title = _concat(requests, "HAS_TITLE").reshape(-1).astype(np.bool_)
        has_image = _concat(requests, "HAS_IMAGE").reshape(-1).astype(np.bool_)
        types = [b.decode("utf-8", errors="replace") for b in _concat(requests, "PRODUCT_TYPE").reshape(-1)]
        image_error: list[bytes] = []
        for r, n in zip(requests, sizes, strict=True):
            t = pb_utils.get_input_tensor_by_name(r, "IMAGE_ERROR")  # optional input
            image_error.extend([bytes(b) for b in t.as_numpy().reshape(-1)] if t is not None else [b""] * n)
        with torch.inference_mode():  # exactly QueryLifeModel.fuse: the head's type-gated Fusion
            fused = self.head.fusion(
                title.to(self.device),
                image.to(self.device),
                self.head.fusion.type_ids(types, device=self.device),
                torch.from_numpy(has_title).to(self.device),
                torch.from_numpy(has_image).to(self.device),
            )
        emb = fused.float().cpu().numpy()
        errors = np.array(
            [
                err if err else (b"" if (t or i) else NO_CONTENT)
                for err, t, i in zip(image_error, has_title, has_image, strict=True)
            ],
            dtype=np.object_,
        ).reshape(-1, 1)
        emb[errors.reshape(-1) != b""] = 0.0
        responses = []
        start = 0
        for n in sizes:
            end = start + n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", np.ascontiguousarray(emb[start:end])),
                        pb_utils.Tensor("ERROR", errors[start:end]),
                    ]
                )
            )
            start = end
        return responses
