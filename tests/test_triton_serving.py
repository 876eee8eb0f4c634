"""The exported Query-LIFE ensembles on a real Triton (session fixture `triton` in conftest.py) match the
in-process `load_model()` on real catalogue products, through gRPC and HTTP; bad items fail alone;
the client's retries are bounded."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image

from querylife.imaging import decode_image, preprocess
from querylife.model import QueryLifeModel, load_model
from worker.config import TritonSettings
from worker.local_services import LocalTriton, free_port
from worker.triton_client import (
    PRODUCT_MODEL,
    QUERY_MODEL,
    RelevanceClient,
    TritonRequestError,
    TritonUnavailable,
)

ATOL = 1e-5
Protocol = Literal["grpc", "http"]
N_PRODUCTS = 6


@dataclass
class Product:
    title: str | None
    product_type: str
    image: bytes | None


@pytest.fixture(scope="module")
def model() -> QueryLifeModel:
    torch.set_num_threads(2)
    return load_model()


@pytest.fixture(scope="module")
def products(data_dir: Path) -> list[Product]:
    """A handful of real products with images; one loses its image, one its title."""
    out: list[Product] = []
    with open(data_dir / "products.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            path = data_dir / "images" / str(row.get("image_path") or "")
            if row.get("image_path") and path.is_file():
                out.append(Product(row["title"], row["product_type"], path.read_bytes()))
            if len(out) == N_PRODUCTS:
                break
    out[1].image = None  # title only
    out[2].title = None  # image only
    return out


def in_process(model: QueryLifeModel, products: list[Product]) -> np.ndarray:
    """The reference: the serving contract of querylife.model, called directly."""
    n = len(products)
    has_title = torch.tensor([p.title is not None for p in products])
    has_image = torch.tensor([p.image is not None for p in products])
    title = torch.zeros(n, model.embed_dim)
    titled = [i for i, p in enumerate(products) if p.title is not None]
    title[titled] = model.encode_texts([str(products[i].title) for i in titled])
    image = torch.zeros(n, model.embed_dim)
    pictured = [i for i, p in enumerate(products) if p.image is not None]
    pixels = preprocess(
        [decode_image(bytes(products[i].image or b""), image_size=model.image_size) for i in pictured],
        model.image_size,
    )
    image[pictured] = model.encode_images(pixels)
    fused = model.fuse(title, image, [p.product_type for p in products], has_title, has_image)
    return fused.numpy()


def settings_for(triton: LocalTriton, protocol: Protocol, **kw: object) -> TritonSettings:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    return TritonSettings(url=url, protocol=protocol, timeout_s=30, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request: pytest.FixtureRequest, triton: LocalTriton) -> Iterator[RelevanceClient]:
    c = RelevanceClient(settings_for(triton, request.param))
    c.wait_ready(60)
    yield c
    c.close()


def test_ready_metadata_and_version(
    client: RelevanceClient, triton: LocalTriton, model: QueryLifeModel
) -> None:
    assert client.is_ready()
    assert client.model_version() == model.version
    assert client.embedding_dim() == model.embed_dim  # the width query workers hold embeddings at
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(triton.grpc_url)
    meta = {m: raw.get_model_metadata(m, as_json=True) for m in (PRODUCT_MODEL, QUERY_MODEL)}
    assert {t["name"] for t in meta[PRODUCT_MODEL]["inputs"]} == {"TITLE", "PRODUCT_TYPE", "IMAGE"}
    assert {t["name"] for t in meta[PRODUCT_MODEL]["outputs"]} == {"EMBEDDING", "ERROR"}
    assert {t["name"] for t in meta[QUERY_MODEL]["inputs"]} == {"QUERY", "PRODUCT_EMBEDDING"}
    assert {t["name"] for t in meta[QUERY_MODEL]["outputs"]} == {"SIMILARITY", "SCORE", "LABEL"}
    for name in ("text_encoder", "image_encoder", "fusion", "relevance", PRODUCT_MODEL, QUERY_MODEL):
        cfg = raw.get_model_config(name, as_json=True)["config"]
        assert cfg["parameters"]["querylife_version"]["string_value"] == model.version
        assert int(cfg["max_batch_size"]) >= client.settings.max_batch
    raw.close()


def test_product_embeddings_match_in_process(
    client: RelevanceClient, model: QueryLifeModel, products: list[Product]
) -> None:
    results = client.product_embeddings(
        [p.title for p in products], [p.product_type for p in products], [p.image for p in products]
    )
    expected = in_process(model, products)
    assert [r.error for r in results] == [None] * len(products)
    got = np.stack([r.embedding for r in results if r.embedding is not None])
    assert got.shape == (len(products), model.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_query_relevance_matches_in_process(
    client: RelevanceClient, model: QueryLifeModel, products: list[Product]
) -> None:
    product_emb = in_process(model, products)
    # query_relevance repeats a query once per pair: the text encoder dedupes within a batch
    queries = [f"{p.title or p.product_type}".lower() for p in products] + ["blue summer skirt"] * len(
        products
    )
    pairs = np.concatenate([product_emb, product_emb])
    scores = client.query_relevance(queries, pairs)
    sim, prob = model.relevance(model.encode_texts(queries), torch.from_numpy(pairs))
    np.testing.assert_allclose([s.similarity for s in scores], sim.numpy(), atol=ATOL)
    np.testing.assert_allclose([s.score for s in scores], prob.numpy(), atol=ATOL)
    assert [s.label for s in scores] == [model.label(float(p)) for p in prob]
    assert all(s.label in ("irrelevant", "partial", "relevant", "exact") for s in scores)


def test_chunking_by_max_batch_gives_the_same_results(
    triton: LocalTriton, model: QueryLifeModel, products: list[Product]
) -> None:
    with RelevanceClient(settings_for(triton, "grpc", max_batch=4)) as small:
        results = small.product_embeddings(
            [p.title for p in products], [p.product_type for p in products], [p.image for p in products]
        )
        got = np.stack([r.embedding for r in results if r.embedding is not None])
        np.testing.assert_allclose(got, in_process(model, products), atol=ATOL)
        assert small.product_embeddings([], [], []) == []
        assert small.query_relevance([], np.zeros((0, model.embed_dim), np.float32)) == []


def _truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4097, 4097)).save(buf, format="PNG", optimize=True)  # pixel count over the limit
    return buf.getvalue()


def test_bad_items_fail_alone(
    client: RelevanceClient, model: QueryLifeModel, products: list[Product]
) -> None:
    good = products[:3]
    jpeg = bytes(products[0].image or b"")
    batch = [
        good[0],
        Product("Corrupt Image Shirt", "Shirts", b"\xff\xd8\xff\xe0 this is not a jpeg"),
        good[1],
        Product(None, "Shirts", None),  # neither title nor image
        Product("Truncated Image Tee", "Tshirts", _truncated_jpeg(jpeg)),
        Product("Bomb", "Shirts", _huge_png()),
        good[2],
    ]
    results = client.product_embeddings(
        [p.title for p in batch], [p.product_type for p in batch], [p.image for p in batch]
    )
    errors = [r.error for r in results]
    assert errors[0] is None and errors[2] is None and errors[6] is None
    assert errors[1] is not None and errors[1].split(":")[0] in (
        "image_decode_error",
        "unsupported_image_format",
    )
    assert errors[3] is not None and errors[3].startswith("no_content:")
    assert errors[4] is not None and errors[4].startswith("image_decode_error:")
    assert errors[5] is not None and errors[5].startswith("decompression_bomb:")
    assert all(results[i].embedding is None for i in (1, 3, 4, 5))
    got = np.stack([results[i].embedding for i in (0, 2, 6)])  # type: ignore[misc]
    np.testing.assert_allclose(got, in_process(model, good), atol=ATOL)


def test_large_images_are_reduced_as_in_process(
    client: RelevanceClient, model: QueryLifeModel, products: list[Product]
) -> None:
    """Images far above the model size (a 4096 x 4096 PNG, a 2048 x 2048 JPEG, each < 1 MiB) embed as the
    in-process path does: reduced to the model input right after decoding (JPEG at a DCT scale)."""
    photo = Image.open(io.BytesIO(bytes(products[0].image or b""))).convert("RGB")
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.resize((2048, 2048), Image.Resampling.BICUBIC).save(jpeg, format="JPEG", quality=85)
    Image.new("RGB", (4096, 4096), (180, 40, 90)).save(png, format="PNG")
    big = [
        Product(products[0].title, products[0].product_type, jpeg.getvalue()),
        Product(products[3].title, products[3].product_type, png.getvalue()),
    ]
    assert all(len(p.image or b"") < 1 << 20 for p in big)
    results = client.product_embeddings(
        [p.title for p in big], [p.product_type for p in big], [p.image for p in big]
    )
    assert [r.error for r in results] == [None, None]
    got = np.stack([r.embedding for r in results if r.embedding is not None])
    np.testing.assert_allclose(got, in_process(model, big), atol=ATOL)


def test_wrong_shape_is_a_request_error_not_retried(triton: LocalTriton) -> None:
    sleeps: list[float] = []
    with RelevanceClient(settings_for(triton, "grpc"), sleep=sleeps.append) as c:
        with pytest.raises(TritonRequestError):
            c.query_relevance(["q"], np.zeros((1, 7), np.float32))
        with pytest.raises(ValueError):
            c.query_relevance(["q", "r"], np.zeros((1, 256), np.float32))
    assert sleeps == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_dead_server_retries_then_raises_unavailable(protocol: Protocol) -> None:
    settings = TritonSettings(
        url=f"127.0.0.1:{free_port()}", protocol=protocol, timeout_s=2, retry_initial_s=0.05, retry_max_s=0.2
    )
    client = RelevanceClient(settings, max_attempts=4)
    started = time.monotonic()
    assert not client.is_ready()
    with pytest.raises(TritonUnavailable, match="after 4 attempts"):
        client.product_embeddings(["t"], ["Shirts"], [None])
    with pytest.raises(TritonUnavailable):
        client.query_relevance(["q"], np.zeros((1, 256), np.float32))
    with pytest.raises(TritonUnavailable):
        client.model_version()
    with pytest.raises(TritonUnavailable, match="not ready"):
        client.wait_ready(0.3)
    client.close()
    assert time.monotonic() - started < 10
