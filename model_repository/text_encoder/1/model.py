"""Triton python backend: text tower (queries and titles) -> L2-normalised embeddings.

TEXT [B,1] BYTES -> EMBEDDING [B,D] FP32, HAS_TEXT [B,1] BOOL. An empty (or blank) string is a
missing title: its row is zeros with HAS_TEXT false and is not encoded. Identical strings in one
scheduled batch are encoded once (query_relevance repeats the query for every pair).
There is no per-item error output: a request that fails by itself gets its own error response and
the requests batched with it their embeddings (`querylife.serving.execute_isolated`).
All model code lives in `querylife`; this file only moves tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from querylife.serving import (
    Outputs,
    concat_input,
    execute_isolated,
    load_model_for_triton,
    request_sizes,
    split_outputs,
)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.model = load_model_for_triton(args, pb_utils)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_isolated(requests, self._batch, pb_utils, model="text_encoder")

    def _batch(self, requests: list[Any]) -> list[Outputs]:
        sizes = request_sizes(requests, "TEXT", pb_utils)
        raw = concat_input(requests, "TEXT", pb_utils).reshape(-1)
        texts = [b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b) for b in raw]
        has_text = np.array([bool(t.strip()) for t in texts], dtype=np.bool_)
        unique = sorted({t for t, h in zip(texts, has_text, strict=True) if h})
        emb = np.zeros((len(texts), self.model.embed_dim), dtype=np.float32)
        if unique:
            encoded = self.model.encode_texts(unique).float().cpu().numpy()
            row = {t: i for i, t in enumerate(unique)}
            idx = [i for i, h in enumerate(has_text) if h]
            emb[idx] = encoded[[row[texts[i]] for i in idx]]
        return split_outputs(sizes, {"EMBEDDING": emb, "HAS_TEXT": has_text.reshape(-1, 1)})
