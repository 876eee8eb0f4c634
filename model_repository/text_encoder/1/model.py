"""Triton python backend: text tower (queries and titles) -> L2-normalised embeddings.

TEXT [B,1] BYTES -> EMBEDDING [B,D] FP32, HAS_TEXT [B,1] BOOL. An empty (or blank) string is a
missing title: its row is zeros with HAS_TEXT false and is not encoded. Identical strings in one
scheduled batch are encoded once (query_relevance repeats the query for every pair).
All model code lives in `querylife`; this file only moves tensors.
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


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.model, _ = load_for_triton(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        sizes: list[int] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b) for b in raw)
            sizes.append(len(raw))
        has_text = np.array([bool(t.strip()) for t in texts], dtype=np.bool_)
        unique = sorted({t for t, h in zip(texts, has_text, strict=True) if h})
        emb = np.zeros((len(texts), self.model.embed_dim), dtype=np.float32)
        if unique:
            encoded = self.model.encode_texts(unique).float().cpu().numpy()
            row = {t: i for i, t in enumerate(unique)}
            idx = [i for i, h in enumerate(has_text) if h]
            emb[idx] = encoded[[row[texts[i]] for i in idx]]
        responses = []
        start = 0
        for n in sizes:
            end = start + n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", emb[start:end]),
                        pb_utils.Tensor("HAS_TEXT", has_text[start:end].reshape(-1, 1)),
                    ]
                )
            )
            start = end
        return responses
