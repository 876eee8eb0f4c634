"""Micro-benchmarks (pytest-benchmark) of the pieces the streaming worker is made of.

Not part of the test suite (`pytest` collects only tests/, and pyproject's addopts skip benchmarks).
Run them explicitly:

    .venv/bin/pytest benchmarks/test_micro.py --benchmark-only            # all (starts a Triton, ~3 min)
    .venv/bin/pytest benchmarks/test_micro.py --benchmark-only -k "not triton"   # in-process only

Each benchmark records `items` per call and `items_per_s` in extra_info (`--benchmark-json` keeps them):
- schema: `schemas.decode_event` / `schemas.encode` of one ProductUpsert and one QueryLog (events/s);
- in-process encoders: text (`encode_texts`) and image (JPEG -> decode -> preprocess -> tower) at 1/8/32;
- Triton round trips on a real LocalTriton: `query_relevance` and `product_embedding` at 1/8/32;
- scoring: calibrated `relevance` + labels on 320 (query, product) pairs (32 queries x 10 impressions).
torch runs on 1 thread, as the CPU Triton configs do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.demo_data import load_catalogue, product_event, query_log_events
from querylife.catalogue import catalogue_dir
from schemas import ProductUpsert, QueryLog, decode_event, encode

REPO = Path(__file__).resolve().parents[1]
DATA = catalogue_dir()  # the full catalogue (flag-free: $QUERYLIFE_DATA or ../shared)
BATCHES = [1, 8, 32]


def run(benchmark: Any, fn: Callable[[], object], items: int, rounds: int | None = None) -> None:
    """Benchmark `fn` (pedantic with `rounds` for slow calls) and record items/s."""
    if rounds is None:
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["items"] = items
    benchmark.extra_info["items_per_s"] = items / benchmark.stats.stats.mean


@pytest.fixture(scope="module")
def catalogue() -> list[dict[str, Any]]:
    if not (DATA / "products.jsonl").exists():
        pytest.skip(f"the shared catalogue is missing at {DATA}")
    return load_catalogue(DATA, 64)


@pytest.fixture(scope="module")
def jpegs(catalogue: list[dict[str, Any]]) -> list[bytes]:
    return [(DATA / "images" / p["image_path"]).read_bytes() for p in catalogue]


@pytest.fixture(scope="module")
def model() -> Any:
    from querylife.model import load_model

    torch.set_num_threads(1)
    return load_model()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from harness.local_services import LocalTriton, prepare_model_repository
    from worker.config import TritonSettings
    from worker.triton_client import RelevanceClient

    repo = prepare_model_repository(tmp_path_factory.mktemp("triton") / "model_repository")
    triton = LocalTriton(repo, log_dir=tmp_path_factory.mktemp("triton-logs")).start()
    c = RelevanceClient(TritonSettings(url=triton.grpc_url, max_batch=64))
    c.wait_ready(120)
    yield c
    c.close()
    triton.stop()


def unit_vectors(n: int, dim: int) -> np.ndarray:
    emb = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ schemas
@pytest.fixture(scope="module")
def product_raw(catalogue: list[dict[str, Any]]) -> bytes:
    return encode(product_event(catalogue[0], datetime.now(UTC)))


@pytest.fixture(scope="module")
def query_raw(catalogue: list[dict[str, Any]]) -> bytes:
    event, _ = next(iter(query_log_events(catalogue, 1, seed=3)))
    return encode(event)


def test_decode_product_upsert(benchmark: Any, product_raw: bytes) -> None:
    run(benchmark, lambda: decode_event(ProductUpsert, product_raw), 1)


def test_encode_product_upsert(benchmark: Any, product_raw: bytes) -> None:
    event = decode_event(ProductUpsert, product_raw)
    run(benchmark, lambda: encode(event), 1)


def test_decode_query_log(benchmark: Any, query_raw: bytes) -> None:
    run(benchmark, lambda: decode_event(QueryLog, query_raw), 1)


def test_encode_query_log(benchmark: Any, query_raw: bytes) -> None:
    event = decode_event(QueryLog, query_raw)
    run(benchmark, lambda: encode(event), 1)


# ------------------------------------------------------------------------------------------ in-process
@pytest.mark.parametrize("batch", BATCHES)
def test_text_encoder_in_process(
    benchmark: Any, model: Any, catalogue: list[dict[str, Any]], batch: int
) -> None:
    texts = [p["title"] for p in catalogue[:batch]]
    with torch.inference_mode():
        run(benchmark, lambda: model.encode_texts(texts), batch, rounds=max(5, 64 // batch))


@pytest.mark.parametrize("batch", BATCHES)
def test_image_encoder_in_process(benchmark: Any, model: Any, jpegs: list[bytes], batch: int) -> None:
    from querylife.imaging import decode_image, preprocess

    def encode_images() -> object:
        return model.encode_images(preprocess([decode_image(j) for j in jpegs[:batch]], model.image_size))

    with torch.inference_mode():
        run(benchmark, encode_images, batch, rounds=max(5, 64 // batch))


def test_scoring_in_process(benchmark: Any, model: Any, catalogue: list[dict[str, Any]]) -> None:
    """Relevance + labels of 320 pairs whose 32 query embeddings are already computed."""
    with torch.inference_mode():
        queries = model.encode_texts([p["title"].lower() for p in catalogue[:32]])
    q = queries.repeat_interleave(10, dim=0)
    p = torch.from_numpy(unit_vectors(320, model.embed_dim))

    def score() -> object:
        _, prob = model.relevance(q, p)
        return [model.label(float(x)) for x in prob]

    with torch.inference_mode():
        run(benchmark, score, 320)


# ------------------------------------------------------------------------------------------ triton
@pytest.mark.parametrize("batch", BATCHES)
def test_triton_query_relevance(
    benchmark: Any, client: Any, catalogue: list[dict[str, Any]], batch: int
) -> None:
    emb = unit_vectors(batch, 256)
    calls = iter(range(10**9))

    def call() -> object:  # distinct queries each call: no dedupe gain
        n = next(calls)
        return client.query_relevance([f"{p['title'].lower()} #{n}" for p in catalogue[:batch]], emb)

    run(benchmark, call, batch, rounds=max(5, 128 // batch))


@pytest.mark.parametrize("batch", BATCHES)
def test_triton_product_embedding(
    benchmark: Any, client: Any, catalogue: list[dict[str, Any]], jpegs: list[bytes], batch: int
) -> None:
    rows = catalogue[:batch]
    titles: list[str | None] = [p["title"] for p in rows]
    types = [p["product_type"] for p in rows]
    images: list[bytes | None] = list(jpegs[:batch])
    run(
        benchmark, lambda: client.product_embeddings(titles, types, images), batch, rounds=max(5, 64 // batch)
    )
