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

from schemas.events import ProductUpsert, QueryLog
from schemas.outputs import ABMetrics, DeadLetter, ProductEmbedding, RelevanceScore

RECORDS: dict[str, type[BaseModel]] = {
    "product_upsert": ProductUpsert,
    "query_log": QueryLog,
    "product_embedding": ProductEmbedding,
    "relevance_score": RelevanceScore,
    "ab_metrics": ABMetrics,
    "dead_letter": DeadLetter,
}
OUT_DIR = Path(__file__).parent / "json"


def rendered() -> dict[str, bytes]:
    """File name -> JSON Schema bytes (validation mode for inputs, serialisation mode for outputs)."""
    files = {}
    for name, model in RECORDS.items():
        mode: Literal["validation", "serialization"] = (
            "validation" if model in (ProductUpsert, QueryLog) else "serialization"
        )
        schema = model.model_json_schema(mode=mode)
        files[f"{name}.v1.schema.json"] = (
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
