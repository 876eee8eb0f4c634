"""What every Triton python-backend model of `model_repository/` shares, in one place.

The python backend hands `initialize()` the model config as JSON and `execute()` a list of queued
requests. These helpers read the config (threads, device), load the checkpoint of the version
directory Triton started (it names its own Query-LIFE version), batch/split requests, and isolate
failures (`execute_isolated`), so each `model.py` only says what its model computes.
`triton_python_backend_utils` exists only inside Triton, so it is passed in (`pb`) rather than
imported here.

Failures are per request, never per scheduled batch: an exception out of ``execute()`` would fail
every request Triton batched together (other producers' products included), so `execute_isolated`
retries a failed batch one request at a time, then, for models with a per-item ``ERROR`` output, one
item at a time, and answers a request that still fails with its own ``TritonError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from querylife.calibration import Calibration
from querylife.checkpoint import Head, load_head
from querylife.model import QueryLifeModel, load_model


@dataclass(frozen=True)
class TritonModelArgs:
    """The parts of the python backend's `initialize(args)` a Query-LIFE model needs."""

    params: dict[str, str]
    device: torch.device
    checkpoint: Path

    @classmethod
    def parse(cls, args: dict[str, Any], pb: Any) -> TritonModelArgs:
        config: dict[str, Any] = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("num_threads", "1")))
        device = torch.device("cpu")
        if args.get("model_instance_kind") == "GPU":
            device = torch.device(f"cuda:{args['model_instance_device_id']}")
        checkpoint = Path(args["model_repository"]) / args["model_version"] / "checkpoint"
        if not checkpoint.is_dir():
            raise pb.TritonModelException(
                f"{checkpoint} is missing: run `querylife export --out <model_repository>` first"
            )
        return cls(params, device, checkpoint)


def load_model_for_triton(args: dict[str, Any], pb: Any) -> QueryLifeModel:
    """Towers + head (encoders)."""
    parsed = TritonModelArgs.parse(args, pb)
    return load_model(parsed.checkpoint, device=str(parsed.device))


def load_head_for_triton(args: dict[str, Any], pb: Any) -> tuple[Head, Calibration, torch.device]:
    """Only the trained head (fusion, relevance): no towers, ~5 s and ~500 MB less per stub."""
    parsed = TritonModelArgs.parse(args, pb)
    head, calibration, _ = load_head(parsed.checkpoint)
    return head.to(parsed.device).eval(), calibration, parsed.device


def concat_input(requests: list[Any], name: str, pb: Any) -> np.ndarray:
    """One input of every queued request, stacked along the batch dimension."""
    return np.concatenate([pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests])


def request_sizes(requests: list[Any], name: str, pb: Any) -> list[int]:
    return [int(pb.get_input_tensor_by_name(r, name).as_numpy().shape[0]) for r in requests]


Outputs = dict[str, np.ndarray]


def split_outputs(sizes: list[int], outputs: Outputs) -> list[Outputs]:
    """Each request's own rows of every output."""
    return [{name: arr[rows] for name, arr in outputs.items()} for rows in _slices(sizes)]


def output_response(outputs: Outputs, pb: Any) -> Any:
    return pb.InferenceResponse(
        output_tensors=[pb.Tensor(name, np.ascontiguousarray(arr)) for name, arr in outputs.items()]
    )


def error_response(exc: BaseException, pb: Any, model: str = "") -> Any:
    """This request alone fails, with the exception's type and message (the client sees them)."""
    message = f"{model + ': ' if model else ''}{type(exc).__name__}: {exc}"[:1000]
    logger = getattr(pb, "Logger", None)
    if logger is not None:
        logger.log_error(f"request failed: {message}")
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def split_responses(sizes: list[int], outputs: Outputs, pb: Any) -> list[Any]:
    """One InferenceResponse per request, each with its own rows of every output."""
    return [output_response(o, pb) for o in split_outputs(sizes, outputs)]


def execute_isolated(
    requests: list[Any],
    compute: Callable[[list[Any]], list[Outputs]],
    pb: Any,
    per_item: Callable[[Any], Outputs] | None = None,
    model: str = "",
) -> list[Any]:
    """One response per request, whatever raises (`MemoryError` included); never raises itself.

    ``compute(requests)`` returns each request's outputs, computed as one batch. If it raises, each
    request is computed alone, so only the requests that fail by themselves fail. For such a request,
    ``per_item(request)`` (models with a per-item ``ERROR`` output) computes its items one by one and
    reports a failing item in its ``ERROR`` row; a request that still fails gets an error response.
    """
    try:
        outputs = compute(requests)
        if len(outputs) != len(requests):
            raise RuntimeError(f"{len(outputs)} outputs for {len(requests)} requests")
        return [output_response(o, pb) for o in outputs]
    except Exception as exc:
        batch_failure: Exception = exc
    responses = []
    for request in requests:
        try:
            if len(requests) == 1:
                raise batch_failure  # already computed alone
            responses.append(output_response(compute([request])[0], pb))
            continue
        except Exception as exc:
            failure: Exception = exc
        if per_item is not None:
            try:
                responses.append(output_response(per_item(request), pb))
                continue
            except Exception as exc:
                failure = exc
        responses.append(error_response(failure, pb, model))
    return responses


def _slices(sizes: list[int]) -> Iterator[slice]:
    start = 0
    for n in sizes:
        yield slice(start, start + n)
        start += n
