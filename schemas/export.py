"""`python -m schemas.export`: write the JSON Schema of every record into schemas/json/.

Other teams (the ranker, analysts, producers in other languages) read these files; a test fails
when they drift from the pydantic models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel

from schemas.base import InputModel
from schemas.embeddings import ProductEmbeddingV2
from schemas.events import ProductUpsert, QueryLog
from schemas.experiments import ABMetricsV2, Experiment
from schemas.lifecycle import ShadowScores
from schemas.outputs import ABMetrics, DeadLetter, ProductEmbedding, RelevanceScore
from schemas.ranker import QueryScores, RelevanceEntry, ScoreReply, ScoreRequest

RECORDS: dict[tuple[str, int], type[BaseModel]] = {
    ("product_upsert", 1): ProductUpsert,
    ("query_log", 1): QueryLog,
    ("score_request", 1): ScoreRequest,
    ("product_embedding", 1): ProductEmbedding,
    ("product_embedding", 2): ProductEmbeddingV2,
    ("relevance_score", 1): RelevanceScore,
    ("query_scores", 1): QueryScores,
    ("relevance_entry", 1): RelevanceEntry,
    ("score_reply", 1): ScoreReply,
    ("ab_metrics", 1): ABMetrics,
    ("ab_metrics", 2): ABMetricsV2,
    ("experiment", 1): Experiment,
    ("shadow_scores", 1): ShadowScores,
    ("dead_letter", 1): DeadLetter,
}
"""(record name, schema version) -> model; docs/contracts.md says which topic holds each."""
OUT_DIR = Path(__file__).parent / "json"


def rendered() -> dict[str, bytes]:
    """File name -> JSON Schema bytes (validation mode for inputs, serialisation mode for outputs)."""
    files = {}
    for (name, version), model in RECORDS.items():
        is_input = issubclass(model, InputModel) or model is Experiment
        mode: Literal["validation", "serialization"] = "validation" if is_input else "serialization"
        schema = model.model_json_schema(mode=mode)
        files[f"{name}.v{version}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return files


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, content in rendered().items():
        (OUT_DIR / name).write_bytes(content)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
