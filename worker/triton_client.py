"""Thin Triton client for the worker: one round trip per chunk of a batch, bounded retries.

Talks to the two ensembles of one Query-LIFE version, ``<ensemble>.<model_version>`` (written by
`querylife export`, each pinned to its own weights), over gRPC by default, HTTP with
``QL_TRITON_PROTOCOL=http``, TLS from `TritonSettings`. A client serves one version; a second version
(a rollout's candidate) is another client (`for_version`), so no call can mix two versions.

- ``product_embedding``: TITLE, PRODUCT_TYPE, IMAGE [B,1] BYTES -> EMBEDDING [B,D] FP32, ERROR [B,1] BYTES
- ``query_relevance``: QUERY [B,1] BYTES, PRODUCT_EMBEDDING [B,D] FP32 -> SIMILARITY, SCORE [B,1] FP32,
  LABEL [B,1] BYTES

Transient failures (server down, overloaded, model not ready, connection errors) are retried with
exponential backoff and jitter, at most ``max_attempts`` times per call, then raised as
`TritonUnavailable` (the worker backs off and retries the batch without committing). A missed deadline
is raised at once as `TritonDeadline` (`worker.isolation` tells a slow Triton from a poison input).
Anything else is a `TritonRequestError` (refused, or failed inside a model: retrying would not help).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException

from worker.backoff import Backoff
from worker.config import TritonSettings
from worker.dependency import DependencyUnavailable

PRODUCT_MODEL = "product_embedding"
QUERY_MODEL = "query_relevance"
VERSION_PARAMETER = "querylife_version"
TRITON_VERSION_PARAMETER = "triton_version"
PYTHON_MODELS = ("text_encoder", "image_encoder", "fusion", "relevance")

# gRPC status names and HTTP codes that mean "try again later"
_TRANSIENT_STATUS = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.ABORTED",
    "StatusCode.CANCELLED",
    "429",
    "502",
    "503",
    "504",
}
# messages of errors without a usable status (HTTP client) or of a restarting python stub
_TRANSIENT_TEXT = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "stub process is not healthy",
    "timed out",
    "timeout",
    "socket closed",
    "broken pipe",
)

T = TypeVar("T")


class TritonUnavailable(DependencyUnavailable):
    """Transient: Triton is down, overloaded or not ready after the retry budget. Retry the batch later."""

    dependency = "triton"


class TritonDeadline(TritonUnavailable):
    """A call missed its deadline. Not retried by the client: retrying the same request with the same
    deadline is how a batch stalled its partition; `worker.isolation` decides (slow Triton or poison)."""


class TritonRequestError(RuntimeError):
    """Not transient: the request was refused or failed inside a model. Retrying will not help."""


@dataclass
class ProductResult:
    """One product's fused embedding, or why there is none (``"reason: message"``, reason first)."""

    embedding: np.ndarray | None
    error: str | None
    fusion_weights: tuple[float, float] | None = None  # (title, image) that made the embedding


@dataclass
class PairScore:
    similarity: float
    score: float
    label: str


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, InferenceServerException):
        if str(exc.status()) in _TRANSIENT_STATUS:
            return True
        text = (exc.message() or "").lower()
        return any(t in text for t in _TRANSIENT_TEXT)
    # HTTP client connection failures surface as plain socket errors
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


def _is_deadline(exc: BaseException) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) == "StatusCode.DEADLINE_EXCEEDED"
    return isinstance(exc, TimeoutError)


def _bytes_column(values: Sequence[str | bytes | None]) -> np.ndarray:
    col = np.empty((len(values), 1), dtype=np.object_)
    for i, v in enumerate(values):
        col[i, 0] = b"" if v is None else v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return col


def _pair_scores(out: dict[str, np.ndarray]) -> list[PairScore]:
    return [
        PairScore(float(sim), float(score), _decode(label))
        for sim, score, label in zip(
            out["SIMILARITY"].reshape(-1), out["SCORE"].reshape(-1), out["LABEL"].reshape(-1), strict=True
        )
    ]


def _decode(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class RelevanceClient:
    """One connection to Triton; not thread-safe (one client per worker thread)."""

    def __init__(
        self,
        settings: TritonSettings,
        model_version: str | None = None,
        max_attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if settings.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.settings = settings
        self.version = model_version  # None: the only version Triton serves (`resolve_version`)
        self._info: dict[str, str] | None = None  # `model_info`, read once: a version never changes
        self.max_attempts = max(1, max_attempts)
        self._sleep = sleep
        self.protocol = settings.protocol
        self._client: Any
        if settings.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._mod: Any = grpcclient
            self._client = grpcclient.InferenceServerClient(
                url=settings.url,
                ssl=settings.ssl,
                root_certificates=str(settings.root_certificates) if settings.root_certificates else None,
                private_key=str(settings.private_key) if settings.private_key else None,
                certificate_chain=str(settings.certificate_chain) if settings.certificate_chain else None,
            )
        else:
            import tritonclient.http as httpclient

            self._mod = httpclient
            ssl_options: dict[str, str] = {}
            if settings.root_certificates:
                ssl_options["ca_certs"] = str(settings.root_certificates)
            if settings.certificate_chain and settings.private_key:
                ssl_options["certfile"] = str(settings.certificate_chain)
                ssl_options["keyfile"] = str(settings.private_key)
            self._client = httpclient.InferenceServerClient(
                url=settings.url,
                ssl=settings.ssl,
                ssl_options=ssl_options or None,
                connection_timeout=settings.timeout_s,
                network_timeout=settings.timeout_s,
            )

    # ------------------------------------------------------------------ health and metadata

    def is_ready(self) -> bool:
        """Server ready and, once the version is known, both of its ensembles loaded; never raises."""
        try:
            kw = self._timeout_kw(min(self.settings.timeout_s, 5.0))
            if not self._client.is_server_ready(**kw):
                return False
            if self.version is None:
                return True
            return all(bool(self._client.is_model_ready(m, **kw)) for m in self.ensembles(self.version))
        except Exception:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                raise TritonUnavailable(f"Triton at {self.settings.url} not ready after {timeout_s:.0f}s")
            self._sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def ensembles(version: str) -> tuple[str, str]:
        return f"{PRODUCT_MODEL}.{version}", f"{QUERY_MODEL}.{version}"

    def served_versions(self) -> list[str]:
        """Query-LIFE versions whose two ensembles are both loaded and ready."""
        index = self._call(self._repository_index, what="repository index")
        ready = {str(m["name"]) for m in index if m.get("state") == "READY"}
        prefix = f"{QUERY_MODEL}."
        versions = [name[len(prefix) :] for name in ready if name.startswith(prefix)]
        return sorted(v for v in versions if f"{PRODUCT_MODEL}.{v}" in ready)

    def resolve_version(self) -> str:
        """The version this client serves: the configured one, else the only one Triton serves."""
        if self.version is None:
            served = self.served_versions()
            if len(served) != 1:
                raise TritonRequestError(
                    f"Triton serves {len(served)} Query-LIFE versions {served}: set QL_WORKER_MODEL_VERSION"
                )
            self.version = served[0]
        return self.version

    def model_version(self) -> str:
        """The version served, checked against the stamp `querylife export` wrote into both ensembles."""
        version = self.resolve_version()
        for model in self.ensembles(version):
            stamp = self._call(lambda model=model: self._stamp(model), what=f"{model} config")  # type: ignore[misc]
            if stamp != version:
                raise TritonRequestError(f"{model} stamps {VERSION_PARAMETER}={stamp!r}, not {version!r}")
        return version

    def model_info(self) -> dict[str, str]:
        """What is served for this version: its Query-LIFE version and the Triton version directory."""
        if self._info is None:
            config = self._call(lambda: self._config(self.query_model), what="model config")
            params = config.get("parameters", {})
            self._info = {
                "model_version": self.resolve_version(),
                "triton_version": str(params.get(TRITON_VERSION_PARAMETER, {}).get("string_value", "")),
            }
        return self._info

    def for_version(self, version: str) -> RelevanceClient:
        """A client of another version on its own connection (a rollout's candidate, scored in shadow)."""
        return RelevanceClient(self.settings, version, self.max_attempts, self._sleep)

    def load_version(self, version: str, timeout_s: float = 600.0) -> None:
        """Load (or reload) the python models, so Triton sees a new version directory, then the
        version's ensembles. Needs `--model-control-mode=explicit`. Triton reloads every version
        directory of a python model it reloads: the served version's new instances start beside the
        old ones, which leave once their in-flight requests are done, so serving goes on; each load
        is bounded by `timeout_s` (gRPC), since a request that never finishes would hold it."""
        kw = self._timeout_kw(timeout_s)
        for model in (*PYTHON_MODELS, *self.ensembles(version)):
            self._call(lambda model=model: self._client.load_model(model, **kw), what=f"load {model}")  # type: ignore[misc]

    def unload_version(self, version: str) -> None:
        """Unload one version's ensembles (its version directories go with `querylife export --retire`)."""
        for model in self.ensembles(version):
            self._call(lambda model=model: self._client.unload_model(model), what=f"unload {model}")  # type: ignore[misc]

    @property
    def product_model(self) -> str:
        return self.ensembles(self.resolve_version())[0]

    @property
    def query_model(self) -> str:
        return self.ensembles(self.resolve_version())[1]

    def embedding_dim(self) -> int:
        """Width D of the product embeddings `query_relevance` accepts (its PRODUCT_EMBEDDING [D] input)."""
        config = self._call(lambda: self._config(self.query_model), what=f"{self.query_model} config")
        for tensor in config.get("input", []):
            dims = [int(d) for d in tensor.get("dims", [])]
            if tensor.get("name") == "PRODUCT_EMBEDDING" and len(dims) == 1 and dims[0] > 0:
                return dims[0]
        raise TritonRequestError(f"{self.query_model} has no PRODUCT_EMBEDDING [D] input")

    def _config(self, model: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            return dict(self._client.get_model_config(model, as_json=True, **self._timeout_kw())["config"])
        return dict(self._client.get_model_config(model))

    def _repository_index(self) -> list[dict[str, Any]]:
        if self.protocol == "grpc":
            index = self._client.get_model_repository_index(as_json=True, **self._timeout_kw())
            return list(index.get("models", []))
        return list(self._client.get_model_repository_index())

    def _stamp(self, model: str) -> str:
        param = self._config(model).get("parameters", {}).get(VERSION_PARAMETER, {})
        return str(param.get("string_value", ""))

    # ------------------------------------------------------------------ inference

    def product_embeddings(
        self, titles: list[str | None], product_types: list[str], images: list[bytes | None]
    ) -> list[ProductResult]:
        """Fused embedding per product (in order); a bad item gets an error, the rest are unaffected."""
        if not len(titles) == len(product_types) == len(images):
            raise ValueError(
                f"length mismatch: {len(titles)} titles, {len(product_types)} types, {len(images)} images"
            )
        results: list[ProductResult] = []
        for start in range(0, len(titles), self.settings.max_batch):
            end = start + self.settings.max_batch
            out = self._infer(
                self.product_model,
                {
                    "TITLE": _bytes_column(titles[start:end]),
                    "PRODUCT_TYPE": _bytes_column(product_types[start:end]),
                    "IMAGE": _bytes_column(images[start:end]),
                },
                ["EMBEDDING", "ERROR", "FUSION_WEIGHTS"],
            )
            emb, err, weights = out["EMBEDDING"], out["ERROR"].reshape(-1), out["FUSION_WEIGHTS"]
            for row, e, w in zip(emb, err, weights, strict=True):
                message = _decode(e)
                results.append(
                    ProductResult(None, message)
                    if message
                    else ProductResult(row.copy(), None, (float(w[0]), float(w[1])))
                )
        return results

    def query_relevance(self, queries: list[str], product_embeddings: np.ndarray) -> list[PairScore]:
        """Row-wise: pair i is (queries[i], product_embeddings[i])."""
        products = np.ascontiguousarray(product_embeddings, dtype=np.float32)
        if products.ndim != 2 or products.shape[0] != len(queries):
            raise ValueError(f"expected [{len(queries)}, D] product embeddings, got {products.shape}")
        scores: list[PairScore] = []
        for start in range(0, len(queries), self.settings.max_batch):
            end = start + self.settings.max_batch
            out = self._infer(
                self.query_model,
                {"QUERY": _bytes_column(queries[start:end]), "PRODUCT_EMBEDDING": products[start:end]},
                ["SIMILARITY", "SCORE", "LABEL"],
            )
            scores += _pair_scores(out)
        return scores

    def pair_relevance(self, query_embeddings: np.ndarray, product_embeddings: np.ndarray) -> list[PairScore]:
        """Row-wise calibrated relevance of embeddings already computed (a query-embedding cache's
        path): this version's own `relevance` directory, the second step of `query_relevance.<V>`."""
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        products = np.ascontiguousarray(product_embeddings, dtype=np.float32)
        if queries.shape != products.shape:
            raise ValueError(
                f"query embeddings {queries.shape} and product embeddings {products.shape} differ"
            )
        directory = self.model_info()["triton_version"]
        scores: list[PairScore] = []
        for start in range(0, len(queries), self.settings.max_batch):
            end = start + self.settings.max_batch
            inputs = {"QUERY_EMBEDDING": queries[start:end], "PRODUCT_EMBEDDING": products[start:end]}
            scores += _pair_scores(
                self._infer("relevance", inputs, ["SIMILARITY", "SCORE", "LABEL"], directory)
            )
        return scores

    def query_embeddings(self, queries: list[str]) -> np.ndarray:
        """This version's query embeddings [n, D]: its own `text_encoder` version directory, by number
        (never "the latest"), as `query_relevance.<version>` would compute them."""
        directory = self.model_info()["triton_version"]
        if not directory:
            raise TritonRequestError(f"{self.query_model} does not name its Triton version directory")
        out = self._infer("text_encoder", {"TEXT": _bytes_column(queries)}, ["EMBEDDING"], directory)
        return np.asarray(out["EMBEDDING"], dtype=np.float32)

    def with_timeout(self, timeout_s: float) -> RelevanceClient:
        """This client (same connection) with another per-call deadline: short tries while isolating.

        gRPC only: the HTTP client's timeouts belong to its connection, so there it is a no-op."""
        other = copy.copy(self)
        other.settings = self.settings.model_copy(update={"timeout_s": timeout_s})
        return other

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> RelevanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _timeout_kw(self, timeout_s: float | None = None) -> dict[str, float]:
        # gRPC takes a per-call deadline; the HTTP client's timeouts are set on the connection
        t = self.settings.timeout_s if timeout_s is None else timeout_s
        return {"client_timeout": t} if self.protocol == "grpc" else {}

    def _infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], model_version: str = ""
    ) -> dict[str, np.ndarray]:
        mod = self._mod
        tensors = []
        for name, arr in inputs.items():
            dtype = "BYTES" if arr.dtype == np.object_ else "FP32"
            t = mod.InferInput(name, list(arr.shape), dtype)
            if self.protocol == "grpc":
                t.set_data_from_numpy(arr)
            else:
                t.set_data_from_numpy(arr, binary_data=True)
            tensors.append(t)
        requested = [
            mod.InferRequestedOutput(n)
            if self.protocol == "grpc"
            else mod.InferRequestedOutput(n, binary_data=True)
            for n in outputs
        ]

        def call() -> dict[str, np.ndarray]:
            result = self._client.infer(
                model, tensors, model_version=model_version, outputs=requested, **self._timeout_kw()
            )
            got = {n: result.as_numpy(n) for n in outputs}
            missing = [n for n, v in got.items() if v is None]
            if missing:
                raise TritonRequestError(f"{model} returned no {missing}")
            return got

        return self._call(call, what=model)

    def _call(self, fn: Callable[[], T], what: str = "request") -> T:
        """Run ``fn``; retry transient failures with capped exponential backoff + jitter."""
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s, jitter=0.5)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except (TritonRequestError, TritonUnavailable):
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise TritonRequestError(f"Triton {what} failed: {exc}") from exc
                if _is_deadline(exc):
                    raise TritonDeadline(f"Triton {what} missed its deadline: {exc}") from exc
                if attempt == self.max_attempts:
                    raise TritonUnavailable(
                        f"Triton {what} at {self.settings.url} unavailable after {attempt} attempts: {exc}"
                    ) from exc
                self._sleep(backoff.next())
        raise AssertionError("unreachable")
