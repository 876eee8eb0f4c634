"""The exported Query-LIFE ensembles on a real Triton (session fixture `triton` in conftest.py) match the
in-process `load_model()` on real catalogue products, through gRPC and HTTP; bad items fail alone
(poison images among good ones, and each model's execute() with an injected failure); the client's
retries are bounded."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from harness.local_services import LocalTriton, free_port
from querylife.checkpoint import load_head
from querylife.imaging import decode_image, preprocess
from querylife.model import QueryLifeModel, load_model
from querylife.serving import execute_isolated
from tests.conftest import SERVED_VERSION
from tests.hostile_images import animated_webp, encode, patch_dimensions, raw_png, with_extra_scans
from worker.config import TritonSettings
from worker.triton_client import (
    ProductResult,
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


def in_process(model: QueryLifeModel, products: list[Product], weights: bool = False) -> np.ndarray:
    """The reference: the serving contract of querylife.model, called directly (fused embeddings, or
    with `weights` the (title, image) fusion weights that made them)."""
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
    fuse = model.fusion_weights if weights else model.fuse
    return fuse(title, image, [p.product_type for p in products], has_title, has_image).numpy()


def settings_for(triton: LocalTriton, protocol: Protocol, **kw: object) -> TritonSettings:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    return TritonSettings(url=url, protocol=protocol, timeout_s=30, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request: pytest.FixtureRequest, triton: LocalTriton) -> Iterator[RelevanceClient]:
    c = RelevanceClient(settings_for(triton, request.param), SERVED_VERSION)
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
    product_model, query_model = client.ensembles(model.version)  # `<ensemble>.<version>`, by name
    meta = {m: raw.get_model_metadata(m, as_json=True) for m in (product_model, query_model)}
    assert {t["name"] for t in meta[product_model]["inputs"]} == {"TITLE", "PRODUCT_TYPE", "IMAGE"}
    assert {t["name"] for t in meta[product_model]["outputs"]} == {"EMBEDDING", "ERROR", "FUSION_WEIGHTS"}
    assert {t["name"] for t in meta[query_model]["inputs"]} == {"QUERY", "PRODUCT_EMBEDDING"}
    assert {t["name"] for t in meta[query_model]["outputs"]} == {"SIMILARITY", "SCORE", "LABEL"}
    for name in (product_model, query_model):  # the ensembles name their version and pin their steps
        cfg = raw.get_model_config(name, as_json=True)["config"]
        assert cfg["parameters"]["querylife_version"]["string_value"] == model.version
        assert cfg["parameters"]["triton_version"]["string_value"] == client.model_info()["triton_version"]
        steps = cfg["ensemble_scheduling"]["step"]
        assert {s["model_version"] for s in steps} == {client.model_info()["triton_version"]}
        assert int(cfg["max_batch_size"]) >= client.settings.max_batch
    for name in ("text_encoder", "image_encoder", "fusion", "relevance"):  # versions live with weights
        cfg = raw.get_model_config(name, as_json=True)["config"]
        assert "querylife_version" not in cfg.get("parameters", {})
        assert "all" in cfg["version_policy"]
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
    # the weights that made each embedding (ProductEmbedding v2 carries them to the ranker)
    weights = np.stack([r.fusion_weights for r in results if r.fusion_weights is not None])
    np.testing.assert_allclose(weights, in_process(model, products, weights=True), atol=ATOL)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    no_image = [i for i, p in enumerate(products) if p.image is None]
    assert no_image and (weights[no_image, 1] == 0.0).all()


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
    with RelevanceClient(settings_for(triton, "grpc", max_batch=4), SERVED_VERSION) as small:
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
    with RelevanceClient(settings_for(triton, "grpc"), SERVED_VERSION, sleep=sleeps.append) as c:
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


# --------------------------------------------------------------------------- poison in a batch


def _poison_images() -> dict[str, tuple[bytes, str]]:
    """Each class of hostile image found, with the reason it must get (tests/test_image_bounds.py).
    Before the bounds, the first raised OverflowError out of execute() and failed the whole batch;
    the others took 20 s to minutes each, past the client's timeout."""
    scans = with_extra_scans(encode(Image.new("L", (4096, 4096), 128), "JPEG", progressive=True), 17_000)
    tiny_anim = animated_webp((1, 1), 2)
    return {
        "png 16777216x1": (raw_png(16_777_216, 1), "image_aspect_ratio"),
        "png 1x16000000": (raw_png(1, 16_000_000), "image_aspect_ratio"),
        "png 1000000x16": (raw_png(1_000_000, 16), "image_aspect_ratio"),
        "jpeg 17,000 scans": (scans, "too_many_scans"),
        "webp canvas 16777216x1": (patch_dimensions(tiny_anim, 1 << 24, 1), "image_aspect_ratio"),
        "webp canvas 65535x65535": (patch_dimensions(tiny_anim, 65535, 65535), "decompression_bomb"),
    }


def test_poison_images_fail_alone_among_good_ones(
    triton: LocalTriton, model: QueryLifeModel, products: list[Product]
) -> None:
    """Poison images batched with good ones, in one request and in concurrent requests that Triton's
    dynamic batcher may schedule together: each poison gets its own reason, every good product its
    in-process embedding."""
    good = [p for p in products if p.image is not None][:3]
    poison = _poison_images()
    assert all(len(data) < 1 << 20 for data, _ in poison.values())  # inside the worker's byte limit
    mixed: list[Product] = []
    for i, (name, (data, _)) in enumerate(poison.items()):
        mixed += [good[i % len(good)], Product(f"Poison {name}", "Shirts", data)]
    expected_good = in_process(model, good)

    def send(batch: list[Product]) -> list[ProductResult]:
        with RelevanceClient(settings_for(triton, "grpc"), SERVED_VERSION) as c:
            return c.product_embeddings(
                [p.title for p in batch], [p.product_type for p in batch], [p.image for p in batch]
            )

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(send, mixed), pool.submit(send, good), pool.submit(send, good[::-1])]
        results = [f.result(timeout=120) for f in futures]
    for i, (name, (_, reason)) in enumerate(poison.items()):
        got = results[0][2 * i + 1]
        assert got.embedding is None and got.error is not None, name
        assert got.error.split(":")[0] == reason, (name, got.error)
        ok = results[0][2 * i]
        assert ok.error is None and ok.embedding is not None
        np.testing.assert_allclose(ok.embedding, expected_good[i % len(good)], atol=ATOL)
    for batch, res in ((good, results[1]), (good[::-1], results[2])):
        assert [r.error for r in res] == [None] * len(batch)
        got = np.stack([r.embedding for r in res if r.embedding is not None])
        np.testing.assert_allclose(got, in_process(model, batch), atol=ATOL)


# --------------------------------------------------------------------------- execute() isolation
# The models' execute() with a stand-in for triton_python_backend_utils (it exists only inside Triton)
# and a failure injected into one request or item, which a real Triton cannot be made to produce.


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _TritonError | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {name: _Tensor(name, value) for name, value in inputs.items()}


def _fake_pb() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor  # type: ignore[attr-defined]
    pb.InferenceResponse = _Response  # type: ignore[attr-defined]
    pb.TritonError = _TritonError  # type: ignore[attr-defined]
    pb.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)  # type: ignore[attr-defined]
    return pb


def _model_py(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh instance of model_repository/<name>/1/model.py's TritonPythonModel (not initialized)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb())
    path = Path(__file__).resolve().parents[1] / "model_repository" / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"ql_test_{name}_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def _texts(*values: str) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=np.object_)


def test_execute_isolated_answers_every_request_whatever_fails() -> None:
    pb = _fake_pb()
    calls: list[list[int]] = []

    def compute(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        calls.append([int(r) for r in requests])
        if 13 in requests:
            raise MemoryError("13 is poison")
        return [{"OUT": np.array([[int(r) * 2]])} for r in requests]

    responses = execute_isolated([1, 13, 2], compute, pb, model="m")
    assert calls == [[1, 13, 2], [1], [13], [2]]  # the batch, then each request alone
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.message() == "m: MemoryError: 13 is poison"
    assert [int(r.outputs["OUT"][0, 0]) for r in (responses[0], responses[2])] == [2, 4]
    calls.clear()
    alone = execute_isolated([13], compute, pb)  # a single request is not computed twice
    assert calls == [[13]] and alone[0].error is not None
    items = execute_isolated([13, 1], compute, pb, per_item=lambda r: {"OUT": np.array([[-1]])})
    assert [int(r.outputs["OUT"][0, 0]) for r in items] == [-1, 2] and all(r.error is None for r in items)
    assert execute_isolated([1], lambda rs: [], pb)[0].error is not None  # a wrong count is a failure


class _FakeTower:
    """encode_texts / encode_images that raise for a marked input, like a tower hitting its limits."""

    embed_dim, image_size = 4, 32

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if any("POISON" in t for t in texts):
            raise MemoryError("cannot allocate")
        return torch.tensor([[float(len(t)), 1.0, 0.0, 0.0] for t in texts])

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if bool((pixels.mean(dim=(1, 2, 3)) > 0.99).any()):  # a white image
            raise RuntimeError("tower failed")
        return pixels.mean(dim=(2, 3)).repeat(1, 2)[:, :4] + 2.0


def test_text_encoder_fails_only_the_request_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model_py("text_encoder", monkeypatch)
    m.model = _FakeTower()
    requests = [
        _Request(TEXT=_texts("red shirt", "")),
        _Request(TEXT=_texts("POISON")),
        _Request(TEXT=_texts("x")),
    ]
    responses = m.execute(requests)
    assert [r.error is None for r in responses] == [True, False, True]
    assert "text_encoder: MemoryError" in responses[1].error.message()
    assert responses[0].outputs["EMBEDDING"][:, 0].tolist() == [9.0, 0.0]
    assert responses[0].outputs["HAS_TEXT"].reshape(-1).tolist() == [True, False]
    assert responses[2].outputs["EMBEDDING"][0, 0] == 1.0


def test_image_encoder_fails_only_the_item_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model_py("image_encoder", monkeypatch)
    m.model = _FakeTower()

    def png(colour: tuple[int, int, int]) -> bytes:
        return encode(Image.new("RGB", (40, 40), colour), "PNG")

    def images(*payloads: bytes) -> np.ndarray:
        return np.array([[p] for p in payloads], dtype=np.object_)

    requests = [
        _Request(IMAGE=images(png((200, 10, 10)), png((255, 255, 255)), b"", raw_png(16_777_216, 1))),
        _Request(IMAGE=images(png((10, 200, 10)))),
    ]
    responses = m.execute(requests)
    assert [r.error for r in responses] == [None, None]
    first = responses[0].outputs
    errors = [bytes(e).decode() for e in first["ERROR"].reshape(-1)]
    assert errors[0] == "" and errors[2] == ""  # the good image; the empty payload is "no image"
    assert errors[1].startswith("image_encode_error: RuntimeError: tower failed")
    assert errors[3].startswith("image_aspect_ratio: ")
    assert first["HAS_IMAGE"].reshape(-1).tolist() == [True, False, False, False]
    assert not first["EMBEDDING"][1:].any() and first["EMBEDDING"][0].any()
    assert responses[1].outputs["HAS_IMAGE"].reshape(-1).tolist() == [True]


def test_fusion_fails_only_the_item_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model_py("fusion", monkeypatch)
    head, _, _ = load_head()
    real = head.fusion

    class PoisonedFusion:
        def type_ids(self, types: list[str], device: torch.device | None = None) -> torch.Tensor:
            if "POISON" in types:
                raise KeyError("POISON")
            return real.type_ids(types, device=device)

        def __call__(self, *args: torch.Tensor) -> torch.Tensor:
            return real(*args)

        def weights(self, *args: torch.Tensor) -> torch.Tensor:
            return real.weights(*args)

    m.head, m.device = types.SimpleNamespace(fusion=PoisonedFusion()), torch.device("cpu")
    rng = np.random.default_rng(0)

    def request(*product_types: str) -> _Request:
        n = len(product_types)
        return _Request(
            TITLE_EMBEDDING=rng.standard_normal((n, 256)).astype(np.float32),
            IMAGE_EMBEDDING=rng.standard_normal((n, 256)).astype(np.float32),
            PRODUCT_TYPE=_texts(*product_types),
            HAS_TITLE=np.ones((n, 1), np.bool_),
            HAS_IMAGE=np.ones((n, 1), np.bool_),
        )

    requests = [request("Shirts", "POISON", "Tshirts"), request("Watches")]
    responses = m.execute(requests)
    assert [r.error for r in responses] == [None, None]
    errors = [bytes(e).decode() for e in responses[0].outputs["ERROR"].reshape(-1)]
    assert errors[0] == errors[2] == "" and errors[1].startswith("fusion_error: KeyError")
    emb = responses[0].outputs["EMBEDDING"]
    assert not emb[1].any() and emb[0].any() and emb[2].any()
    req = requests[0].inputs  # the good items alone equal what the batch gives them
    expected = real(
        torch.from_numpy(req["TITLE_EMBEDDING"].as_numpy()[[0, 2]]),
        torch.from_numpy(req["IMAGE_EMBEDDING"].as_numpy()[[0, 2]]),
        real.type_ids(["Shirts", "Tshirts"]),
        torch.ones(2, dtype=torch.bool),
        torch.ones(2, dtype=torch.bool),
    )
    np.testing.assert_allclose(emb[[0, 2]], expected.detach().numpy(), atol=1e-6)


def test_relevance_fails_only_the_request_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model_py("relevance", monkeypatch)
    head, calibration, _ = load_head()

    class Strict:  # a calibration that refuses NaN similarities (a poisoned embedding)
        def probability(self, sim: torch.Tensor) -> torch.Tensor:
            if bool(torch.isnan(sim).any()):
                raise FloatingPointError("NaN similarity")
            return calibration.probability(sim)

        def label(self, p: float) -> str:
            return calibration.label(p)

    m.head, m.calibration, m.device = head, Strict(), torch.device("cpu")
    q = np.ones((2, 256), np.float32)
    bad = q.copy()
    bad[1, 0] = np.nan
    responses = m.execute(
        [_Request(QUERY_EMBEDDING=q, PRODUCT_EMBEDDING=q), _Request(QUERY_EMBEDDING=q, PRODUCT_EMBEDDING=bad)]
    )
    assert responses[0].error is None and responses[1].error is not None
    assert "relevance: FloatingPointError" in responses[1].error.message()
    np.testing.assert_allclose(responses[0].outputs["SIMILARITY"].reshape(-1), [1.0, 1.0], atol=1e-6)
    assert responses[0].outputs["LABEL"].shape == (2, 1)
