"""The catalogue-scale benchmark at a small N, as a correctness test: every load in its own process
ends with exactly the products written (updates and tombstones applied), and the warm restart comes
from the snapshot and reads the further 1 %. Times are the benchmark's business, not this test's."""

from __future__ import annotations

from pathlib import Path

import orjson

from benchmarks import state_scale


def test_scale_benchmark_small(tmp_path: Path) -> None:
    out = tmp_path / "state_scale.json"
    assert state_scale.main(["--sizes", "3000", "--out", str(out)]) == 0
    [sample] = orjson.loads(out.read_bytes())["samples"]
    for k, dtype in enumerate(("float32", "float16")):  # 1 % deleted; 1 % more before each warm restart
        cold, warm = sample[f"cold_{dtype}"], sample[f"warm_{dtype}"]
        assert not cold["restored"] and cold["products"] == 3000 - 30 + k * 30
        assert warm["restored"] and warm["products"] == cold["products"] + 30
    assert sample["cold_float16"]["vector_bytes"] * 2 == sample["cold_float32"]["vector_bytes"]
    assert sample["record_bytes"] < 1700  # a 256-d float32 v2 record; v1 JSON was ~5.5 KB
