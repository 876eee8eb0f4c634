"""Import shims kept in one place.

open_clip imports torchvision. On the CPU-only torch used here the pinned torchvision wheel carries
CUDA-built compiled ops and fails at import with ``operator torchvision::nms does not exist``.
Registering the two op schemas before the first import makes ``torchvision.transforms``/``models``
importable (the compiled ops nms/roi still do not work and are not needed). The shim is applied only
when the normal import fails, so a machine with a matching torchvision uses the real one.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

_SHIM: Any = None


def set_offline() -> None:
    """No model hub is reachable: force every HF/transformers lookup to stay local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _drop_partial_imports() -> None:
    for name in list(sys.modules):
        if name == "torchvision" or name.startswith("torchvision.") or name.startswith("open_clip"):
            del sys.modules[name]


def import_open_clip() -> ModuleType:
    """Return the ``open_clip`` module, applying the torchvision op shim only if needed."""
    global _SHIM
    set_offline()
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    try:
        import open_clip

        return open_clip
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    _drop_partial_imports()
    import torch

    if _SHIM is None:
        _SHIM = torch.library.Library("torchvision", "DEF")
        _SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SHIM.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import open_clip

    return open_clip
