"""What every Triton python-backend model of `model_repository/` shares, in one place.

The python backend hands `initialize()` the model config as JSON and `execute()` a list of queued
requests. These helpers read the config (threads, device, the stamped `querylife_version`), load the
exported checkpoint and refuse a stamp/checkpoint mismatch, and batch/split requests, so each
`model.py` only says what its model computes. `triton_python_backend_utils` exists only inside
Triton, so it is passed in (`pb`) rather than imported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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

    def check_stamp(self, version: str, pb: Any) -> None:
        """The version a config advertises must be the version of the weights it serves."""
        stamped = self.params.get("querylife_version")
        if stamped != version:
            raise pb.TritonModelException(
                f"config.pbtxt stamps querylife_version={stamped!r} but {self.checkpoint} holds "
                f"{version!r}; re-run `querylife export`"
            )


def load_model_for_triton(args: dict[str, Any], pb: Any) -> QueryLifeModel:
    """Towers + head (encoders)."""
    parsed = TritonModelArgs.parse(args, pb)
    model = load_model(parsed.checkpoint, device=str(parsed.device))
    parsed.check_stamp(model.version, pb)
    return model


def load_head_for_triton(args: dict[str, Any], pb: Any) -> tuple[Head, Calibration, torch.device]:
    """Only the trained head (fusion, relevance): no towers, ~5 s and ~500 MB less per stub."""
    parsed = TritonModelArgs.parse(args, pb)
    head, calibration, meta = load_head(parsed.checkpoint)
    parsed.check_stamp(str(meta["version"]), pb)
    return head.to(parsed.device).eval(), calibration, parsed.device


def concat_input(requests: list[Any], name: str, pb: Any) -> np.ndarray:
    """One input of every queued request, stacked along the batch dimension."""
    return np.concatenate([pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests])


def request_sizes(requests: list[Any], name: str, pb: Any) -> list[int]:
    return [int(pb.get_input_tensor_by_name(r, name).as_numpy().shape[0]) for r in requests]


def split_responses(sizes: list[int], outputs: dict[str, np.ndarray], pb: Any) -> list[Any]:
    """One InferenceResponse per request, each with its own rows of every output."""
    return [
        pb.InferenceResponse(
            output_tensors=[pb.Tensor(name, np.ascontiguousarray(arr[rows])) for name, arr in outputs.items()]
        )
        for rows in _slices(sizes)
    ]


def _slices(sizes: list[int]) -> Iterator[slice]:
    start = 0
    for n in sizes:
        yield slice(start, start + n)
        start += n
